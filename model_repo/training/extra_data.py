"""Prediction exports as extra training data: the rows of `gateway predictions export --out DIR` with feedback.

Needs numpy and pyarrow only (not the gateway package), so both training environments read it.
A row is used when it has a feedback label (the truth a client or an operator gave) and a model
input of the model's shape; every other row is counted, by reason, and left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

DATA_FILE = "predictions.parquet"
MANIFEST_FILE = "manifest.json"
COLUMNS = ["input", "input_shape", "feedback", "surface", "version"]


@dataclass
class ExtraData:
    x: np.ndarray
    """float32 [N, *input_shape], the model inputs as the gateway prepared them."""
    y: np.ndarray
    """int64 [N], the feedback labels as class indices."""
    sources: list[dict] = field(default_factory=list)
    """Per export: its directory, what its manifest says, rows used and rows left out by reason."""

    def describe(self) -> str:
        lines = []
        for source in self.sources:
            left_out = ", ".join(f"{n} {reason}" for reason, n in source["left_out"].items() if n) or "none"
            lines.append(
                f"{source['dir']}: {source['used']} of {source['rows']} rows used "
                f"(model {source['model']}, versions {source['versions']}, {source['since'] or 'start'} .. "
                f"{source['until']}; left out: {left_out})"
            )
        return "\n".join(lines)


def load_exports(dirs: list[Path], labels: list[str], input_shape: tuple[int, ...]) -> ExtraData:
    """The feedback-labelled rows of every export in ``dirs``, as training inputs and class indices."""
    index = {label: i for i, label in enumerate(labels)}
    inputs: list[np.ndarray] = []
    targets: list[int] = []
    sources = []
    for directory in dirs:
        manifest_path = Path(directory) / MANIFEST_FILE
        if not manifest_path.is_file():
            raise FileNotFoundError(f"--extra {directory}: not a prediction export (no {MANIFEST_FILE})")
        manifest = json.loads(manifest_path.read_text())
        left_out = {"no feedback": 0, "no model input": 0, "other input shape": 0, "unknown label": 0}
        rows, used, versions = 0, 0, set()
        with pq.ParquetFile(Path(directory) / DATA_FILE) as handle:
            for batch in handle.iter_batches(batch_size=4096, columns=COLUMNS):
                columns = batch.to_pydict()
                for values, shape, feedback, version in zip(
                    columns["input"], columns["input_shape"], columns["feedback"], columns["version"], strict=True
                ):
                    rows += 1
                    versions.add(version)
                    if feedback is None:
                        left_out["no feedback"] += 1
                    elif values is None:
                        left_out["no model input"] += 1
                    elif tuple(shape) != tuple(input_shape):
                        left_out["other input shape"] += 1
                    elif feedback not in index:
                        left_out["unknown label"] += 1
                    else:
                        inputs.append(np.asarray(values, dtype=np.float32).reshape(input_shape))
                        targets.append(index[feedback])
                        used += 1
        sources.append(
            {
                "dir": str(directory),
                "model": manifest.get("model"),
                "versions": sorted(v for v in versions if v is not None),
                "since": manifest.get("since"),
                "until": manifest.get("until"),
                "exported_from": manifest.get("source"),
                "rows": rows,
                "used": used,
                "left_out": left_out,
            }
        )
    x = np.stack(inputs) if inputs else np.zeros((0, *input_shape), np.float32)
    return ExtraData(x, np.asarray(targets, dtype=np.int64), sources)
