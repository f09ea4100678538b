"""Scrape the gateway's /metrics during a run: batch sizes, queue depth and queue delay over time."""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

WATCHED = ("gateway_batch_size", "gateway_queue_delay_seconds", "gateway_queue_depth")


def parse(text: str, model: str) -> dict[str, float]:
    """Sums, counts and gauges of the watched metrics for ``model`` (all versions added up)."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(WATCHED) or sample.labels.get("model") != model:
                continue
            if sample.name.endswith(("_bucket", "_created")):
                continue
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


@dataclass
class Scraper:
    base_url: str
    tls: ssl.SSLContext
    model: str = "mnist"
    interval_s: float = 1.0
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, verify=self.tls, timeout=5) as client:
            while not self._stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    self.samples.append((time.time(), parse(client.get("/metrics").text, self.model)))
                self._stop.wait(self.interval_s)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def series(self) -> dict[str, list[tuple[float, float]]]:
        """Per interval: mean batch size, mean queue delay (ms), and the queue depth gauge."""
        out: dict[str, list[tuple[float, float]]] = {"batch_size": [], "queue_delay_ms": [], "queue_depth": []}
        for (_, before), (t, after) in zip(self.samples, self.samples[1:], strict=False):
            for name, key, scale in (
                ("gateway_batch_size", "batch_size", 1.0),
                ("gateway_queue_delay_seconds", "queue_delay_ms", 1000.0),
            ):
                count = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
                if count > 0:
                    total = after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)
                    out[key].append((t, scale * total / count))
            out["queue_depth"].append((t, after.get("gateway_queue_depth", 0.0)))
        return out
