"""deploy/kubernetes: every manifest is valid against the Kubernetes API schema, and the pieces
agree with each other and with the gateway's own configuration."""

from __future__ import annotations

import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from gateway.config import load_settings
from gateway.security.pki import PkiPaths
from tests.conftest import MODEL_REPO, REPO_ROOT

MANIFESTS = sorted((REPO_ROOT / "deploy/kubernetes").glob("*.yaml"))
KUBERNETES_VERSION = "1.31"


def documents() -> list[dict]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(kind: str, name: str) -> dict:
    return next(d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize("document", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_is_valid_kubernetes(document: dict) -> None:
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def gateway_container() -> dict:
    return find("Deployment", "image-gateway")["spec"]["template"]["spec"]["containers"][0]


def test_the_gateway_config_in_the_configmap_loads(pki: PkiPaths, tmp_path: Path) -> None:
    """The TOML a pod reads is accepted by the gateway's own loader (unknown keys and bad values fail)."""
    values = tomllib.loads(find("ConfigMap", "image-gateway-config")["data"]["gateway.toml"])
    # the pod's paths do not exist here: point them at files that do, keep every other value
    values["tls"] = {"cert": str(pki.server_cert), "key": str(pki.server_key), "ca": str(pki.ca_cert)}
    values["models"]["repo"] = str(MODEL_REPO)
    values["predictions"]["spool_dir"] = str(tmp_path)
    (tmp_path / "gateway.toml").write_text("\n".join(_toml_tables(values)))
    env = {e["name"]: e["value"] for e in gateway_container().get("env", [])}
    settings = load_settings(tmp_path / "gateway.toml", environ=env)
    ports = {p["name"]: p["containerPort"] for p in gateway_container()["ports"]}
    assert ports == {
        "https": settings.server.http_port,
        "grpc": settings.server.grpc_port,
        "health": settings.server.health_port,
    }
    assert settings.server.host == "0.0.0.0" and settings.tls.enabled
    annotations = find("Deployment", "image-gateway")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.server.health_port)  # scraped where /metrics is plain
    assert annotations["prometheus.io/path"] == "/metrics"


def _toml_tables(values: dict) -> list[str]:
    lines = []
    for table, entries in values.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {value!r}".replace("'", '"') for key, value in entries.items()]
    return lines


def test_probes_use_the_health_port_and_paths() -> None:
    container = gateway_container()
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_services_target_ports_their_pods_expose() -> None:
    for service in (d for d in documents() if d["kind"] == "Service"):
        selector = service["spec"]["selector"]
        workloads = [
            d
            for d in documents()
            if d["kind"] in ("Deployment", "StatefulSet")
            and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert workloads, f"Service {service['metadata']['name']} selects nothing"
        exposed = {
            p["name"] for w in workloads for c in w["spec"]["template"]["spec"]["containers"] for p in c["ports"]
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in exposed, (service["metadata"]["name"], port)


def test_triton_requires_client_certificates() -> None:
    args = find("Deployment", "image-gateway-triton")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--grpc-use-ssl-mutual=true" in args
