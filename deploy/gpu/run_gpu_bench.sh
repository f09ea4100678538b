#!/usr/bin/env bash
# Issue 20's GPU figures in one run (under 10 minutes on one GPU): `gateway bench gpu`, JSON under $OUT.
#
#   deploy/gpu/run_gpu_bench.sh            # on the GPU machine, from the repository root
#   deploy/gpu/run_gpu_bench.sh --dry-run  # anywhere: every step on the CPU, tiny durations
#
# The GPU build of ONNX Runtime cannot share an environment with the CPU one (both own the `onnxruntime`
# module), so the script makes its own venv: the project with its pins, then the CPU onnxruntime swapped for
# onnxruntime-gpu, and torch + torchvision for the GPU decoder. Wheels come from $GPU_WHEELS (a directory of
# local wheels) when set, else from PyPI. What cannot be installed is recorded in the JSON, not hidden.
set -euo pipefail
OUT="${OUT:-$PWD/gpu-bench-out}"
mkdir -p "$OUT"
VENV="${GPU_VENV:-/tmp/gateway-gpu-venv}"
FIND=()
if [[ -n "${GPU_WHEELS:-}" ]]; then FIND=(--no-index --find-links "$GPU_WHEELS"); fi
if [[ " $* " != *" --dry-run "* ]]; then
  if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "${FIND[@]}" -c constraints.txt . 2>&1 | tail -2 || true
    "$VENV/bin/pip" uninstall -y -q onnxruntime || true
    "$VENV/bin/pip" install -q "${FIND[@]}" -c constraints.txt '.[gpu]' 2>&1 | tail -2 || true
    "$VENV/bin/pip" uninstall -y -q onnxruntime || true  # the CPU build again, pulled back by the core pin
    "$VENV/bin/pip" install -q --force-reinstall --no-deps "${FIND[@]}" -c constraints.txt onnxruntime-gpu 2>&1 | tail -2 || true
  fi
  PYTHON="$VENV/bin/python"
else
  PYTHON="${PYTHON:-.venv/bin/python}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
"$PYTHON" -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())" > "$OUT/onnxruntime.txt" 2>&1 || true
"$PYTHON" -c "import gateway.protos as p; p.generate()"
timeout 560 "$PYTHON" -m gateway.cli bench gpu --out "$OUT" "$@"
if [[ " $* " != *" --dry-run "* ]]; then
  timeout 120 "$PYTHON" -m pytest -q tests/backends/test_devices.py tests/backends/test_onnxruntime.py \
    tests/preprocess/test_gpu_decode.py -rs > "$OUT/gpu_tests.txt" 2>&1 || true
fi
