#!/usr/bin/env bash
# Creates .venv with torch, sam2 and streamseg. Idempotent: a stamp keyed by this
# file and pyproject.toml skips everything when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${STREAMSEG_VENV:-.venv}"
EXTRAS="${STREAMSEG_EXTRAS:-dev,onnx}"
PY="${PYTHON:-python3}"
stamp_key=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$EXTRAS
stamp="$VENV/.streamseg-setup"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_key" ]; then
  exit 0
fi
step() { printf '\n== %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV"
  "$PY" -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed"'
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install --quiet --upgrade pip

if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; then
    step "installing torch (CUDA build, GPU found)"
    pip install --quiet torch
  else
    step "installing torch (CPU build, no GPU found)"
    # A CPU wheel of 2.13.0 is found through pip's local configuration on hosts that
    # ship one; elsewhere PyTorch's CPU index has it.
    pip install --quiet torch==2.13.0 ||
      pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi

if ! "$VENV/bin/python" -c 'import sam2.build_sam' 2>/dev/null; then
  step "installing sam2 1.1.0 without torchvision"
  pip install --quiet numpy tqdm hydra-core iopath pillow
  SAM2_BUILD_CUDA=0 pip install --quiet --no-deps --no-build-isolation sam2==1.1.0
fi

step "installing streamseg[$EXTRAS]"
pip install --quiet -e ".[$EXTRAS]"
echo "$stamp_key" > "$stamp"
step "environment ready: $VENV"
