import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from gateway.bench.photos import digit_photo, digit_png
from gateway.bench.renderers import render
from gateway.core.errors import InvalidInput
from gateway.preprocess.digits import prepare_digit
from gateway.preprocess.image import decode_image


def prepared(data: bytes) -> np.ndarray:
    return prepare_digit(decode_image(data, max_pixels=10_000_000, min_side=256, mode="L").image)[0]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pixel correlation after a slight blur, so a one-pixel shift of a thin stroke is not a mismatch."""

    def blurred(image: np.ndarray) -> np.ndarray:
        padded = np.pad(np.asarray(image, np.float32), 1)
        return sum(padded[r : r + 28, c : c + 28] for r in range(3) for c in range(3)) / 9

    return float(np.corrcoef(blurred(a).ravel(), blurred(b).ravel())[0, 1])


def test_output_is_mnist_shaped_white_on_black(heldout_sample) -> None:
    x, _ = heldout_sample
    tensor = prepare_digit(Image.open(io.BytesIO(digit_png(x[3]))))
    assert tensor.shape == (1, 28, 28) and tensor.dtype == np.float32
    assert tensor.min() == 0.0 and tensor.max() == 1.0
    border = np.concatenate([tensor[0, :2].ravel(), tensor[0, -2:].ravel(), tensor[0, :, :2].ravel()])
    assert border.max() == 0.0


def test_clean_digits_come_back_close_to_themselves(heldout_sample) -> None:
    x, _ = heldout_sample
    scores = [correlation(prepared(digit_png(d)), d / 255.0) for d in x[::6]]
    assert np.median(scores) > 0.9


def test_photos_come_back_close_to_the_clean_digit(heldout_sample) -> None:
    x, _ = heldout_sample
    rng = np.random.default_rng(1)
    scores = [
        correlation(prepared(digit_photo(d, rng, orientation=int(rng.choice([1, 3, 6, 8])))), d / 255.0) for d in x[:50]
    ]
    assert np.median(scores) > 0.9


def test_dark_ink_on_light_paper_equals_light_ink_on_dark(heldout_sample) -> None:
    digit = heldout_sample[0][10]
    inverted = Image.fromarray(255 - digit, "L")
    buffer = io.BytesIO()
    inverted.save(buffer, "PNG")
    np.testing.assert_allclose(prepared(buffer.getvalue()), prepared(digit_png(digit)), atol=1e-5)


@pytest.mark.parametrize("level", [0, 128, 255])
def test_blank_photo_is_refused(level: int) -> None:
    with pytest.raises(InvalidInput, match="no digit found"):
        prepared(digit_png(np.full((64, 64), level, np.uint8)))


def photo_of(
    ink: np.ndarray,
    *,
    paper: float,
    ink_level: float,
    seed: int,
    size: tuple[int, int],
    light: np.ndarray | None = None,
) -> bytes:
    """A grey JPEG of ``ink`` (float alpha in [0, 1], already at photo size) laid on paper with a lighting ramp
    (times ``light``, a multiplicative field of the photo's size, when given)."""
    rng = np.random.default_rng(seed)
    height, width = size
    canvas = np.full(size, paper, np.float32) * (1.0 - 0.15 * np.linspace(0.0, 1.0, width, dtype=np.float32))
    top, left = (height - ink.shape[0]) // 2, (width - ink.shape[1]) // 3
    region = canvas[top : top + ink.shape[0], left : left + ink.shape[1]]
    region -= (region - ink_level) * ink
    if light is not None:
        canvas *= light
    canvas += rng.normal(0.0, 0.015, size).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(canvas * 255, 0, 255).astype(np.uint8), "L").save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def enlarged(digit: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC), np.float32) / 255.0


