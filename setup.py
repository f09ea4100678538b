"""Generate the gRPC stubs from protos/ before the package is built (wheel or editable install),
so that gateway/v1 and gateway/tfs exist when setuptools looks for packages."""

import importlib.util
from pathlib import Path

from setuptools import setup

_spec = importlib.util.spec_from_file_location("gateway_protos", Path(__file__).parent / "gateway" / "protos.py")
_protos = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_protos)
_protos.generate()

setup()
