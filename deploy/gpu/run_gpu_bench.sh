#!/usr/bin/env bash
# Issue 20's GPU figures in one run (under 10 minutes on one GPU): `gateway bench gpu`, JSON under $OUT.
#
#   OUT=/dir deploy/gpu/run_gpu_bench.sh            # on the GPU machine, from the repository root
#   OUT=/dir deploy/gpu/run_gpu_bench.sh --dry-run  # anywhere: every step on the CPU, tiny durations
#
# The GPU build of ONNX Runtime cannot share an environment with the CPU one (both own the `onnxruntime`
# module). The script makes a venv over the host's Python packages, installs the project's pinned
# dependencies into it (the project itself runs from this tree), swaps the CPU onnxruntime for
# onnxruntime-gpu and adds torchvision (the GPU decoder). Wheels come from $GPU_WHEELS (a directory of
# local wheels) when set, else PyPI; every step is bounded, and what could not be installed shows in
# $OUT/install.log and in the JSON (missing providers, no GPU decoder), never hidden.
set -uo pipefail
OUT="${OUT:-$PWD/gpu-bench-out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ " $* " == *" --dry-run "* ]]; then
  PYTHON="${PYTHON:-.venv/bin/python}"
else
  BASE="${PYTHON:-python3}"
  VENV="${GPU_VENV:-/tmp/gateway-gpu-venv}"
  FIND=()
  if [[ -n "${GPU_WHEELS:-}" ]]; then FIND=(--no-index --find-links "$GPU_WHEELS"); fi
  PIP=(timeout 150 "$VENV/bin/pip" install -q --retries 0 --timeout 10 -c constraints.txt "${FIND[@]}")
  {
    [[ -x "$VENV/bin/python" ]] || "$BASE" -m venv --system-site-packages "$VENV"
    "$VENV/bin/python" - > "$OUT/requirements.txt" <<'PY'
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))
PY
    "${PIP[@]}" -r "$OUT/requirements.txt" pytest
    "$VENV/bin/pip" uninstall -y -q onnxruntime
    "${PIP[@]}" --no-deps onnxruntime-gpu
    "${PIP[@]}" torchvision
  } > "$OUT/install.log" 2>&1
  PYTHON="$VENV/bin/python"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1
"$PYTHON" -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())" > "$OUT/onnxruntime.txt" 2>&1
"$PYTHON" -c "import gateway.protos as p; p.generate()" || exit 1
timeout 420 "$PYTHON" -m gateway.cli bench gpu --out "$OUT" "$@"
status=$?
if [[ " $* " != *" --dry-run "* ]]; then
  timeout 120 "$PYTHON" -m pytest -q -p no:cacheprovider -rs tests/backends/test_devices.py \
    tests/backends/test_onnxruntime.py tests/preprocess/test_gpu_decode.py > "$OUT/gpu_tests.txt" 2>&1
fi
exit $status
