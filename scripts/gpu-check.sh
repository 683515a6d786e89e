#!/usr/bin/env bash
# The GPU check (`streamseg doctor`) on a GPU host without network, in two steps.
#
#   scripts/gpu-check.sh wheels DIR
#       here, with the package registry: DIR gets this script and a wheelhouse, at
#       most 64 MiB, of what a bare GPU host (Python and a CUDA torch) lacks:
#       streamseg, sam2 built without its CUDA extension (a pure-Python wheel),
#       hydra-core, omegaconf, antlr4-python3-runtime, iopath, portalocker, tqdm,
#       packaging, pyyaml, then as many of numpy, pillow, onnx (the FP16 export) and
#       opencv-python-headless as still fit. Not onnxruntime: its CPU build adds
#       nothing to a GPU check, and onnxruntime-gpu (~255 MB) cannot fit.
#   bash WHEELS/gpu-check.sh run WHEELS OUT [-- DOCTOR FLAGS]
#       on the GPU host: installs, with --no-index and --no-deps (torch is never
#       touched), only the wheels whose modules the host lacks into a folder put first
#       on PYTHONPATH (no venv, so no ensurepip needed; system packages stay visible),
#       then runs `streamseg doctor --device cuda --out OUT` within GPU_CHECK_SECONDS
#       (default 480) in all; OUT gets doctor.txt, doctor.json, doctor.log, gpu-check.log.
#
# Environment: PYTHON (wheels: the checkout's .venv python, which builds sam2 against
# its torch; run: python3), GPU_CHECK_PYTHON_VERSION (3.12), GPU_CHECK_LIMIT_MIB (64),
# GPU_CHECK_SECONDS (480), GPU_CHECK_DEVICE (cuda), GPU_CHECK_SITE (a temporary folder).
set -euo pipefail
shopt -s inherit_errexit # a failed pip inside $(...) stops the script there
REPO="$(cd "$(dirname "$0")/.." && pwd)"

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
  exit 2
}

# distribution, module it provides, install group (a group is installed whole when
# any module of it is missing: omegaconf needs its own antlr4 version).
REQUIRED="sam2 sam2 sam2
hydra-core hydra hydra
omegaconf omegaconf hydra
antlr4-python3-runtime antlr4 hydra
iopath iopath iopath
portalocker portalocker portalocker
tqdm tqdm tqdm
packaging packaging packaging
pyyaml yaml yaml"
OPTIONAL="numpy numpy numpy
pillow PIL PIL
onnx onnx onnx
opencv-python-headless cv2 cv2"
# Published only as source for these versions: built here into pure-Python wheels.
FROM_SOURCE="sam2 antlr4-python3-runtime iopath"
PINNED="sam2==1.1.0 antlr4-python3-runtime==4.9.3"

