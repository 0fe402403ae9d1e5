#!/usr/bin/env bash
# The GPU paths in one run (under 5 minutes on one GPU): 16-mixed and bf16-mixed training for a
# few hundred steps, DDP on one GPU (trainer=ddp trainer.devices=1), sampling with every sampler
# in conf/sampler/ (onepass with a mask-conditioned model, as it needs one), evaluate with n=500.
# Prints images/s and seconds per phase; writes $OUT/gpu_check.json when OUT is set.
#
#   scripts/gpu_check.sh             # on a machine with a CUDA GPU
#   scripts/gpu_check.sh --dry-run   # print the commands only
#   TRAINER=cpu STEPS=20 N_EVAL=50 scripts/gpu_check.sh   # the same commands as a CPU smoke run
set -euo pipefail

DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $arg (allowed: --dry-run, --help)" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python}"
TRAINER="${TRAINER:-gpu}"          # gpu; cpu for a smoke run of the same commands
STEPS="${STEPS:-300}"              # optimizer steps per training run
N_SAMPLE="${N_SAMPLE:-256}"        # images per sampler
N_EVAL="${N_EVAL:-500}"
if ((DRY_RUN)); then
  WORK="${WORK:-\$WORK}"
else
  WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}"
fi
DEVICE=cuda
DDP_TRAINER="trainer=ddp trainer.devices=1"
P16=16-mixed
if [[ "$TRAINER" == cpu ]]; then
  DEVICE=cpu
  P16=32  # float16 autocast is a GPU mode; the smoke run checks the commands, not fp16
  DDP_TRAINER="trainer=ddp_cpu trainer.devices=1"
