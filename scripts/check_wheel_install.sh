#!/usr/bin/env bash
# Build the wheel, install it (no editable source tree) into a throwaway environment that reuses
# the current environment's dependencies, and train debug=fast from an empty folder: proves the
# configs ship inside the package.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" "$repo"
python -m venv "$work/env"
deps="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
env_site="$("$work/env/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$deps" > "$env_site/reuse_dependencies.pth"  # torch & co. from the current environment
"$work/env/bin/python" -m pip install -q --no-deps "$work"/dist/diffusion_lab-*.whl
mkdir "$work/empty" && cd "$work/empty"
where="$("$work/env/bin/python" -c 'import diffusion_lab; print(diffusion_lab.__file__)')"
case "$where" in "$work"/env/*) ;; *) echo "diffusion_lab imported from $where, not the wheel"; exit 1 ;; esac
"$work/env/bin/dlab-train" debug=fast > "$work/train.log" 2>&1 || { tail -30 "$work/train.log"; exit 1; }
test -f outputs/train/runs/*/samples/final.png
test -f outputs/train/runs/*/checkpoints/last.ckpt
echo "wheel install: dlab-train debug=fast from an empty folder OK ($(ls "$work"/dist))"
