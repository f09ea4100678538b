#!/usr/bin/env bash
# Issue 20's GPU figures in one run: `gateway bench gpu`, then the GPU tests; everything under $OUT.
#
#   OUT=/dir GPU_WHEELS=/dir deploy/gpu/run_gpu_bench.sh   # on the GPU host, from the repository root
#   OUT=/dir deploy/gpu/run_gpu_bench.sh --dry-run          # anywhere: every step on the CPU, tiny durations
#
# Budget: at most 9 minutes in all (install 90 s, bench 330 s, GPU tests 100 s, each bounded by `timeout`),
# so that it fits a 15-minute device budget with the machine's start and leaves time for a second try.
#
# The GPU host needs no network. Its `python3` (or $PYTHON) must already have torch and torchvision with
# CUDA (the GPU decoder), as NVIDIA's and this workplace's CUDA images do. The gateway's other dependencies
# come from $GPU_WHEELS, a directory made by deploy/gpu/wheels.sh on a machine that reaches PyPI (about
# 30 MB for CPython 3.12), installed without dependencies into $GPU_SITE, which goes on PYTHONPATH after
# the project itself (a venv made from that python would lose its torch). An onnxruntime-gpu wheel there
# shadows the CPU build (the CUDA libraries it loads must be on the host too); without it the model runs
# on the CPU and the JSON says so. An nvidia-nvimagecodec-cu12 wheel there adds nvImageCodec to the decode
# comparison. What could not be installed shows in $OUT/install.log and in the JSON, never hidden.
set -uo pipefail
OUT="${OUT:-$PWD/gpu-bench-out}"
mkdir -p "$OUT"
DRY=0
if [[ " $* " == *" --dry-run "* ]]; then DRY=1; fi
if ((DRY)); then PYTHON="${PYTHON:-.venv/bin/python}"; else PYTHON="${PYTHON:-python3}"; fi
SITE="${GPU_SITE:-/tmp/gateway-gpu-site}"
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if [[ -n "${GPU_WHEELS:-}" ]]; then
  timeout 90 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$GPU_WHEELS"/*.whl > "$OUT/install.log" 2>&1 ||
    echo "installing from $GPU_WHEELS failed (see install.log): what is missing shows below" >&2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1
"$PYTHON" - > "$OUT/environment.txt" 2>&1 <<'PY'
import importlib, platform
print("python", platform.python_version())
for name in ("onnxruntime", "torch", "torchvision", "nvidia.nvimgcodec", "numpy", "cv2", "PIL"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"), getattr(module, "__file__", ""))
    except Exception as exc:
        print(name, "MISSING", type(exc).__name__, exc)
try:
    import onnxruntime, torch
    print("providers", onnxruntime.get_available_providers(), "cuda", torch.cuda.is_available(), torch.version.cuda)
except Exception as exc:
    print("providers ?", exc)
PY
cat "$OUT/environment.txt"
"$PYTHON" -c "import gateway.protos as p; p.generate()" || exit 1
timeout 330 "$PYTHON" -m gateway.cli bench gpu --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log"
status=${PIPESTATUS[0]}
if ((!DRY)); then
  timeout 100 "$PYTHON" -m pytest -q -p no:cacheprovider -rs tests/preprocess/test_gpu_decode.py \
    tests/backends/test_devices.py tests/backends/test_onnxruntime.py > "$OUT/gpu_tests.txt" 2>&1
  tail -n 25 "$OUT/gpu_tests.txt"
fi
exit "$status"
