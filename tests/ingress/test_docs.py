"""/docs and /redoc work on a network without the internet: their assets come from the gateway itself (the
fastapi-offline package), behind the same mTLS as the API, and a headless Chromium that can reach no other
host renders the classify operation."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from gateway.security.pki import PkiPaths
from tests.conftest import MODEL_REPO, RunningGateway, start_gateway, stop_gateway

CHROMIUM = shutil.which("chromium")
PAGES = ("/docs", "/redoc")
CLASSIFY_PATH = "/api/v1/models/{model}/classify"
CLASSIFY_OPERATION = "classify_api_v1_models__model__classify_post"
"""The operation id FastAPI gives ``POST /api/v1/models/{model}/classify``."""


class _References(HTMLParser):
    """Every URL the page makes the browser load (src, href) and every URL written in its inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.urls += re.findall(r"""['"]((?:[a-z]+:)?//[^'"]*|/[^'"]*)['"]""", data)


def references(html: str) -> list[str]:
    parser = _References()
    parser.feed(html)
    return parser.urls


@pytest.mark.parametrize("page", PAGES)
def test_the_page_and_everything_it_loads_come_from_the_gateway(gateway: RunningGateway, page: str) -> None:
    with gateway.client("app") as client:
        answer = client.get(page)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
        urls = references(answer.text)
        assert any(url.endswith(".js") for url in urls), urls  # the parser saw the page's script
        outside = [url for url in urls if not url.startswith("/") or url.startswith("//")]
        assert not outside, f"{page} refers to other hosts: {outside}"
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", answer.text), "an absolute URL is in the page"
        for url in urls:
            assert client.get(url).status_code == 200, url


def test_the_docs_are_behind_the_same_mtls(gateway: RunningGateway) -> None:
    with gateway.client("app") as client:
        assets = [url for url in references(client.get("/docs").text) if url.startswith("/docs/assets/")]
    assert assets
    for path in (*PAGES, "/openapi.json", *assets):
        with gateway.client(identity=None) as no_certificate, pytest.raises(httpx.TransportError):
            no_certificate.get(path)


@pytest.fixture(scope="module")
def plain_gateway(pki: PkiPaths) -> Iterator[RunningGateway]:
    """Chromium has no client certificate to present: the rendering test runs against mTLS off."""
    running = start_gateway(pki, "--model-repo", str(MODEL_REPO), "--insecure-no-tls")
    yield running
    stop_gateway(running)


def render(url: str, profile: Path) -> str:
    """The DOM after the page's scripts ran, in a Chromium that resolves no host but the loopback address."""
    assert CHROMIUM, "Debian's chromium package is missing: apt-get install -y chromium (.ci/run does)"
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=15000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_swagger_ui_renders_the_classify_operation_offline(plain_gateway: RunningGateway, tmp_path: Path) -> None:
    dom = render(plain_gateway.base_url + "/docs", tmp_path)
    assert CLASSIFY_PATH in re.findall(r'data-path="([^"]+)"', dom)  # only once the spec was fetched and rendered
    assert f'id="operations-default-{CLASSIFY_OPERATION}"' in dom


def test_redoc_renders_the_classify_operation_offline(plain_gateway: RunningGateway, tmp_path: Path) -> None:
    dom = render(plain_gateway.base_url + "/redoc", tmp_path)
    entry = re.search(rf'data-item-id="operation/{CLASSIFY_OPERATION}"[^>]*aria-label="([^"]+)"', dom)
    assert entry is not None and entry.group(1) == "Classify"
