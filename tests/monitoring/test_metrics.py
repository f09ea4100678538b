"""The request counter against a real gateway: every call is counted exactly once, however it ends."""

from __future__ import annotations

import re
from collections import Counter

import grpc
import pytest

from gateway.bench.photos import digit_png
from gateway.v1 import classifier_pb2, classifier_pb2_grpc
from tests.conftest import MNIST_STABLE, RunningGateway, metrics
from tests.security.helpers import wait_until


def grpc_calls_counted(gateway: RunningGateway) -> Counter[str]:
    """gateway_requests_total of mnist on the gRPC Classifier, by status code."""
    pattern = r'^gateway_requests_total\{code="([^"]+)",model="mnist",protocol="grpc",version="[^"]*"\} (\S+)$'
    counted: Counter[str] = Counter()
    for code, value in re.findall(pattern, metrics(gateway), re.MULTILINE):
        counted[code] += int(float(value))
    return counted


def test_every_grpc_call_is_counted_once_however_it_ends(slow_batching_gateway, heldout_sample) -> None:
    """Batches wait 3 s to fill. Calls whose deadline (0.5 s) passes in the queue end either by the gateway's
    DEADLINE_EXCEEDED or by gRPC cancelling the handler when the deadline is up, whichever comes first; a call
    the client cancels while it waits ends by cancellation only. Each is counted, once."""
    gateway = slow_batching_gateway
    request = classifier_pb2.ClassifyRequest(model="mnist", image=digit_png(heldout_sample[0][0]))
    late_calls = 4
    with gateway.grpc_channel() as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        for _ in range(late_calls):
            with pytest.raises(grpc.RpcError) as late:
                stub.Classify(request, timeout=0.5)
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: sum(grpc_calls_counted(gateway).values()) >= late_calls, "the late calls are counted")
        waiting = stub.Classify.future(request, timeout=30)
        queued = f'gateway_queue_depth{{model="mnist",version="{MNIST_STABLE}"}} 1.0'
        wait_until(lambda: queued in metrics(gateway), "the call to cancel waits in the batcher's queue")
        waiting.cancel()
        wait_until(lambda: sum(grpc_calls_counted(gateway).values()) >= late_calls + 1, "the cancelled call counted")
        assert stub.Classify(request, timeout=30).label == str(heldout_sample[1][0])
    counted = grpc_calls_counted(gateway)
    assert counted["OK"] == 1, counted
    assert counted["CANCELLED"] >= 1 and counted["DEADLINE_EXCEEDED"] + counted["CANCELLED"] == late_calls + 1, counted
    assert sum(counted.values()) == late_calls + 2, counted
