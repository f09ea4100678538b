"""What the JSON limits cost: ``json.loads`` against the gateway's bounded parser on the same bodies, side by
side in one run, as CPU time of this thread (medians of 21 interleaved rounds; the machine is shared).

    python -m gateway.bench.parse_limits
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from gateway.ingress.json_body import parse_json

BODIES = {
    "KServe infer, 1 row (flat data)": (
        {"id": "r", "inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.123] * 784}]},
        300,
    ),
    "TF Serving predict, 64 nested rows": ({"instances": [[[[0.123] * 28] * 28]] * 64}, 6),
}


def _cpu_per_call(call: Callable[[], object], calls: int) -> float:
    started = time.thread_time()
    for _ in range(calls):
        call()
    return (time.thread_time() - started) / calls


def main() -> None:
    print("| body | bytes | json.loads us | bounded parser us | ratio |\n| --- | --- | --- | --- | --- |")
    for name, (payload, calls) in BODIES.items():
        body = json.dumps(payload).encode()
        plain, bounded = [], []
        for _ in range(21):
            plain.append(_cpu_per_call(lambda body=body: json.loads(body), calls))
            bounded.append(
                _cpu_per_call(
                    lambda body=body: parse_json(body, max_bytes=1 << 23, max_depth=32, what="x", setting="s"), calls
                )
            )
        a, b = sorted(plain)[10], sorted(bounded)[10]
        print(f"| {name} | {len(body):,} | {a * 1e6:.0f} | {b * 1e6:.0f} | {b / a:.2f} |")


if __name__ == "__main__":
    main()
