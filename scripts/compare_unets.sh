#!/usr/bin/env bash
# Basic vs efficient U-Net, the FashionMNIST notebook's comparison, as one command at a CPU-sized
# budget: a Hydra multirun over the two notebook set-ups (experiment=fashion_mnist_basic and
# fashion_mnist_efficient: T=300, eps, batch 128, Adam 5e-4 / 3e-4) x seeds, then the report.
#
#   scripts/compare_unets.sh [--patterns] [--seeds 1,2] [--epochs 4] [--train-size 3000]
#                            [--val-size 1000] [--data-root DIR] [--out DIR] [-- overrides...]
#
# --patterns   the built-in pattern set instead of FashionMNIST (model=basic_unet,efficient_unet)
# --data-root  folder holding FashionMNIST/raw/*.gz (default: ./data, else a temporary copy of
#              ../shared/datasets/FashionMNIST when that exists)
# Writes the run directories and comparison.md + PNG plots to --out
# (default outputs/compare_unets/<time>).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
SEEDS=1,2
EPOCHS=4
TRAIN_SIZE=3000
VAL_SIZE=1000
DATA_ROOT=
PATTERNS=0
OUT=outputs/compare_unets/$(date +%Y-%m-%d_%H-%M-%S)
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --patterns) PATTERNS=1; shift ;;
    --seeds) SEEDS=$2; shift 2 ;;
    --epochs) EPOCHS=$2; shift 2 ;;
    --train-size) TRAIN_SIZE=$2; shift 2 ;;
    --val-size) VAL_SIZE=$2; shift 2 ;;
    --data-root) DATA_ROOT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [[ $PATTERNS == 1 ]]; then
  ARGS=(model=basic_unet,efficient_unet "data.num_train=$TRAIN_SIZE" "data.num_val=$VAL_SIZE")
else
  if [[ -z $DATA_ROOT ]]; then
    if [[ -d data/FashionMNIST/raw ]]; then
      DATA_ROOT=data
    elif [[ -d ../shared/datasets/FashionMNIST/raw ]]; then
      # torchvision unpacks the .gz files next to them: work on a writable copy
      DATA_ROOT=$(mktemp -d)
      trap 'rm -rf "$DATA_ROOT"' EXIT
      cp -r ../shared/datasets/FashionMNIST "$DATA_ROOT/"
    else
      echo "error: no FashionMNIST: put the four .gz files in data/FashionMNIST/raw/," \
        "pass --data-root, or use --patterns" >&2
      exit 2
    fi
  fi
  # data=fashion_mnist up front: Hydra checks the other overrides before it expands the sweep
  ARGS=(data=fashion_mnist experiment=fashion_mnist_basic,fashion_mnist_efficient "data.root=$DATA_ROOT"
        "data.train_size=$TRAIN_SIZE" "data.val_size=$VAL_SIZE")
fi

"$PY" -m diffusion_lab.train -m "${ARGS[@]}" "seed=$SEEDS" "trainer.max_epochs=$EPOCHS" \
  callbacks.progress_bar=null "hydra.sweep.dir=$OUT" ${EXTRA[@]+"${EXTRA[@]}"}
"$PY" -m diffusion_lab.compare "$OUT"
