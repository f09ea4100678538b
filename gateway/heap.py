"""The process's heap, settled once start-up is done, so that garbage collection costs the requests little.

By start-up's end the heap holds well over a hundred thousand long-lived objects (FastAPI's and pydantic's models, the
protobuf descriptors, ONNX Runtime's and NumPy's modules, the model repository). The cyclic garbage
collector's oldest generation walks every one of them each time it runs, and the young generations run
every few hundred allocations, a few times per request: 5% of a KServe HTTP call's CPU went to collections
(perf, docs/performance.md). ``gc.freeze()`` moves what start-up made into a permanent generation that no
collection visits, and a larger first threshold makes the young collections rarer (each still finds the
same cycles: only how often it looks changes). Reference counting frees everything else as before.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
"""Allocations (minus deallocations) between two collections of the youngest generation (CPython: 700)."""


def settle_after_start_up() -> None:
    """Collect once, freeze what is left (start-up's objects), and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
