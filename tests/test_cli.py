import subprocess
import sys

import httpx

from gateway.bench.photos import digit_png
from gateway.security.pki import PkiPaths
from tests.conftest import MODEL_REPO, start_gateway, stop_gateway


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=60)


def test_serve_refuses_to_start_with_a_bad_setting_and_names_it(pki: PkiPaths) -> None:
    result = run_cli("serve", "--pki-dir", str(pki.root), "--http-port", "70000")
    assert result.returncode == 2
    assert "server.http_port must be a port number" in result.stderr


def test_serve_without_pki_says_how_to_make_one(tmp_path) -> None:
    result = run_cli("serve", "--pki-dir", str(tmp_path / "none"))
    assert result.returncode == 2
    assert "gateway pki init" in result.stderr


def test_models_list_reads_the_repository() -> None:
    result = run_cli("models", "list", "--model-repo", str(MODEL_REPO))
    assert result.returncode == 0, result.stderr
    assert '"name": "mnist"' in result.stdout


def test_insecure_mode_serves_plain_http_and_says_so(pki: PkiPaths, heldout_sample) -> None:
    gateway = start_gateway(pki, "--model-repo", str(MODEL_REPO), "--insecure-no-tls")
    try:
        assert gateway.base_url.startswith("http://")
        assert any("mTLS is disabled" in line for line in gateway.output)
        x, y = heldout_sample
        response = httpx.post(
            gateway.base_url + "/api/v1/models/mnist/classify",
            content=digit_png(x[1]),
            headers={"content-type": "image/png"},
        )
        assert response.status_code == 200
        assert response.json()["label"] == str(y[1])
    finally:
        stop_gateway(gateway)