wheels() {
  local dir="$1" py="${PYTHON:-$REPO/.venv/bin/python}"
  local pyver="${GPU_CHECK_PYTHON_VERSION:-3.12}" limit=$((${GPU_CHECK_LIMIT_MIB:-64} * 1048576))
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  rm -f "$dir"/*.whl "$dir/wheels.txt"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  # the version this checkout's environment runs (tested together), else the newest
  spec() {
    local pin
    for pin in $PINNED; do
      [ "${pin%%==*}" = "$1" ] && { echo "$pin"; return; }
    done
    "$py" -c 'import sys, importlib.metadata as m
try: print(f"{sys.argv[1]}=={m.version(sys.argv[1])}")
except m.PackageNotFoundError: print(sys.argv[1])' "$1"
  }
  local platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  fetch() { # one wheel into $tmp/$1/
    local name="$1" out="$tmp/$1"
    mkdir -p "$out"
    if [ "$name" = sam2 ]; then # its setup.py imports torch: build against this one
      SAM2_BUILD_CUDA=0 "$py" -m pip wheel --quiet --no-deps --no-build-isolation \
        -w "$out" "$(spec "$name")" >&2
    elif [[ " $FROM_SOURCE " == *" $name "* ]]; then
      "$py" -m pip wheel --quiet --no-deps -w "$out" "$(spec "$name")" >&2
    else
      "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$pyver" \
        --implementation cp "${platforms[@]}" -d "$out" "$(spec "$name")" >&2
    fi
    ls "$out"/*.whl
  }
  local total=0 file size name module group
  add() { # file module group
    cp "$1" "$dir/"
    printf '%s %s %s\n' "$(basename "$1")" "$2" "$3" >>"$dir/wheels.txt"
    total=$((total + $(stat -c %s "$1")))
  }
  echo "gpu-check: building streamseg from $REPO" >&2
  "$py" -m pip wheel -qq --no-deps -w "$tmp/streamseg" "$REPO" >&2
  add "$(ls "$tmp"/streamseg/streamseg-*.whl)" streamseg always
  while read -r name module group; do
    echo "gpu-check: $name" >&2
    add "$(fetch "$name")" "$module" "$group"
  done <<<"$REQUIRED"
  if ((total > limit)); then
    echo "gpu-check: the required wheels alone take $((total / 1048576)) MiB" >&2
    return 1
  fi
  while read -r name module group; do
    file="$(fetch "$name")"
    size=$(stat -c %s "$file")
    if ((total + size <= limit)); then
      echo "gpu-check: $name (optional, $((size / 1048576)) MiB)" >&2
      add "$file" "$module" "$group"
    else
      echo "gpu-check: left out $(basename "$file") ($((size / 1048576)) MiB): over" \
        "${GPU_CHECK_LIMIT_MIB:-64} MiB; the host must have $module already" >&2
      printf '# left out: %s %s\n' "$(basename "$file")" "$module" >>"$dir/wheels.txt"
    fi
  done <<<"$OPTIONAL"
  cp "$0" "$dir/gpu-check.sh" # the host needs only this folder: `bash DIR/gpu-check.sh run DIR OUT`
  echo "gpu-check: $dir: $(grep -vc '^#' "$dir/wheels.txt") wheels," \
    "$((total / 1048576)) MiB ($total bytes) for Python $pyver" >&2
}

# Files of WHEELS to install: a group whose modules are all importable is skipped.
to_install() {
  "$1" - "$2" <<'PY'
import importlib.util, sys
from pathlib import Path

folder = Path(sys.argv[1])
entries = [line.split() for line in (folder / "wheels.txt").read_text().splitlines()
           if line.strip() and not line.startswith("#")]
missing = {group for _, module, group in entries
           if group == "always" or importlib.util.find_spec(module) is None}
for file, module, group in entries:
    if group in missing:
        print(folder / file)
PY
}

run() {
  local wheels="$1" out="$2"
  shift 2
  [ "${1:-}" = "--" ] && shift
  local py="${PYTHON:-python3}" seconds="${GPU_CHECK_SECONDS:-480}" start
  start=$(date +%s)
  [ -f "$wheels/wheels.txt" ] || { echo "gpu-check: $wheels has no wheels.txt" >&2; exit 2; }
  mkdir -p "$out"
  exec > >(tee -a "$out/gpu-check.log") 2>&1
  local site="${GPU_CHECK_SITE:-$(mktemp -d)/site}" files files_list
  files_list="$(to_install "$py" "$wheels")" # not `< <(...)`: its failure would be lost
  files=()
  [ -z "$files_list" ] || mapfile -t files <<<"$files_list"
  if ((${#files[@]})); then
    echo "gpu-check: installing into $site: ${files[*]##*/}"
    "$py" -m pip install --quiet --no-index --no-deps --no-compile --disable-pip-version-check \
      --target "$site" "${files[@]}"
  else
    echo "gpu-check: this host has everything the wheelhouse carries"
  fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  local modules="torch numpy PIL cv2 yaml tqdm hydra omegaconf iopath sam2 streamseg" absent
  absent="$("$py" -c 'import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))' $modules)"
  if [ -n "$absent" ]; then
    echo "gpu-check: this host lacks $absent and the wheelhouse does not carry it (see" \
      "$wheels/wheels.txt): install it or carry it in place of an optional wheel" >&2
    exit 2
  fi
  # Leave a margin for the last check's process and the table.
  local left=$((seconds - ($(date +%s) - start) - 30))
  if ((left < 60)); then
    echo "gpu-check: installing took $(($(date +%s) - start)) s of the ${seconds} s" \
      "(GPU_CHECK_SECONDS): too little is left for the checks" >&2
    exit 2
  fi
  echo "gpu-check: streamseg doctor, budget ${left} s"
  local status=0
  timeout -k 10 $((left + 20)) "$py" -m streamseg.cli doctor \
    --device "${GPU_CHECK_DEVICE:-cuda}" --out "$out" --budget-s "$left" "$@" || status=$?
  echo "gpu-check: finished in $(($(date +%s) - start)) s with status $status"
  return "$status"
}

case "${1:-}" in
wheels) [ $# -eq 2 ] || usage; wheels "$2" ;;
run) [ $# -ge 3 ] || usage; run "${@:2}" ;;
*) usage ;;
esac
