"""Pick the preparation a model's config asks for and apply it to one photo."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gateway.core.types import PreparedInput
from gateway.models.repository import ModelSpec, RepositoryError
from gateway.preprocess.digits import WORK_SIDE, prepare_digit
from gateway.preprocess.gpu_decode import PhotoDecoder
from gateway.preprocess.image import decode_image
from gateway.preprocess.imagenet import prepare_imagenet_photo


@dataclass(frozen=True)
class Preparation:
    """How to decode a photo for one kind of model and turn it into one input row."""

    mode: str
    """Mode the photo is decoded into: L (grey) or RGB."""
    min_side: int
    """Smallest short side worth decoding; JPEGs are draft-decoded down towards it."""
    prepare: Callable[[np.ndarray], np.ndarray]
    """uint8 pixels in ``mode`` ([H, W] or [H, W, 3]) -> one input row."""
    min_long_side: int = 0
    """Smallest long side worth decoding (a digit's photo is analysed at WORK_SIDE on its long side)."""
    eighths: bool = False
    """Colour JPEGs may be decoded at any scale M/8 on the CPU (image.decode_image); the GPU path keeps 1/2^k."""


PREPARATIONS: dict[str, Preparation] = {
    "mnist_digit": Preparation(mode="L", min_side=1, min_long_side=WORK_SIDE, prepare=prepare_digit),
    "imagenet_rgb": Preparation(mode="RGB", min_side=256, prepare=prepare_imagenet_photo, eighths=True),
}


def preparation_for(spec: ModelSpec) -> Preparation:
    try:
        return PREPARATIONS[spec.preprocessing]
    except KeyError:
        raise RepositoryError(
            f"{spec.directory}/config.pbtxt: unknown preprocessing {spec.preprocessing!r} "
            f"(known: {', '.join(PREPARATIONS)})"
        ) from None


def prepare_photo(
    data: bytes, spec: ModelSpec, *, max_pixels: int, decoder: PhotoDecoder | None = None
) -> PreparedInput:
    """Decode and preprocess one photo into exactly the model's input shape (``decoder``: on a GPU where it can)."""
    preparation = preparation_for(spec)
    where = {
        "max_pixels": max_pixels,
        "min_side": preparation.min_side,
        "mode": preparation.mode,
        "min_long_side": preparation.min_long_side,
    }
    photo = decoder.decode(data, **where) if decoder is not None else None
    photo = photo or decode_image(data, **where, eighths=preparation.eighths)
    tensor = preparation.prepare(photo.pixels)
    if tensor.shape != spec.input.dims:
        raise AssertionError(f"{spec.preprocessing} produced {tensor.shape}, model expects {spec.input.dims}")
    return PreparedInput(
        tensor=tensor.astype(spec.input.dtype, copy=False),
        source_width=photo.original_width,
        source_height=photo.original_height,
    )
