"""A deliberately wrong model version for guard tests: the real MNIST model with its classes permuted."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tests.conftest import MODEL_REPO, version_one_config

PERMUTATION = np.array([3, 4, 5, 6, 7, 8, 9, 0, 1, 2], dtype=np.int64)
"""Output class i is the real model's class PERMUTATION[i]: every answer names another digit."""


def write_permuted(source: Path, target: Path) -> None:
    model = onnx.load(str(source))
    graph = model.graph
    output = graph.output[0]
    inner = output.name + "_unpermuted"
    for node in graph.node:
        node.output[:] = [inner if name == output.name else name for name in node.output]
    graph.initializer.append(numpy_helper.from_array(PERMUTATION, "class_permutation"))
    graph.node.append(helper.make_node("Gather", [inner, "class_permutation"], [output.name], axis=1))
    onnx.checker.check_model(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))


def model_repo_with_versions(root: Path, broken: dict[str, str] | None = None, *, all_versions: bool = False) -> Path:
    """A copy of the mnist model with version 1 (real) and, per ``broken``, extra versions:
    ``"permuted"`` (wrong answers), ``"corrupt"`` (not ONNX at all), or a shipped version to copy.
    ``all_versions``: version_policy all (the shipped config loads the latest 2)."""
    model = root / "mnist"
    model.mkdir(parents=True)
    shutil.copy(MODEL_REPO / "mnist" / "labels.txt", model / "labels.txt")
    (model / "config.pbtxt").write_text(version_one_config((MODEL_REPO / "mnist" / "config.pbtxt").read_text()))
    if all_versions:
        config = (model / "config.pbtxt").read_text()
        (model / "config.pbtxt").write_text(config.replace("{ latest: { num_versions: 2 } }", "{ all: {} }"))
    shutil.copytree(MODEL_REPO / "mnist" / "1", model / "1")
    for version, kind in (broken or {}).items():
        add_version(model, version, kind)
    return root


def add_version(model_dir: Path, version: str, kind: str) -> None:
    target = model_dir / version / "model.onnx"
    if kind == "permuted":
        write_permuted(MODEL_REPO / "mnist" / "1" / "model.onnx", target)
    elif kind == "corrupt":
        target.parent.mkdir(parents=True)
        target.write_bytes(b"this is not an ONNX file" * 100)
    else:
        shutil.copytree(MODEL_REPO / "mnist" / kind, model_dir / version)
