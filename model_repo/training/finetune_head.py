"""Retrain an MNIST version's classifier layer on prediction exports: a new version in seconds, without torch.

    .venv/bin/python model_repo/training/finetune_head.py --base model_repo/mnist/1 \\
        --extra exports/2026-12-01 --out model_repo/mnist/3

The convolutional features of ``--base`` are kept; its last layer (the ONNX ``Gemm`` before the
softmax) is fitted again by gradient descent (Adam, full batch, numpy) on the feedback-labelled
rows of the exports (``extra_data``), with an L2 pull towards the base weights so that a few
hundred rows adjust the model instead of replacing it. A seeded share of the rows is held out to
compare base and new on live inputs; ``--heldout`` (clean held-out digits) checks that nothing
was forgotten. The new version directory gets ``model.onnx``, ``training_metrics.json`` (which
data went in, the accuracies before and after) and the base's ``baseline.json`` (the inputs the
model expects have not changed). It is written beside ``--out`` and renamed into place whole, so
a gateway re-scanning the repository never sees half a version.

This is the fast path (the end-to-end test uses it); ``train_mnist.py --extra`` retrains the
whole network with torch.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import extra_data
import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_HELDOUT = REPO_ROOT / "tests" / "data" / "mnist_heldout_sample.npz"
MAX_ABS_DIFF = 1e-4
COPIED_FROM_BASE = ("baseline.json",)


def classifier_layer(model: onnx.ModelProto) -> tuple[onnx.NodeProto, str, str]:
    """The Gemm node feeding the output softmax, and the names of its weight and bias initializers."""
    producers = {output: node for node in model.graph.node for output in node.output}
    softmax = producers.get(model.graph.output[0].name)
    gemm = producers.get(softmax.input[0]) if softmax is not None and softmax.op_type == "Softmax" else None
    if gemm is None or gemm.op_type != "Gemm" or len(gemm.input) != 3:
        raise ValueError("the base model does not end in Gemm -> Softmax: its head cannot be fine-tuned here")
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in gemm.attribute}
    if attributes.get("transB") != 1 or attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0:
        raise ValueError(f"unexpected Gemm attributes {attributes} (expected transB=1, alpha=beta=1)")
    return gemm, gemm.input[1], gemm.input[2]


def session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def features_and_probabilities(model: onnx.ModelProto, x: np.ndarray, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """The head's input features [N, F] and the model's probabilities [N, C] for inputs ``x``."""
    gemm, _, _ = classifier_layer(model)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(onnx.helper.make_tensor_value_info(gemm.input[0], onnx.TensorProto.FLOAT, None))
    run = session(probe, threads)
    outputs = [run.run(None, {run.get_inputs()[0].name: x[i : i + 256]}) for i in range(0, len(x), 256)]
    return np.concatenate([o[1] for o in outputs]), np.concatenate([o[0] for o in outputs])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def fit_head(
    features: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: np.ndarray, *, steps: int, lr: float, l2: float
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Adam on cross-entropy + ``l2``/2 * ||W - W_base||^2, from the base weights; returns W, b and the losses."""
    w, b = weight.astype(np.float64), bias.astype(np.float64)
    onehot = np.eye(weight.shape[0])[y]
    moments = [np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b)]
    losses = []
    for step in range(1, steps + 1):
        probabilities = softmax(features @ w.T + b)
        losses.append(float(-np.log(probabilities[np.arange(len(y)), y] + 1e-12).mean()))
        grad_logits = (probabilities - onehot) / len(y)
        grads = (grad_logits.T @ features + l2 * (w - weight), grad_logits.sum(axis=0))
        for i, (param, grad) in enumerate(zip((w, b), grads, strict=True)):
            m, v = moments[2 * i], moments[2 * i + 1]
            m[...] = 0.9 * m + 0.1 * grad
            v[...] = 0.999 * v + 0.001 * grad**2
            param -= lr * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    return w.astype(np.float32), b.astype(np.float32), losses