def test_a_thin_one_in_a_large_photo_is_taken(heldout_sample) -> None:
    """A fine-pen "1" covers less than 0.5% of the photo: its contrast was measured on paper and refused."""
    x, y = heldout_sample
    one = x[np.flatnonzero(y == 1)[0]]
    stroke = np.asarray(Image.fromarray(one).filter(ImageFilter.MinFilter(3)), np.uint8)  # a fine pen
    photo = photo_of(enlarged(stroke, 260), paper=0.85, ink_level=0.15, seed=3, size=(1200, 900))
    assert correlation(prepared(photo), one / 255.0) > 0.6


def test_a_thin_one_by_a_renderer_is_taken(heldout_sample) -> None:
    x, y = heldout_sample
    digit = x[32]
    assert y[32] == 1
    photo = render(digit / 255.0, "pencil_lamp", np.random.default_rng(0))  # refused as "contrast too low" before
    assert correlation(prepared(photo), digit / 255.0) > 0.6


@pytest.mark.parametrize("paper", [0.42, 0.5])
def test_dark_ink_on_dark_kraft_paper_is_inverted(heldout_sample, paper: float) -> None:
    """Kraft paper darker than mid-grey (in shade) still carries darker ink: white-on-black comes out."""
    x, _ = heldout_sample
    for digit in x[:5]:
        photo = photo_of(enlarged(digit, 200), paper=paper, ink_level=0.04, seed=1, size=(360, 480))
        assert correlation(prepared(photo), digit / 255.0) > 0.7


def test_light_ink_on_a_dark_board_is_not_inverted(heldout_sample) -> None:
    x, _ = heldout_sample
    for digit in x[:5]:
        photo = photo_of(enlarged(digit, 200), paper=0.2, ink_level=0.9, seed=2, size=(360, 480))
        assert correlation(prepared(photo), digit / 255.0) > 0.7


def test_thick_marker_strokes_come_out_solid(heldout_sample) -> None:
    """A felt marker's stroke is wider than half a lighting tile: the tile's median is ink, not paper."""
    x, _ = heldout_sample
    for digit in x[:8]:
        marker = np.asarray(Image.fromarray(digit).filter(ImageFilter.MaxFilter(3)), np.uint8)
        photo = photo_of(enlarged(marker, 330), paper=0.8, ink_level=0.05, seed=4, size=(400, 400))
        solid = prepared(digit_png(marker))  # the same strokes as a clean image: no lighting to estimate
        assert correlation(prepared(photo), solid) > 0.9


def test_thick_marker_strokes_by_a_renderer_come_out_solid(heldout_sample) -> None:
    x, _ = heldout_sample
    rng = np.random.default_rng(7)
    scores = []
    for digit in x[:40]:
        marker = np.asarray(Image.fromarray(digit).filter(ImageFilter.MaxFilter(3)), np.uint8)
        scores.append(correlation(prepared(render(digit / 255.0, "marker_kraft", rng)), prepared(digit_png(marker))))
    assert np.percentile(scores, 10) > 0.85 and min(scores) > 0.8


def test_a_speck_of_dirt_does_not_shrink_the_digit(heldout_sample) -> None:
    digit = heldout_sample[0][12]
    ink = np.zeros((160, 160), np.float32)
    ink[20:120, 20:120] = enlarged(digit, 100)
    clean = photo_of(ink, paper=0.9, ink_level=0.1, seed=5, size=(160, 160))
    ink[150, 150] = 1.0  # one dark pixel in the corner of the paper
    specked = photo_of(ink, paper=0.9, ink_level=0.1, seed=5, size=(160, 160))
    assert correlation(prepared(specked), prepared(clean)) > 0.98


def ink_box(tensor: np.ndarray) -> np.ndarray:
    """Top, bottom, left and right of the prepared digit's ink."""
    rows, cols = np.flatnonzero(tensor.max(axis=1) > 0.1), np.flatnonzero(tensor.max(axis=0) > 0.1)
    return np.asarray([rows[0], rows[-1], cols[0], cols[-1]])


