"""Generate the gRPC stubs from protos/ into the package (setup.py runs this on every build and install).

``protos/gateway/v1/classifier.proto`` becomes ``gateway/v1/classifier_pb2.py`` (and
``_pb2_grpc.py``, ``.pyi``), so the generated imports (``from gateway.v1 import ...``)
resolve inside this package.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "protos"


def generate() -> list[Path]:
    protos = sorted(PROTO_DIR.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        *map(str, protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {', '.join(map(str, protos))}")
    for package in {ROOT / proto.parent.relative_to(PROTO_DIR) for proto in protos}:
        (package / "__init__.py").touch()  # regular packages, so setuptools finds them
    return protos


if __name__ == "__main__":
    generated = generate()
    print(f"generated stubs for {len(generated)} proto file(s)", file=sys.stderr)