fi
for name in STEPS N_SAMPLE N_EVAL; do
  if ! [[ "${!name}" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: $name=${!name} must be a positive integer" >&2
    exit 2
  fi
done

# 32 px pattern set, batch 128: STEPS steps, validation on 2 batches, grids at the end only
COMMON="data.num_train=$((STEPS * 128)) data.num_val=256 data.batch_size=128 trainer.max_epochs=1
  trainer.limit_val_batches=2 trainer.log_every_n_steps=50 callbacks.progress_bar=null
  callbacks.analysis_figures=null callbacks.sample_grid.every_n_epochs=0 sampler.steps=20"
SAMPLERS=()
for f in conf/sampler/*.yaml; do SAMPLERS+=("$(basename "$f" .yaml)"); done

PHASES=()   # "name seconds images_per_s" per phase, for the summary
run_phase() {  # run_phase NAME IMAGES COMMAND...: time a command; IMAGES for images/s (0: none)
  local name="$1" images="$2"
  shift 2
  if ((DRY_RUN)); then
    echo "$*"
    return
  fi
  echo "== $name" >&2
  local t0 t1 secs rate
  t0=$(date +%s.%N)
  "$@" >"$WORK/$name.log" 2>&1 || {
    echo "FAILED: $name (log: $WORK/$name.log)" >&2
    tail -n 20 "$WORK/$name.log" >&2
    PHASES+=("$name failed null")
    return 1
  }
  t1=$(date +%s.%N)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  rate=null
  if ((images > 0)); then
    rate=$(awk -v n="$images" -v s="$secs" 'BEGIN { printf "%.1f", n / s }')
  fi
  printf '%-28s %8s s  %10s images/s\n' "$name" "$secs" "$rate"
  PHASES+=("$name $secs $rate")
}

FAILED=0
# shellcheck disable=SC2086  # COMMON and DDP_TRAINER are lists of overrides
{
  run_phase train_16-mixed $((STEPS * 128)) "$PY" -m diffusion_lab.train trainer=$TRAINER \
    trainer.precision=$P16 $COMMON "hydra.run.dir=$WORK/train_16" || FAILED=1
  run_phase train_bf16-mixed $((STEPS * 128)) "$PY" -m diffusion_lab.train trainer=$TRAINER \
    trainer.precision=bf16-mixed $COMMON "hydra.run.dir=$WORK/train_bf16" || FAILED=1
  run_phase train_ddp_1gpu $((STEPS * 128)) "$PY" -m diffusion_lab.train $DDP_TRAINER \
    $COMMON "hydra.run.dir=$WORK/train_ddp" || FAILED=1
  run_phase train_inpaint $((STEPS * 128)) "$PY" -m diffusion_lab.train trainer=$TRAINER \
    conditioning=inpaint $COMMON "hydra.run.dir=$WORK/train_inpaint" || FAILED=1
  # deterministic kernels only (torch.use_deterministic_algorithms), the attention U-Net's
  # upsampling and the evaluation callback's judge classifier included
  run_phase train_deterministic $((STEPS * 32)) "$PY" -m diffusion_lab.train trainer=$TRAINER \
    model=attn_unet trainer.deterministic=true trainer.benchmark=false callbacks=with_eval \
    callbacks.evaluate.every_n_epochs=1 callbacks.evaluate.n_samples=100 \
    callbacks.evaluate.classifier.train_size=2000 callbacks.evaluate.classifier.epochs=1 \
    $COMMON data.num_train=$((STEPS * 32)) "hydra.run.dir=$WORK/train_deterministic" || FAILED=1
}
CKPT="$WORK/train_16/checkpoints/last.ckpt"
INPAINT_CKPT="$WORK/train_inpaint/checkpoints/last.ckpt"
for s in "${SAMPLERS[@]}"; do
  if [[ "$s" == onepass ]]; then  # one network call from a mask-conditioned model
    run_phase "sample_$s" "$N_SAMPLE" "$PY" -m diffusion_lab.sample mode=inpaint \
      "ckpt_path=$INPAINT_CKPT" "n=$N_SAMPLE" "sampler=$s" "device=$DEVICE" \
      "output_dir=$WORK/sample_$s" || FAILED=1
  else
    run_phase "sample_$s" "$N_SAMPLE" "$PY" -m diffusion_lab.sample "ckpt_path=$CKPT" \
      "n=$N_SAMPLE" "sampler=$s" sampler.steps=20 "device=$DEVICE" \
      "output_dir=$WORK/sample_$s" || FAILED=1
  fi
done
run_phase evaluate "$N_EVAL" "$PY" -m diffusion_lab.evaluate "ckpt_path=$CKPT" "n=$N_EVAL" \
  "metrics=[fid,kid,accuracy]" sampler=ddim sampler.steps=20 "device=$DEVICE" \
  "output_dir=$WORK/evaluate" || FAILED=1

((DRY_RUN)) && exit 0

# the summary: per phase seconds and images/s (wall clock, start-up included), the training
# runs' own images/s (timed over training batches only), the GPU
SUMMARY="$WORK/gpu_check.json"
"$PY" - "$SUMMARY" "$FAILED" "$WORK" "${PHASES[@]}" <<'EOF'
import json, sys
from pathlib import Path

import torch

out, failed, work, *phases = sys.argv[1:]
rows = {}
for p in phases:
    name, secs, rate = p.split()
    rows[name] = {
        "seconds": None if secs == "failed" else float(secs),
        "images_per_sec_wall": None if rate == "null" else float(rate),
        "ok": secs != "failed",
    }
    metrics = Path(work) / {"train_16-mixed": "train_16", "train_bf16-mixed": "train_bf16",
                            "train_ddp_1gpu": "train_ddp", "train_inpaint": "train_inpaint"}.get(name, "-") / "metrics.json"
    if metrics.is_file():
        rows[name]["train_images_per_sec"] = json.loads(metrics.read_text()).get("train_images_per_sec")
summary = {
    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    "torch": torch.__version__,
    "ok": failed == "0",
    "phases": rows,
}
Path(out).write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
EOF
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  cp "$SUMMARY" "$OUT/gpu_check.json"
fi
echo "work dir: $WORK; total $SECONDS s" >&2
exit "$FAILED"