@pytest.mark.parametrize("angle", [0.0, 0.5, 1.9, 3.3])
def test_a_cast_shadows_edge_is_not_cropped_with_the_digit(heldout_sample, angle: float) -> None:
    """A sharp straight shadow edge crossing the frame beside the digit, the far side 35% darker: the tile grid
    is interpolated across it, and the band it leaves on the dark side was taken for ink and cropped with the
    digit, which came out a few pixels tall."""
    x, _ = heldout_sample
    height, width = 480, 360
    rows = np.arange(height, dtype=np.float32)[:, np.newaxis] / height - 0.5
    cols = np.arange(width, dtype=np.float32)[np.newaxis, :] / width - 0.5
    edge = np.cos(angle) * cols + np.sin(angle) * rows + 0.3  # 0.3 of the frame from its centre
    light = 1.0 - 0.35 / (1.0 + np.exp(-np.clip(edge / 0.004, -30.0, 30.0)))
    for digit in x[:6]:
        ink = enlarged(digit, 150)
        clean = prepared(photo_of(ink, paper=0.9, ink_level=0.1, seed=6, size=(height, width)))
        shadowed = prepared(photo_of(ink, paper=0.9, ink_level=0.1, seed=6, size=(height, width), light=light))
        assert np.abs(ink_box(shadowed) - ink_box(clean)).max() <= 2 and correlation(shadowed, clean) > 0.85


@pytest.mark.parametrize("side", ["left", "top", "right", "bottom"])
def test_a_page_edge_is_not_cropped_with_the_digit(heldout_sample, side: str) -> None:
    """The page photographed on a darker table that shows beyond one of its sides (15% of the frame)."""
    x, _ = heldout_sample
    height, width = 400, 400
    light = np.ones((height, width), np.float32)
    band = {"left": np.s_[:, :60], "top": np.s_[:60, :], "right": np.s_[:, -60:], "bottom": np.s_[-60:, :]}[side]
    light[band] = 0.45
    for digit in x[:6]:
        ink = enlarged(digit, 140)
        clean = prepared(photo_of(ink, paper=0.9, ink_level=0.1, seed=7, size=(height, width)))
        on_table = prepared(photo_of(ink, paper=0.9, ink_level=0.1, seed=7, size=(height, width), light=light))
        assert np.abs(ink_box(on_table) - ink_box(clean)).max() <= 2 and correlation(on_table, clean) > 0.9


def beyond_two_sides(size: tuple[int, int], level: float) -> np.ndarray:
    """A light field: ``level`` over the top and left 30% of the frame (a table beyond two sides of the page,
    over most of the frame's border), 1 elsewhere."""
    light = np.ones(size, np.float32)
    light[: int(0.3 * size[0])] = level
    light[:, : int(0.3 * size[1])] = level
    return light


@pytest.mark.parametrize(
    ("paper", "ink_level", "surround", "seed"),
    [(0.9, 0.1, 0.45, 8), (0.2, 0.9, 3.5, 9)],
    ids=["dark ink, a darker table", "light ink on a board, a lighter wall"],
)
def test_the_ink_keeps_its_polarity_with_something_else_over_most_of_the_border(
    heldout_sample, paper: float, ink_level: float, surround: float, seed: int
) -> None:
    """The border's median is the table's (the wall's), nearer the ink than the paper: the photo was inverted
    (dark ink on a page on a table: correlations 0.25-0.47 then)."""
    x, _ = heldout_sample
    size = (400, 360)
    light = beyond_two_sides(size, surround)
    scores = []
    for digit in x[:6]:
        ink = enlarged(digit, 140)
        clean = prepared(photo_of(ink, paper=paper, ink_level=ink_level, seed=seed, size=size))
        beside = prepared(photo_of(ink, paper=paper, ink_level=ink_level, seed=seed, size=size, light=light))
        scores.append(correlation(beside, clean))
    assert min(scores) > 0.6 and np.median(scores) > 0.85


