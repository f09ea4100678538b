"""One MNIST version from several training runs: their class probabilities averaged, in one ONNX file.

    .venv-train/bin/python model_repo/training/ensemble_mnist.py \\
        --member model_repo/training/.cache/ckpt/runA.pt --member model_repo/training/.cache/ckpt/runB.pt \\
        --member-metrics var/runA/3/training_metrics.json --member-metrics var/runB/3/training_metrics.json \\
        --arch lite --out model_repo/mnist/3

Each ``--member`` is a ``train_mnist.py --checkpoint`` file of a finished run. The served model
takes the same input and gives the same output as a single run's (``image`` [N, 1, 28, 28],
``probabilities`` [N, 10]); its cost is the members' together. Checks ONNX Runtime against
torch like ``train_mnist.py`` and writes ``training_metrics.json`` with each member's own.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import mnist_data
import onnxruntime as ort
import torch
from torch import nn
from train_mnist import (
    OPSET,
    DigitNet,
    export_checked,
    move_into_place,
    per_class_accuracy,
)


class Ensemble(nn.Module):
    """The mean of the members' class probabilities."""

    def __init__(self, members: list[DigitNet]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(image) for member in self.members]).mean(dim=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--member", type=Path, action="append", required=True, help="a run's --checkpoint file")
    parser.add_argument("--member-metrics", type=Path, action="append", default=[], help="its training_metrics.json")
    parser.add_argument("--arch", default="lite")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    members = []
    for path in args.member:
        state = torch.load(path, weights_only=False)
        if state["epoch"] != state["epochs"]:
            raise SystemExit(f"{path}: the run stopped after epoch {state['epoch']} of {state['epochs']}")
        member = DigitNet(args.arch)
        member.load_state_dict(state["model"])
        members.append(member)
    model = Ensemble(members)
    images, labels = mnist_data.load_digits(mnist_data.fetch_package())
    _, _, test_x, test_y = mnist_data.split(images, labels)
    exported = export_checked(model, args.out, args.threads, test_x, test_y)
    partial, model_path, max_diff = exported.partial, exported.path, exported.max_diff
    predicted, accuracy = exported.ort_predicted, exported.ort_accuracy
    size_kib = model_path.stat().st_size / 1024
    print(f"held-out accuracy (ONNX Runtime): {accuracy:.4f}; {model_path} is {size_kib:.0f} KiB")
    metrics = {
        "heldout_accuracy": round(accuracy, 4),
        "per_class_heldout_accuracy": per_class_accuracy(predicted, test_y),
        "test_size": len(test_y),
        "split_seed": mnist_data.SPLIT_SEED,
        "ensemble": "mean of the members' probabilities",
        "arch": args.arch,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "members": [json.loads(path.read_text()) for path in args.member_metrics],
        "torch_version": torch.__version__,
        "onnxruntime_version": ort.__version__,
        "opset": OPSET,
        "ort_torch_max_abs_diff": max_diff,
        "data": f"npm:{mnist_data.PACKAGE_SPEC} (sha256 {mnist_data.TARBALL_SHA256})",
    }
    (partial / "training_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    move_into_place(partial, args.out)


if __name__ == "__main__":
    main()
