"""The fast steps of gateway.preprocess.digits against straightforward references: same outputs, bit for bit.

The ink's top quantiles come from a sort of only its top values, the border's median from the
whole histogram minus the inside's, and the opening that follows a shadow's edge from the uint8 pixels
(labelling its regions only where one could be long and at the border). Each reference here does the
plain thing (sort every value, mask the border, open the float layer); prepare_digit run with the
references swapped in must give the same array, or refuse the same photo, on photos of every kind the
gateway meets.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFilter

from gateway.bench.photos import digit_photo, digit_png
from gateway.bench.renderers import RENDERERS, render
from gateway.core.errors import InvalidInput
from gateway.preprocess import digits
from gateway.preprocess.image import decode_image


def reference_order_statistics(values: np.ndarray, ranks: tuple[int, ...]) -> list[float]:
    ordered = np.sort(values, axis=None)
    return [float(ordered[rank]) for rank in ranks]


def reference_ink_is_dark(pixels: np.ndarray) -> bool:
    """The border's levels from a sort of the masked border; where they disagree, each pixel against its tile's
    median (a sort per tile) and the two ends of all the deviations from a full sort."""
    height, width = pixels.shape
    band = max(1, min(height, width) // 10)
    border = np.ones((height, width), bool)
    border[band : height - band, band : width - band] = False
    ordered, everything = np.sort(pixels[border]), np.sort(pixels, axis=None)
    darkest = int(everything[digits._rank(everything.size, digits.EXTREME)])
    lightest = int(everything[everything.size - 1 - digits._rank(everything.size, digits.EXTREME)])
    votes = []
    for q in digits.BORDER_QUANTILES:
        paper = int(ordered[digits._rank(ordered.size, q)])
        votes.append(paper - darkest > lightest - paper)
    if min(height, width) < digits.GRID * 4:
        return votes[digits.BORDER_QUANTILES.index(0.5)]
    if len(set(votes)) == 1:
        return votes[0]
    grid = digits.POLARITY_GRID
    tile_h, tile_w = height // grid, width // grid
    medians = np.zeros((grid, grid), np.float32)
    for row in range(grid):
        for col in range(grid):
            tile = np.sort(pixels[row * tile_h : (row + 1) * tile_h, col * tile_w : (col + 1) * tile_w], axis=None)
            medians[row, col] = tile[digits._rank(tile.size, 0.5)]
    paper_level = cv2.resize(medians, (width, height), interpolation=cv2.INTER_LINEAR)
    deviation = np.sort(pixels.astype(np.float32) - paper_level, axis=None)
    rank = digits._rank(deviation.size, digits.POLARITY_SHARE)
    return bool(-deviation[rank] > deviation[deviation.size - 1 - rank])


def reference_follow_sharp_edges(ink: np.ndarray, background: np.ndarray, pixels: np.ndarray, dark: bool) -> None:
    """The opening on the float ink layer itself, and every region above the grid labelled."""
    side = max(min(ink.shape) // digits.OPENING_FRACTION, digits._widest_stroke(ink, background) + 2) | 1
    opened = cv2.morphologyEx(ink, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (side, side)))
    _, labels, stats, _ = cv2.connectedComponentsWithStats(cv2.compare(opened, background, cv2.CMP_GT), connectivity=4)
    edges = digits._at_border(stats[1:], ink.shape, side // 3) & digits._long(stats[1:], ink.shape)
    raised = np.concatenate([[False], edges])[labels]
    background[raised] = opened[raised]


def grey(data: bytes) -> np.ndarray:
    return decode_image(data, max_pixels=10_000_000, min_side=1, mode="L", min_long_side=digits.WORK_SIDE).pixels


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def on_paper(ink: np.ndarray, size: tuple[int, int], seed: int, paper: float = 0.85, level: float = 0.1) -> bytes:
    """``ink`` (alpha in [0, 1]) on lit, noisy paper of ``size``, as a JPEG."""
    rng = np.random.default_rng(seed)
    canvas = np.full(size, paper, np.float32) * (1.0 - 0.2 * np.linspace(0.0, 1.0, size[1], dtype=np.float32))
    top, left = (size[0] - ink.shape[0]) // 2, (size[1] - ink.shape[1]) // 3
    region = canvas[top : top + ink.shape[0], left : left + ink.shape[1]]
    region -= (region - level) * ink
    canvas += rng.normal(0.0, 0.015, size).astype(np.float32)
    return jpeg(np.clip(canvas * 255, 0, 255).astype(np.uint8))


def enlarged(digit: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC), np.float32) / 255.0


def varied_photos(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Grey photos of every kind: each renderer, the older generator (JPEG and PNG, large and tiny),
    fine-pen "1"s, felt-marker strokes, pages on a table, light ink on dark, photos smaller than GRID * 4, noise."""
    rng = np.random.default_rng(11)
    photos = {}
    for name in RENDERERS:
        for index in range(3):
            photos[f"{name} {index}"] = grey(render(x[index * 7] / 255.0, name, rng))
    for index, side in enumerate((300, 90, 40, 24, 12)):
        photos[f"generator {side}"] = grey(digit_photo(x[index], rng, min_side=side))
        photos[f"generator {side} png"] = grey(digit_photo(x[index + 5], rng, min_side=side, fmt="PNG"))
    one = x[np.flatnonzero(y == 1)[0]]
    fine = np.asarray(Image.fromarray(one).filter(ImageFilter.MinFilter(3)), np.uint8)
    photos["fine one, large"] = grey(on_paper(enlarged(fine, 260), (1200, 900), seed=3))
    photos["fine one, small"] = grey(on_paper(enlarged(fine, 60), (150, 120), seed=4))
    for index in range(3):
        marker = np.asarray(Image.fromarray(x[index]).filter(ImageFilter.MaxFilter(3)), np.uint8)
        photos[f"marker {index}"] = grey(on_paper(enlarged(marker, 330), (400, 400), seed=index, level=0.05))
    for index in range(3):  # a darker table beyond two sides of the page: the border's levels disagree
        on_table = grey(on_paper(enlarged(x[index + 9], 150), (360, 300), seed=index))
        on_table[: 45 + 10 * index] //= 3
        on_table[:, : 35 + 5 * index] //= 3
        photos[f"on a table {index}"] = on_table
    for name, pixels in list(photos.items())[::3]:
        photos[f"{name}, inverted"] = 255 - pixels
    photos["board"] = grey(on_paper(enlarged(x[4], 200), (360, 480), seed=2, paper=0.2, level=0.9))
    photos["clean png"] = grey(digit_png(x[6]))
    photos["tiny 20 x 17"] = np.ascontiguousarray(photos["marker 0"][::20, ::23])
    photos["noise"] = rng.integers(0, 256, (200, 173), dtype=np.uint8)
    return photos


