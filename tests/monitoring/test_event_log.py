"""The gateway's own log lines: JSON one object per line with the request's fields; text stays one line too."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from gateway.monitoring import event_log
from gateway.monitoring.event_log import JsonFormatter, log_answer, set_trace_id_source
from gateway.security.pki import PkiPaths
from gateway.v1 import classifier_pb2, classifier_pb2_grpc
from tests.conftest import MODEL_REPO, REPO_ROOT, start_gateway, stop_gateway

PHOTO = (REPO_ROOT / "docs" / "examples" / "seven.jpg").read_bytes()


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger(event_log.REQUEST_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream, handler
    logger.removeHandler(handler)
    set_trace_id_source(lambda: None)


def test_a_request_line_in_json_carries_every_field(captured) -> None:
    stream, handler = captured
    handler.setFormatter(JsonFormatter())
    set_trace_id_source(lambda: "4bf92f3577b34da6a3ce929d0e0e4736")
    log_answer("rest", "mnist", "2", "200", 0.0123456, "req-1", "app")
    line = json.loads(stream.getvalue())
    assert stream.getvalue().count("\n") == 1
    assert {k: line[k] for k in event_log.EVENT_FIELDS} == {
        "request_id": "req-1",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "client": "app",
        "protocol": "rest",
        "model": "mnist",
        "version": "2",
        "code": "200",
        "latency_ms": 12.346,
    }
    assert line["level"] == "info" and line["logger"] == "gateway.requests" and line["time"].endswith("+00:00")


def test_unknown_fields_are_left_out_and_an_exception_stays_on_its_line(captured) -> None:
    stream, handler = captured
    handler.setFormatter(JsonFormatter())
    log_answer("grpc", "nope", "", "NOT_FOUND", 0.001, None, None)
    try:
        raise ValueError("line one\nline two")
    except ValueError:
        logging.getLogger(event_log.REQUEST_LOGGER).exception("failed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "request_id" not in first and "client" not in first and "version" not in first and "trace_id" not in first
    assert second["message"] == "failed" and "ValueError: line one\\nline two" in json.dumps(second["exception"])


def test_a_model_name_with_a_newline_cannot_forge_a_text_line(captured) -> None:
    stream, handler = captured
    handler.setFormatter(logging.Formatter(event_log.TEXT_FORMAT))
    log_answer("rest", "mnist\n2026-01-01 INFO gateway: forged", "", "404", 0.001, "r", "app")
    assert stream.getvalue().count("\n") == 1 and "mnist\\n2026" in stream.getvalue()


def test_the_text_formatter_writes_the_lines_of_the_standard_one(captured) -> None:
    """The lean TextFormatter (the default) against ``logging.Formatter(TEXT_FORMAT)`` on the same records: a
    request line, lines in another second, a line with a traceback, a line with a date format of its own."""
    lean, standard = event_log.TextFormatter(), logging.Formatter(event_log.TEXT_FORMAT)
    stream, handler = captured
    handler.setFormatter(lean)
    log_answer("rest", "mnist", "2", "200", 0.0123456, "req-1", "app")
    records = [
        logging.makeLogRecord({"name": "gateway", "msg": "at %s", "args": (t,), "created": t})
        for t in (1764652800.0, 1764652800.999, 1764652801.5, 1764739199.25)
    ]
    try:
        raise ValueError("broken")
    except ValueError:
        records.append(logging.makeLogRecord({"msg": "failed", "exc_info": sys.exc_info(), "levelname": "ERROR"}))
    for record in records:
        assert lean.format(record) == standard.format(record)
    assert lean.formatTime(records[0], "%H:%M") == standard.formatTime(records[0], "%H:%M")
    line = stream.getvalue()
    assert line.endswith(" INFO gateway.requests: rest mnist v2 200 12.3 ms request_id=req-1 client=app\n")


def test_a_json_gateway_writes_only_json_lines_one_per_request(pki: PkiPaths) -> None:
    gateway = start_gateway(pki, "--model-repo", str(MODEL_REPO), env={"GATEWAY_LOGGING_FORMAT": "json"})
    try:
        with gateway.client("app") as client:
            good = client.post("/api/v1/models/mnist/classify", content=PHOTO, headers={"content-type": "image/jpeg"})
            broken = client.post(
                "/api/v1/models/mnist/classify", content=PHOTO[:200], headers={"content-type": "image/jpeg"}
            )
        with gateway.grpc_channel("operator") as channel:
            classifier_pb2_grpc.ClassifierStub(channel).Classify(
                classifier_pb2.ClassifyRequest(model="mnist", image=PHOTO), timeout=30
            )
    finally:
        stop_gateway(gateway)
    lines = [json.loads(line) for line in "".join(gateway.output).splitlines() if line.strip()]  # each one JSON
    assert any("gateway: serving https://" in line["message"] for line in lines)
    answered = {line["request_id"]: line for line in lines if line["logger"] == event_log.REQUEST_LOGGER}
    assert good.status_code == 200 and broken.status_code == 400
    ok, refused = answered[good.headers["x-request-id"]], answered[broken.headers["x-request-id"]]
    assert (ok["protocol"], ok["client"], ok["model"], ok["version"], ok["code"]) == (
        "rest",
        "app",
        "mnist",
        good.json()["version"],
        "200",
    )
    assert ok["latency_ms"] > 0
    assert (refused["code"], refused["client"]) == ("400", "app")
    grpc_lines = [line for line in answered.values() if line["protocol"] == "grpc"]
    assert [(line["client"], line["code"]) for line in grpc_lines] == [("operator", "OK")]
    assert len(answered) == 3
