"""Turn a colour photo into the input of an ImageNet-trained backbone (EfficientNet-Lite0 for hot dogs).

The backbone was trained on photos resized so their short side is 256 pixels and centre-cropped
to 224 x 224. Both steps are done at once here: the centre square that the crop would keep is
cut from the photo and resized straight to 224 x 224 (Pillow's ``box`` argument), so a photo is
resampled once. Pillow's bilinear filter widens its support when it shrinks, which is the
antialiased resize torchvision uses. The ImageNet mean/std normalisation is inside the model:
inputs are RGB in [0, 1].
"""

from __future__ import annotations

import numpy as np
from PIL import Image

RESIZE_SHORT_SIDE = 256
CROP = 224


def centre_crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The region of a ``width`` x ``height`` photo that "resize short side to 256, centre-crop 224" keeps."""
    side = min(width, height) * CROP / RESIZE_SHORT_SIDE
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


def prepare_imagenet_photo(photo: Image.Image | np.ndarray) -> np.ndarray:
    """An upright RGB photo (a Pillow image or uint8 [H, W, 3]) -> float32 [3, 224, 224] in [0, 1]."""
    image = Image.fromarray(photo) if isinstance(photo, np.ndarray) else photo
    square = np.asarray(image.resize((CROP, CROP), Image.Resampling.BILINEAR, box=centre_crop_box(*image.size)))
    tensor = np.empty((3, CROP, CROP), np.float32)
    np.multiply(square.transpose(2, 0, 1), np.float32(1 / 255), out=tensor)  # one pass: planar, scaled
    return tensor