def with_head(model: onnx.ModelProto, weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    _, weight_name, bias_name = classifier_layer(model)
    new = onnx.ModelProto()
    new.CopyFrom(model)
    for initializer in new.graph.initializer:
        if initializer.name in (weight_name, bias_name):
            value = weight if initializer.name == weight_name else bias
            initializer.CopyFrom(numpy_helper.from_array(value, initializer.name))
    onnx.checker.check_model(new)
    return new


def split(n: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, validation) indices; validation gets ``share`` of the rows (none if there are under 10)."""
    order = np.random.default_rng(seed).permutation(n)
    held = int(round(n * share)) if n >= 10 else 0
    return order[held:], order[:held]


def accuracy(probabilities: np.ndarray, y: np.ndarray) -> float | None:
    return round(float((probabilities.argmax(axis=1) == y).mean()), 4) if len(y) else None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the version directory to start from")
    parser.add_argument("--extra", type=Path, action="append", required=True, help="an export directory (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="the new version directory (must not exist)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--l2", type=float, default=1.0, help="pull towards the base weights")
    parser.add_argument("--validation", type=float, default=0.2, help="share of the rows held out")
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--heldout", type=Path, default=DEFAULT_HELDOUT, help="npz of clean held-out digits x, y")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: a version directory is never overwritten; choose the next number")
    labels = (args.base.parent / "labels.txt").read_text().split()
    base = onnx.load(str(args.base / "model.onnx"))
    extra = extra_data.load_exports(args.extra, labels, (1, 28, 28))
    print("data in:\n" + extra.describe())
    if len(extra.y) == 0:
        raise SystemExit("no feedback-labelled rows with a model input in the exports: nothing to train on")
    started = time.perf_counter()
    features, base_probabilities = features_and_probabilities(base, extra.x, args.threads)
    train, validation = split(len(extra.y), args.validation, args.seed)
    _, weight_name, bias_name = classifier_layer(base)
    initial = {i.name: numpy_helper.to_array(i) for i in base.graph.initializer if i.name in (weight_name, bias_name)}
    weight, bias, losses = fit_head(
        features[train],
        extra.y[train],
        initial[weight_name],
        initial[bias_name],
        steps=args.steps,
        lr=args.lr,
        l2=args.l2,
    )
    new = with_head(base, weight, bias)
    seconds = time.perf_counter() - started
    new_probabilities = session(new, args.threads).run(None, {"image": extra.x})[0]
    max_diff = float(np.abs(new_probabilities - softmax(features @ weight.T + bias)).max())
    if max_diff > MAX_ABS_DIFF:
        raise RuntimeError(f"ONNX Runtime and the numpy head disagree: max abs diff {max_diff:.3g}")
    metrics = {
        "method": f"head fine-tune: the classifier layer of {args.base} fitted on the exports' feedback-labelled "
        "inputs (features kept; numpy Adam, L2 pull to the base weights)",
        "base": str(args.base),
        "data": {"exports": extra.sources, "train_rows": len(train), "validation_rows": len(validation)},
        "export_validation_accuracy": {
            "base": accuracy(base_probabilities[validation], extra.y[validation]),
            "new": accuracy(new_probabilities[validation], extra.y[validation]),
        },
        "export_train_accuracy": {
            "base": accuracy(base_probabilities[train], extra.y[train]),
            "new": accuracy(new_probabilities[train], extra.y[train]),
        },
        "loss": {"first": round(losses[0], 4), "last": round(losses[-1], 4)},
        "steps": args.steps,
        "lr": args.lr,
        "l2": args.l2,
        "seed": args.seed,
        "training_seconds": round(seconds, 2),
        "ort_numpy_max_abs_diff": max_diff,
        "onnxruntime_version": ort.__version__,
    }
    if args.heldout.is_file():
        with np.load(args.heldout) as data:
            clean_x, clean_y = (data["x"].astype(np.float32) / 255.0)[:, np.newaxis], data["y"]
        metrics["heldout_accuracy"] = {
            "digits": str(args.heldout),
            "base": accuracy(session(base, args.threads).run(None, {"image": clean_x})[0], clean_y),
            "new": accuracy(session(new, args.threads).run(None, {"image": clean_x})[0], clean_y),
        }
    partial = args.out.with_name(f".{args.out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name in COPIED_FROM_BASE:
        if (args.base / name).is_file():
            shutil.copy2(args.base / name, partial / name)
    (partial / "training_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    onnx.save(new, str(partial / "model.onnx"))
    partial.rename(args.out)
    print(json.dumps({k: metrics[k] for k in ("export_validation_accuracy", "export_train_accuracy", "loss")}))
    if "heldout_accuracy" in metrics:
        clean = metrics["heldout_accuracy"]
        print(f"clean held-out digits: base {clean['base']}, new {clean['new']}")
    print(f"wrote {args.out} ({len(train)} rows trained on, {seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
