"""Ground truth over REST: feedback joins the logged prediction and drives live accuracy per version."""

from __future__ import annotations

import time

import httpx

from gateway.bench.photos import digit_png
from gateway.security.pki import issue_client
from gateway.security.tls import client_context
from tests.conftest import MNIST_STABLE, RunningGateway


def classify(client: httpx.Client, digit) -> dict:
    response = client.post(
        "/api/v1/models/mnist/classify", content=digit_png(digit), headers={"content-type": "image/png"}
    )
    assert response.status_code == 200
    return response.json()


def send_feedback(client: httpx.Client, request_id: str, label: str) -> httpx.Response:
    """The log is written off the request path: a prediction answered a moment ago may need a retry."""
    deadline = time.monotonic() + 10
    while True:
        response = client.post(f"/api/v1/predictions/{request_id}/feedback", json={"label": label})
        if response.status_code != 404 or time.monotonic() > deadline:
            return response


def accuracy(client: httpx.Client) -> dict:
    return (
        client.get("/api/v1/models/mnist/accuracy").json()["versions"].get(MNIST_STABLE, {"feedback": 0, "correct": 0})
    )


def test_feedback_is_joined_counted_once_and_drives_live_accuracy(gateway: RunningGateway, heldout_sample) -> None:
    x, y = heldout_sample
    with gateway.client() as client:
        before = accuracy(client)
        right = classify(client, x[60])
        wrong = classify(client, x[61])
        joined = send_feedback(client, right["request_id"], str(y[60]))
        assert joined.status_code == 200, joined.text
        assert joined.json() | {"already_recorded": False} == {
            "request_id": right["request_id"],
            "model": "mnist",
            "version": MNIST_STABLE,
            "predicted": right["label"],
            "label": str(y[60]),
            "correct": right["label"] == str(y[60]),
            "already_recorded": False,
        }
        false_label = str((int(wrong["label"]) + 1) % 10)
        assert send_feedback(client, wrong["request_id"], false_label).json()["correct"] is False
        again = send_feedback(client, wrong["request_id"], false_label).json()
        assert again["already_recorded"] is True
        after = accuracy(client)
        assert after["feedback"] - before["feedback"] == 2
        assert after["correct"] - before["correct"] == int(right["label"] == str(y[60]))
        assert 0.0 <= after["accuracy"] <= 1.0
        assert f'gateway_live_accuracy{{model="mnist",version="{MNIST_STABLE}"}}' in client.get("/metrics").text


def test_feedback_errors(gateway: RunningGateway, heldout_sample) -> None:
    pki = gateway.pki
    issue_client(pki, "other-app", "app")
    with gateway.client() as client:
        mine = classify(client, heldout_sample[0][62])
        unknown = client.post("/api/v1/predictions/nope123/feedback", json={"label": "3"})
        bad_label = send_feedback(client, mine["request_id"], "eleven")
        empty = client.post(f"/api/v1/predictions/{mine['request_id']}/feedback", json={"label": ""})
    other = httpx.Client(
        base_url=gateway.base_url,
        verify=client_context(pki.ca_cert, pki.client_cert("other-app"), pki.client_key("other-app")),
    )
    with other:
        foreign = other.post(f"/api/v1/predictions/{mine['request_id']}/feedback", json={"label": "3"})
    with gateway.client("operator") as operator:
        by_operator = operator.post(f"/api/v1/predictions/{mine['request_id']}/feedback", json={"label": "3"})
    assert unknown.status_code == 404 and "no logged prediction" in unknown.json()["error"]["message"]
    assert bad_label.status_code == 400 and "not one of model 'mnist'" in bad_label.json()["error"]["message"]
    assert empty.status_code == 400
    assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "permission_denied"
    assert by_operator.status_code == 200