def outcome(pixels: np.ndarray) -> np.ndarray | str:
    try:
        return digits.prepare_digit(pixels)
    except InvalidInput as exc:
        return str(exc)


def test_prepare_digit_equals_the_reference_steps(heldout_sample, monkeypatch) -> None:
    photos = varied_photos(*heldout_sample)
    fast = {name: outcome(pixels) for name, pixels in photos.items()}
    monkeypatch.setattr(digits, "_top_order_statistics", reference_order_statistics)
    monkeypatch.setattr(digits, "_ink_is_dark", reference_ink_is_dark)
    monkeypatch.setattr(digits, "_follow_sharp_edges", reference_follow_sharp_edges)
    for name, pixels in photos.items():
        expected = outcome(pixels)
        if isinstance(expected, str):
            assert fast[name] == expected, name
        else:
            assert isinstance(fast[name], np.ndarray) and fast[name].dtype == expected.dtype, name
            assert np.array_equal(fast[name], expected), name
    assert sum(isinstance(result, np.ndarray) for result in fast.values()) >= len(photos) - 2


@pytest.mark.parametrize("level", [0, 77, 255])
def test_a_blank_photo_is_refused_by_both(level: int, monkeypatch) -> None:
    blank = np.full((120, 90), level, np.uint8)
    with pytest.raises(InvalidInput, match="no digit found"):
        digits.prepare_digit(blank)
    monkeypatch.setattr(digits, "_top_order_statistics", reference_order_statistics)
    with pytest.raises(InvalidInput, match="no digit found"):
        digits.prepare_digit(blank)


def top_cases(rng: np.random.Generator) -> list[np.ndarray]:
    size = 160 * 141
    mostly_zero = np.zeros(size, np.float32)
    mostly_zero[rng.choice(size, 40, replace=False)] = rng.random(40, dtype=np.float32)
    misleading = np.zeros(size, np.float32)
    misleading[::8] = 1.0  # every sampled value is the maximum: the estimated cut lies above the ranks
    return [
        rng.random(size, dtype=np.float32),
        np.maximum(rng.normal(0.0, 0.05, size), 0).astype(np.float32),
        mostly_zero,
        misleading,
        np.full(size, 0.25, np.float32),
        np.round(rng.random(size) * 3).astype(np.float32) / 3,  # four values: ties at the cut
        rng.random(37, dtype=np.float32),
    ]


def test_the_top_order_statistics_equal_a_full_sort() -> None:
    rng = np.random.default_rng(5)
    for values in top_cases(rng):
        ranks = (digits._rank(values.size, 0.995), digits._rank(values.size, 1 - digits.EXTREME))
        assert digits._top_order_statistics(values, ranks) == reference_order_statistics(values, ranks)


def test_ink_is_dark_equals_the_reference(heldout_sample) -> None:
    rng = np.random.default_rng(8)
    cases = [
        pixels
        for shape in [(160, 149), (1, 160), (2, 90), (31, 31), (160, 21)]
        for pixels in (rng.integers(0, 256, shape, dtype=np.uint8), rng.integers(0, 3, shape, dtype=np.uint8) * 100)
    ]
    cases += list(varied_photos(*heldout_sample).values())
    judged_locally = 0
    for pixels in cases:
        judged_locally += min(pixels.shape) >= digits.GRID * 4 and len(set(digits._border_votes(pixels))) > 1
        assert digits._ink_is_dark(pixels) == reference_ink_is_dark(pixels)
    assert judged_locally >= 3  # both ways of judging are compared