def test_a_digit_cropped_against_the_frame_is_kept(heldout_sample) -> None:
    """A long digit touching the frame's top and bottom (a tight crop) is kept whole: it is the only mark."""
    x, y = heldout_sample
    for digit in (x[np.flatnonzero(y == 1)[0]], x[np.flatnonzero(y == 7)[0]], x[np.flatnonzero(y == 4)[0]]):
        rows = np.flatnonzero(digit.max(axis=1))
        tight = Image.fromarray(np.ascontiguousarray(digit[rows[0] : rows[-1] + 1]))
        ink = np.asarray(tight.resize((tight.width * 8, tight.height * 8), Image.Resampling.BICUBIC), np.float32)
        cropped = prepared(photo_of(ink / 255.0, paper=0.9, ink_level=0.1, seed=8, size=(ink.shape[0], 300)))
        assert correlation(cropped, prepared(digit_png(digit))) > 0.9


def test_a_small_digit_touching_its_border_is_kept(heldout_sample) -> None:
    """A 28 x 28 digit that reaches the top of its picture, with one stray pixel of ink inside its box: a
    picture this small has no lighting edges, and the digit is not taken for one (it was dropped, and the
    photo refused as blank: the stray pixel alone is a speck of noise)."""
    x, _ = heldout_sample
    tried = 0
    for digit in x[:100]:
        touching = np.roll(digit, -int(np.flatnonzero(digit.max(axis=1))[0]), axis=0)
        rows, cols = np.flatnonzero(touching.max(axis=1)), np.flatnonzero(touching.max(axis=0))
        clear = [  # inside the digit's box, five pixels away from its ink (a separate mark)
            (r, c)
            for r in range(rows[0], rows[-1] + 1)
            for c in range(cols[0], cols[-1] + 1)
            if not touching[max(0, r - 5) : r + 6, max(0, c - 5) : c + 6].any()
        ]
        if clear:
            specked = touching.copy()
            specked[clear[len(clear) // 2]] = 255
            assert correlation(prepared(digit_png(specked)), prepared(digit_png(touching))) > 0.9
            tried += 1
    assert tried >= 5


@pytest.mark.parametrize("crop_shape", [(97, 41), (20, 13), (160, 3), (7, 150), (33, 33)])
def test_the_crop_is_resized_as_pillows_lanczos_does(crop_shape: tuple[int, int]) -> None:
    """The matrix form of the crop's Lanczos resize gives Pillow's pixels (float32, to rounding)."""
    from gateway.preprocess.digits import BOX, _lanczos_resize

    crop = np.random.default_rng(sum(crop_shape)).random(crop_shape, dtype=np.float32)
    height, width = crop_shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    expected = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
    got = _lanczos_resize(crop, size)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_otsus_threshold_is_the_between_class_maximum_on_the_bins() -> None:
    """OpenCV's Otsu on the bin numbers picks the split that maximises the between-class variance of the
    bins' centres, the criterion written out here."""
    from gateway.preprocess.digits import OTSU_BINS, _otsu_threshold

    rng = np.random.default_rng(3)
    for _ in range(20):
        values = np.clip(
            np.concatenate([rng.normal(rng.uniform(0.05, 0.3), 0.05, 3000), rng.normal(0.8, 0.1, 400)]), 0, 1
        ).astype(np.float32)
        bins = np.minimum((values * np.float32(OTSU_BINS)).astype(np.int64), OTSU_BINS - 1)
        weights = np.bincount(bins, minlength=OTSU_BINS).astype(np.float64)
        centres = (np.arange(OTSU_BINS) + 0.5) / OTSU_BINS
        below = np.cumsum(weights)
        above = below[-1] - below
        mean_below = np.cumsum(weights * centres) / np.maximum(below, 1)
        mean_above = (np.sum(weights * centres) - np.cumsum(weights * centres)) / np.maximum(above, 1)
        between = np.where((below > 0) & (above > 0), below * above * (mean_below - mean_above) ** 2, 0)
        assert _otsu_threshold(values) == pytest.approx((int(np.argmax(between)) + 1) / OTSU_BINS)
