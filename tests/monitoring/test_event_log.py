"""The gateway's own log lines: JSON one object per line with the request's fields; text stays one line too."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterator

import pytest

from gateway.ingress.http_server import event_loop_factory
from gateway.monitoring import event_log
from gateway.monitoring.event_log import JsonFormatter, log_answer, set_trace_id_source
from gateway.monitoring.log_stream import OneWritePerStepHandler
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
    shutdown = [line["message"] for line in lines if line["logger"] == "gateway"][-3:]  # the loop's last steps
    assert shutdown == ["stopping gRPC (grace 10 s)", "closing the batchers and the prediction log", "stopped"]


class CountingStream(io.StringIO):
    """A stream double that keeps each write: the handler's system calls, one write each."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.fixture
def stepped() -> Iterator[tuple[CountingStream, OneWritePerStepHandler]]:
    """The request logger writing through a OneWritePerStepHandler (text format) to a CountingStream."""
    stream = CountingStream()
    handler = OneWritePerStepHandler(stream)
    handler.setFormatter(event_log.TextFormatter())
    logger = logging.getLogger(event_log.REQUEST_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream, handler
    logger.removeHandler(handler)
    handler.close()


def answer(request_id: str, client: str = "app") -> None:
    log_answer("grpc", "mnist", "1", "OK", 0.001, request_id, client)


def request_ids(text: str) -> list[str]:
    return re.findall(r"request_id=(\S+)", text)


def on_the_gateway_loop(main: Callable[[], Coroutine[None, None, None]]) -> None:
    """``main()`` on the event loop a worker runs (uvloop when installed)."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(main())


def test_the_lines_of_one_loop_step_are_one_write_and_two_steps_two(stepped) -> None:
    stream, _ = stepped

    async def main() -> None:
        for i in range(50):
            answer(f"a{i}")
        assert stream.writes == [], "written before the step ended"
        await asyncio.sleep(0)  # the loop's next turn
        assert len(stream.writes) == 1
        for i in range(3):
            answer(f"b{i}")

    on_the_gateway_loop(main)
    assert len(stream.writes) == 2
    assert request_ids(stream.writes[0]) == [f"a{i}" for i in range(50)]
    assert request_ids(stream.writes[1]) == ["b0", "b1", "b2"]
    assert stream.getvalue().count("\n") == 53


def test_a_line_from_another_thread_is_written_at_once_after_the_waiting_ones(stepped) -> None:
    """A preprocess-pool thread's line does not wait for the loop, and does not jump the loop's earlier lines."""
    stream, _ = stepped

    async def main() -> None:
        answer("loop-1")
        pool_thread = threading.Thread(target=answer, args=("pool",))
        pool_thread.start()
        pool_thread.join()
        assert [request_ids(w) for w in stream.writes] == [["loop-1", "pool"]]
        answer("loop-2")

    on_the_gateway_loop(main)
    answer("no-loop")  # this thread, its loop gone: at once
    assert [request_ids(w) for w in stream.writes] == [["loop-1", "pool"], ["loop-2"], ["no-loop"]]


def test_flush_close_and_logging_shutdown_write_what_waits(stepped) -> None:
    stream, handler = stepped

    async def main() -> None:
        answer("flushed")
        handler.flush()
        assert request_ids(stream.getvalue()) == ["flushed"]
        answer("shut-down")
        logging.shutdown([weakref.ref(handler)])  # what the interpreter runs at exit: flush, then close
        assert request_ids(stream.getvalue()) == ["flushed", "shut-down"]
        answer("closed")
        handler.close()
        assert request_ids(stream.getvalue()) == ["flushed", "shut-down", "closed"]

    on_the_gateway_loop(main)
    assert len(stream.writes) == 3


def test_lines_left_by_a_loop_closed_before_its_next_turn_are_not_lost(stepped) -> None:
    """asyncio's own loop stops after the step that called ``stop()``: the write queued in it never runs."""
    stream, _ = stepped
    loop = asyncio.new_event_loop()

    def last_step() -> None:
        loop.stop()
        answer("last-step")

    loop.call_soon(last_step)
    loop.run_forever()
    loop.close()
    assert stream.writes == [], "the test needs the write to have been left queued"
    answer("after-close")
    assert [request_ids(w) for w in stream.writes] == [["last-step", "after-close"]]


def test_a_running_loop_that_takes_no_callback_gets_its_line_written_at_once(stepped) -> None:
    stream, _ = stepped
    closed = asyncio.new_event_loop()
    closed.close()
    asyncio.events._set_running_loop(closed)  # what asyncio sees as running; its call_soon raises RuntimeError
    try:
        answer("closed-loop")
        assert request_ids(stream.getvalue()) == ["closed-loop"]
    finally:
        asyncio.events._set_running_loop(None)


def test_levels_filters_and_other_handlers_work_as_before(stepped, caplog) -> None:
    stream, handler = stepped
    handler.addFilter(lambda record: getattr(record, "client", None) != "filtered")

    async def main() -> None:
        answer("kept")
        answer("dropped", client="filtered")
        logging.getLogger(event_log.REQUEST_LOGGER).debug("below the level")
        handler.setLevel(logging.WARNING)
        answer("below-the-handler")
        logging.getLogger(event_log.REQUEST_LOGGER).warning("a warning")
        handler.setLevel(logging.NOTSET)

    with caplog.at_level(logging.INFO, logger=event_log.REQUEST_LOGGER):
        on_the_gateway_loop(main)
    assert [getattr(r, "request_id", None) for r in caplog.records] == ["kept", "dropped", "below-the-handler", None]
    assert request_ids(stream.getvalue()) == ["kept"] and stream.getvalue().endswith("gateway.requests: a warning\n")
    assert len(stream.writes) == 1


@pytest.fixture
def configured_root() -> Iterator[None]:
    """configure_logging replaces the root logger's handlers and level: both put back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_configure_logging_writes_a_steps_lines_in_one_write_in_both_formats(configured_root, log_format) -> None:
    event_log.configure_logging(log_format, "info")
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler, OneWritePerStepHandler)
    stream = CountingStream()
    handler.setStream(stream)

    async def main() -> None:
        answer("r1")
        logging.getLogger("gateway").info("another logger")
        answer("r2")

    on_the_gateway_loop(main)
    (write,) = stream.writes
    lines = write.splitlines()
    if log_format == "json":
        assert [json.loads(line).get("request_id") for line in lines] == ["r1", None, "r2"]
    else:
        assert request_ids(write) == ["r1", "r2"] and " INFO gateway: another logger" in lines[1]


WORKER = """
import asyncio, atexit, sys
from gateway.ingress.http_server import event_loop_factory
from gateway.monitoring.event_log import configure_logging, log_answer

configure_logging("text", "info")
atexit.register(lambda: print("exiting", file=sys.stderr, flush=True))  # runs before logging.shutdown's (LIFO)
how = sys.argv[1]


def lines() -> None:
    for i in range(200):
        log_answer("grpc", "mnist", "1", "OK", 0.001, f"r{i}", "app")


async def serve() -> None:
    lines()
    if how == "exception":
        raise RuntimeError("the worker failed")


def interrupted() -> None:
    lines()
    raise KeyboardInterrupt  # out of asyncio's run_forever at once: the queued write never runs


if how == "interrupt":
    loop = asyncio.new_event_loop()
    loop.call_soon(interrupted)
    loop.run_forever()
else:
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve())
"""


@pytest.mark.parametrize("how", ["exit", "exception", "interrupt"])
def test_a_worker_process_that_ends_loses_no_line(how: str) -> None:
    """A normal exit, an uncaught exception out of the worker's loop, and one that leaves the loop before its next
    turn (the lines then wait for logging.shutdown, after the process's last atexit line)."""
    ended = subprocess.run(
        [sys.executable, "-c", WORKER, how], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )
    assert ended.returncode == (0 if how == "exit" else 1 if how == "exception" else -signal.SIGINT), ended.stderr
    assert request_ids(ended.stderr) == [f"r{i}" for i in range(200)]
    exiting = ended.stderr.index("exiting\n")
    if how == "interrupt":
        assert ended.stderr.index("request_id=r0 ") > exiting, "the test needs the lines to have waited"
    else:
        assert ended.stderr.rindex("request_id=r199 ") < exiting
    if how != "exit":
        assert ("RuntimeError: the worker failed" if how == "exception" else "KeyboardInterrupt") in ended.stderr
