"""The gateway's own log (not the prediction log): text for people, or one JSON object per line for a collector.

``[logging] format = "json"`` makes every line, the gateway's and uvicorn's, a JSON object with
``time``, ``level``, ``logger`` and ``message``, plus the fields of the event: an answered request
carries ``request_id``, ``trace_id`` (when tracing is on), ``client``, ``protocol``, ``model``,
``version``, ``code`` and ``latency_ms``. A line is never more than one line (tracebacks are a field).

Nothing a caller sent is written but what these fields name: no photo bytes, no headers, no keys.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Callable

from gateway.monitoring.log_stream import OneWritePerStepHandler

REQUEST_LOGGER = "gateway.requests"
EVENT_FIELDS = ("request_id", "trace_id", "client", "protocol", "model", "version", "code", "latency_ms")
"""Attributes of a log record (``extra=``) that become fields of its JSON line."""
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = ("debug", "info", "warning", "error")


def _no_trace_id() -> str | None:
    return None


_trace_id: Callable[[], str | None] = _no_trace_id
"""Replaced by the tracing module when tracing is on."""
request_log = logging.getLogger(REQUEST_LOGGER)


def set_trace_id_source(source: Callable[[], str | None]) -> None:
    """Where lines get the current trace id from (tracing sets it; off, every line has none)."""
    global _trace_id
    _trace_id = source


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in EVENT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if "trace_id" not in line:
            trace_id = _trace_id()
            if trace_id is not None:
                line["trace_id"] = trace_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT, the line ``logging.Formatter(TEXT_FORMAT)`` writes, for less: the date and time of day are
    formatted once a second (not ``strftime`` per line), and the line is put together without the %-style pass
    over the record's attributes. With ``log_answer``'s own shortcut, the request line (one per request) went from
    26-44 to 18-32 us of CPU (old and new interleaved in one process, a loaded machine)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second, text = self._second
        if int(record.created) != second:
            second = int(record.created)
            text = time.strftime(self.default_time_format, self.converter(second))
            self._second = (second, text)
        return self.default_msec_format % (text, record.msecs)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return f"{record.asctime} {record.levelname} {record.name}: {record.message}"


def configure_logging(log_format: str, level: str) -> None:
    """Send every logger's lines (uvicorn's too: it is told not to configure its own) to stderr, those of one
    event-loop step in one write (``OneWritePerStepHandler``).

    Neither format shows where a line was logged from, nor the thread or the process, so log records do
    not collect them (the logging HOWTO's "Optimization": a stack walk and three lookups per line; the request
    line, written for every request, went from 29-36 to 20-29 us of CPU)."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = OneWritePerStepHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def _one_line(text: str) -> str:
    """A caller's string (a model name from a URL) in a text line: control characters escaped, so it cannot
    start a forged line."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


ANSWER_LINE = "%s %s v%s %s %.1f ms request_id=%s client=%s%s"


def log_answer(
    protocol: str,
    model: str,
    version: str,
    code: str,
    latency_s: float,
    request_id: str | None,
    client: str | None,
) -> None:
    """The one line of an answered (or refused) request.

    What ``request_log.info(..., extra=...)`` does, without its steps that do nothing here (the caller's frame is
    not looked up, the extra fields need no check against the record's own): the record made by the record
    factory and handed to the logger, so its level, filters, handlers and propagation apply as ever."""
    if not request_log.isEnabledFor(logging.INFO):
        return
    latency_ms = round(latency_s * 1000.0, 3)
    trace_id = _trace_id()
    record = logging.getLogRecordFactory()(
        REQUEST_LOGGER,
        logging.INFO,
        "(unknown file)",
        0,
        ANSWER_LINE,
        (
            protocol,
            _one_line(model),
            _one_line(version or "-"),
            code,
            latency_ms,
            request_id or "-",
            client or "-",
            f" trace_id={trace_id}" if trace_id else "",
        ),
        None,
        "(unknown function)",
    )
    record.request_id = request_id
    record.trace_id = trace_id
    record.client = client
    record.protocol = protocol
    record.model = model
    record.version = version or None
    record.code = code
    record.latency_ms = latency_ms
    request_log.handle(record)
