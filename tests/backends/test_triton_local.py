"""``start_triton`` when tritonserver exits before it serves: the python-backend stubs it started inherit its
stdout and may live on (a model failed to load, under load); the start-up must still end, with Triton's output."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.backends.triton_local import TritonUnavailable, start_triton


def fake_triton_venv(root: Path, server_script: str) -> Path:
    """A venv whose nvidia-pytriton ``tritonserver`` is the shell script ``server_script``, with the (empty)
    python-backend files that start_triton copies."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run([venv / "bin" / "python", "-c", purelib], capture_output=True, text=True, check=True)
    server_dir = Path(site.stdout.strip()) / "pytriton" / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for name in (
        "backends/python/libtriton_python.so",
        "backends/python/triton_python_backend_utils.py",
        f"python_backend_stubs/{version}/triton_python_backend_stub",
    ):
        (server_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (server_dir / name).write_text("")
    binary = server_dir / "bin" / "tritonserver"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n" + server_script)
    binary.chmod(0o755)
    return venv


def test_a_server_that_exits_before_serving_is_reported_at_once_though_a_child_holds_its_output(
    tmp_path: Path,
) -> None:
    venv = fake_triton_venv(tmp_path, 'echo "E1202 model mnist: stub failed to start"\nsleep 120 &\nexit 1\n')
    started = time.monotonic()
    with pytest.raises(TritonUnavailable, match=r"exited \(1\) before serving:\n.*stub failed to start"):
        start_triton(tmp_path / "models", venv=venv, workdir=tmp_path)
    assert time.monotonic() - started < 30  # the stub stand-in (sleep 120) was ended with the server's group
