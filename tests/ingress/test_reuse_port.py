"""Two gateway processes on one port (server.reuse_port): the kernel spreads connections, both answer."""

from __future__ import annotations

from gateway.bench.batching import make_photos
from gateway.bench.replicas import answered_by
from gateway.security.pki import PkiPaths
from tests.conftest import MODEL_REPO, REPO_ROOT, start_gateway, stop_gateway
from tests.redis_server import free_port

REQUESTS = 40


def test_two_replicas_share_one_port(pki: PkiPaths) -> None:
    http_port = free_port()
    health_ports = [free_port(), free_port()]
    replicas = []
    try:
        for health_port in health_ports:
            env = {"GATEWAY_SERVER_REUSE_PORT": "true", "GATEWAY_SERVER_HEALTH_PORT": str(health_port)}
            replicas.append(start_gateway(pki, "--model-repo", str(MODEL_REPO), "--http-port", str(http_port), env=env))
        photo = make_photos(REPO_ROOT / "tests/data/mnist_heldout_sample.npz", 1, 64)[0]
        statuses = []
        for _ in range(REQUESTS):  # a new connection each time: the kernel picks a listener per connection
            with replicas[0].client() as client:
                response = client.post(
                    "/api/v1/models/mnist/classify", content=photo, headers={"content-type": "image/png"}
                )
                statuses.append(response.status_code)
        shares = [answered_by(port, "mnist") for port in health_ports]
    finally:
        for replica in replicas:
            stop_gateway(replica)
    assert statuses == [200] * REQUESTS
    assert sum(shares) == REQUESTS and min(shares) > 0, shares
