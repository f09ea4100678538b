"""The hot dog head's 5-fold cross-validated accuracy, recomputed without torch, for each way of decoding.

    .venv/bin/python model_repo/training/hotdog_cv.py

build_hotdog.py's figure (training_metrics.json: 94.5%) needs torch for the backbone. The backbone is in
the served ``model.onnx`` too: its pooled features are the input of the head's Gemm (``FEATURES``), read
here with ONNX Runtime. Folds, head and scores are build_hotdog.py's own (hotdog_head.py), so the
power-of-two decode reproduces the published figure. Each labelled photo is judged as stored and as the
mobile client uploads it (mobile_client.prepare: upright, short side <= 448, JPEG 85), once per decode:
``power-of-two`` (OpenCV/Pillow at 1/2, 1/4, 1/8, the path before the M/8 decode) and ``eighths`` (what
the gateway serves). Prints one JSON line per (photos, decode), with the mean absolute difference of the
tensors from the power-of-two decode's.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hotdog_head import fit_head, predict_head, scores, stratified_folds  # noqa: E402

from gateway.preprocess.image import decode_image  # noqa: E402
from gateway.preprocess.imagenet import prepare_imagenet_photo  # noqa: E402
from mobile_client.prepare import prepare_photo as prepare_upload  # noqa: E402
from mobile_client.values import ModelInfo  # noqa: E402

FEATURES = "/ReduceMean_output_0"
"""The backbone's 1280 pooled features in the exported graph (the head's Gemm reads them)."""
DECODES = {"power-of-two": False, "eighths": True}


def feature_session(model: Path, threads: int) -> ort.InferenceSession:
    graph = onnx.load(str(model))
    graph.graph.output.append(onnx.helper.make_tensor_value_info(FEATURES, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])


def prepare(photos: list[bytes], eighths: bool) -> np.ndarray:
    decoded = (decode_image(data, max_pixels=50_000_000, min_side=256, mode="RGB", eighths=eighths) for data in photos)
    return np.stack([prepare_imagenet_photo(photo.pixels) for photo in decoded])


def cross_validated(features: np.ndarray, is_hotdog: np.ndarray, folds: np.ndarray, ridge: float) -> np.ndarray:
    """p(hot dog) of each photo from a head fitted on the other folds."""
    held_out = np.zeros(len(features))
    for fold in np.unique(folds):
        train = folds != fold
        held_out[~train] = predict_head(features[~train], *fit_head(features[train], is_hotdog[train], ridge))
    return held_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=ROOT / "model_repo/training/hotdog_photos")
    parser.add_argument("--model", type=Path, default=ROOT / "model_repo/hotdog/1/model.onnx")
    parser.add_argument("--seed", type=int, default=20261126, help="build_hotdog.py's")
    parser.add_argument("--ridge", type=float, default=10.0, help="build_hotdog.py's")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with (args.photos / "labels.csv").open() as rows:
        table = list(csv.DictReader(rows))
    labels = np.array([0 if row["label"] == "hotdog" else 1 for row in table])
    stored = [(args.photos / row["path"]).read_bytes() for row in table]
    info = ModelInfo("hotdog", "imagenet_rgb", 3, 224, 224)
    sets = {"as stored": stored, "as the mobile client uploads them": [prepare_upload(d, info).body for d in stored]}
    session = feature_session(args.model, args.threads)
    folds = stratified_folds(labels, args.folds, args.seed)
    for set_name, photos in sets.items():
        tensors = {decode: prepare(photos, eighths) for decode, eighths in DECODES.items()}
        for decode, x in tensors.items():
            features = np.concatenate([session.run([FEATURES], {"image": c})[0] for c in np.array_split(x, 16)])
            held_out = cross_validated(features.astype(np.float64), labels == 0, folds, args.ridge)
            difference = np.abs(x - tensors["power-of-two"]).mean(axis=(1, 2, 3))
            figures = scores(labels == 0, held_out >= 0.5)
            print(
                json.dumps(
                    {
                        "photos": set_name,
                        "decode": decode,
                        "cv_accuracy": figures["accuracy"],
                        "false_positives": figures["false_positives"],
                        "false_negatives": figures["false_negatives"],
                        "tensors_changed": int((difference > 0).sum()),
                        "mean_abs_diff": round(float(difference.mean()), 6),
                        "mean_abs_diff_of_changed": round(float(difference[difference > 0].mean()), 6)
                        if (difference > 0).any()
                        else 0.0,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
