"""Turn a photo of a handwritten digit into an MNIST-style 28 x 28 input.

MNIST digits are white ink on black, size-normalised to fit a 20 x 20 box (keeping the
aspect ratio) and placed in a 28 x 28 field so that their centre of mass is at the
centre. A phone photo is dark ink on light, unevenly lit paper, any size. The steps
below undo that difference: grey, tell ink from paper, flatten the lighting, crop to
the ink, fit into 20 x 20, centre by mass.

The photo is reduced to the working size in uint8; the analysis after that runs on at
most 160 x 160 float pixels, in a few whole-array passes (OpenCV and numpy, which
release the GIL for the large ones), so that preparing a digit costs a small fraction
of decoding its photo.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
from PIL import Image

from gateway.core.errors import InvalidInput

FIELD = 28
BOX = 20
WORK_SIDE = 160
"""Photos are reduced to at most this side before analysis: plenty for one digit that ends up 20 px tall."""
GRID = 8
"""The lighting is estimated on a GRID x GRID grid of tiles."""
BORDER_QUANTILES = (0.1, 0.5, 0.9)
"""The border's levels that must agree on the ink's polarity (see _ink_is_dark)."""
POLARITY_GRID = 6
"""Otherwise it is judged against the medians of a grid coarser than the lighting's (fewer tiles under a stroke)."""
POLARITY_SHARE = 0.005
"""The share of pixels furthest from the paper's local level, below it and above it, that the polarity compares."""
EXTREME = 0.001
"""The darkest and lightest 0.1% of a photo: ink at one end, paper at the other (a thin "1" is more than that)."""
OTSU_BINS = 64
_OTSU_EDGES = np.linspace(0.0, 1.0, OTSU_BINS + 1)
_GRID_KERNEL = np.ones((3, 3), np.uint8)
_GROUPING_KERNEL = np.ones((5, 5), np.uint8)
OPENING_FRACTION = 10
"""The lighting's sharp edges are followed by an opening whose square side is 1 / OPENING_FRACTION of the short side."""
LONG_MARK = 0.4
"""A mark touching the frame's border at least this long (a share of the short side) is a shadow's or a page's edge."""
KEPT_MARK = 0.01
"""Marks at the border are dropped only when a mark of at least this share of the frame's area lies inside it."""
SMALL_MARK = 8
"""A mark at the border less than 1 / SMALL_MARK of the largest mark inside is not part of the digit."""


def _grey_pixels(photo: Image.Image | np.ndarray) -> np.ndarray:
    """uint8 [height, width] grey pixels of a decoded photo (the gateway hands over arrays already grey)."""
    if isinstance(photo, np.ndarray):
        return photo if photo.ndim == 2 else cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    return np.asarray(photo if photo.mode == "L" else photo.convert("L"))


def _to_work_array(grey: np.ndarray) -> np.ndarray:
    """Reduced (box filter) to at most WORK_SIDE on the long side, still uint8."""
    height, width = grey.shape
    scale = WORK_SIDE / max(width, height)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        grey = np.ascontiguousarray(grey)
        reduced = Image.frombuffer("L", (width, height), grey, "raw", "L", 0, 1).resize(size, Image.Resampling.BOX)
        grey = np.frombuffer(reduced.tobytes(), np.uint8).reshape(size[1], size[0])  # (no __array_interface__)
    return grey


def _rank(count: int, q: float) -> int:
    """The position of quantile ``q`` among ``count`` sorted values (the lower one, as np.partition is asked)."""
    return min(count - 1, int(q * (count - 1)))


def _median(values: np.ndarray) -> float:
    """The lower median of ``values`` (any shape), by one partition."""
    middle = _rank(values.size, 0.5)
    return float(np.partition(values.ravel(), middle)[middle])


def _histogram(pixels: np.ndarray) -> np.ndarray:
    """Cumulative counts of the 256 grey levels of uint8 ``pixels``."""
    return np.cumsum(cv2.calcHist([pixels], [0], None, [256], [0, 256]).ravel())


def _level_at(cumulative: np.ndarray, rank: int) -> int:
    """The grey level at position ``rank`` of the sorted pixels, from their cumulative histogram."""
    return int(np.searchsorted(cumulative, rank, side="right"))


def _ink_is_dark(pixels: np.ndarray) -> bool:
    """Dark ink on light paper, or light ink (a chalk board, an MNIST digit) on dark?

    Paper dominates the border of a photo, and the ink is the far end of the photo's range from it.
    When the border is not all paper (a table beyond the page, a shadow over it), its low, middle and
    high levels (BORDER_QUANTILES) disagree on which end that is, and the ink is judged against the
    paper around it instead (``_ink_is_dark_locally``). A picture too small for a tile grid is judged
    by the border's median alone.
    """
    votes = _border_votes(pixels)
    if min(pixels.shape) < GRID * 4:
        return votes[BORDER_QUANTILES.index(0.5)]
    return votes[0] if len(set(votes)) == 1 else _ink_is_dark_locally(pixels)


def _border_votes(pixels: np.ndarray) -> tuple[bool, ...]:
    """Per quantile of BORDER_QUANTILES: is the border's level at it nearer the lightest pixels than the darkest?
    (Not "lighter than mid-grey": dark kraft paper under a shadow is darker than that and still carries
    darker ink.)"""
    height, width = pixels.shape
    whole = _histogram(pixels)
    band = max(1, min(height, width) // 10)
    inside = pixels[band : height - band, band : width - band]
    border = whole - _histogram(inside) if inside.size else whole  # the counts are whole numbers: exact
    darkest = _level_at(whole, _rank(pixels.size, EXTREME))
    lightest = _level_at(whole, pixels.size - 1 - _rank(pixels.size, EXTREME))
    levels = (_level_at(border, _rank(pixels.size - inside.size, q)) for q in BORDER_QUANTILES)
    return tuple(level - darkest > lightest - level for level in levels)


def _ink_is_dark_locally(pixels: np.ndarray) -> bool:
    """Ink is what stands out furthest from the paper around it: each pixel is compared with its tile's
    median on a POLARITY_GRID grid, interpolated (the paper's local level, as the lighting is estimated), and
    the ink is dark when the POLARITY_SHARE of pixels furthest below that level lie further from it than those
    furthest above. A shadow's or a table's edge strays both ways about alike; the ink adds one side. (Only
    where the border's levels disagree: a thick digit filling the frame puts ink under whole tiles' medians.)"""
    height, width = pixels.shape
    medians = _tile_medians(_tiles(pixels, POLARITY_GRID)).astype(np.float32)
    paper = cv2.resize(medians, (width, height), interpolation=cv2.INTER_LINEAR)
    deviation = np.subtract(pixels, paper, dtype=np.float32).ravel()
    furthest = (_rank(deviation.size, POLARITY_SHARE), deviation.size - 1 - _rank(deviation.size, POLARITY_SHARE))
    below, above = np.partition(deviation, furthest)[list(furthest)]
    return bool(-below > above)


def _tiles(values: np.ndarray, grid: int) -> np.ndarray:
    """[grid, grid, n]: the ``grid`` x ``grid`` tiles of a 2-D array (the last rows and columns that do not fill a
    tile left out), each flattened."""
    height, width = values.shape
    tile_h, tile_w = height // grid, width // grid
    tiles = values[: tile_h * grid, : tile_w * grid].reshape(grid, tile_h, grid, tile_w).swapaxes(1, 2)
    return tiles.reshape(grid, grid, -1)


def _tile_medians(tiles: np.ndarray) -> np.ndarray:
    """[grid, grid]: the lower median of each tile of ``_tiles``, by one partition."""
    middle = _rank(tiles.shape[-1], 0.5)
    return np.partition(tiles, middle, axis=-1)[..., middle]


_LIGHT_INK = np.arange(256, dtype=np.uint8).astype(np.float32) * np.float32(1 / 255)
_DARK_INK = np.float32(1) - _LIGHT_INK
"""Ink per grey level, float32: level / 255 for light ink, 1.0 - level / 255 for dark ink (one lookup pass)."""


def _ink_lut(dark: bool) -> np.ndarray:
    return _DARK_INK if dark else _LIGHT_INK


def _ink_layer(pixels: np.ndarray, dark: bool) -> np.ndarray:
    """float32 ink in [0, 1]: 1.0 - pixel / 255 for dark ink (pixel / 255 for light ink)."""
    return cv2.LUT(pixels, _ink_lut(dark))


def _paper_grid(ink: np.ndarray) -> np.ndarray:
    """The paper's ink level per tile: the tile's median, unless the tile is mostly ink.

    A tile covered by more than half of a thick marker stroke has a median of ink, which
    would hollow the stroke out. Such a tile stands out above its neighbours on the grid
    (by more than half of the ink's contrast; lighting never changes that much from
    one tile to the next): it takes the grid's morphological opening there, the paper
    level of the tiles around it.
    """
    tiles = _tiles(ink, GRID)
    medians = _tile_medians(tiles)  # (numpy partitions float32 faster than uint8)
    peaks = tiles.max(axis=-1)
    opened = cv2.dilate(cv2.erode(medians, _GRID_KERNEL), _GRID_KERNEL)
    contrast = float((peaks - opened).max())
    return np.where(medians - opened > 0.5 * contrast, opened, medians)


def _follow_sharp_edges(ink: np.ndarray, background: np.ndarray, pixels: np.ndarray, dark: bool) -> None:
    """Raise the interpolated ``background`` to the paper's level along a sharp edge of the lighting, in place.

    The tile grid is interpolated across a sharp edge (a cast shadow's, the table's beyond the page),
    so on its dark side the paper comes out darker than the grid says: a band of "ink" that the crop
    would take with the digit. The ink layer's grey opening removes every mark narrower than its
    square and keeps a wider region's level up to its edge, however sharp; elsewhere it lies below the
    grid (by about the noise's spread). Where it is above the grid in a long region that comes near the
    frame's border, as along a shadow's or a table's edge, it is the paper's level; a marker stroke wider
    than the square, inside the frame, keeps the grid's; the square is wider than the widest stroke.

    ``ink`` is ``pixels`` (uint8) through a monotone lookup, and an opening commutes with one (a closing
    under a decreasing one): it is taken on the uint8 pixels, a quarter of the float's work, the same values.
    """
    side = max(min(ink.shape) // OPENING_FRACTION, _widest_stroke(ink, background) + 2) | 1
    square = cv2.getStructuringElement(cv2.MORPH_RECT, (side, side))
    opened = cv2.LUT(cv2.morphologyEx(pixels, cv2.MORPH_CLOSE if dark else cv2.MORPH_OPEN, square), _ink_lut(dark))
    above = cv2.compare(opened, background, cv2.CMP_GT)
    margin = side // 3
    if cv2.countNonZero(above) < LONG_MARK * min(ink.shape) or not _reaches_border(above, margin):
        return  # no region of it can be long (one spans at most as many pixels as it has) or at the border
    _, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=4)
    edges = _at_border(stats[1:], ink.shape, margin) & _long(stats[1:], ink.shape)
    if edges.any():
        raised = np.concatenate([[False], edges])[labels]
        background[raised] = opened[raised]


def _reaches_border(mask: np.ndarray, margin: int) -> bool:
    """Whether ``mask`` has a pixel within ``margin`` of the frame's border (as ``_at_border`` tells a component)."""
    band = margin + 1
    return bool(mask[:band].any() or mask[-band:].any() or mask[:, :band].any() or mask[:, -band:].any())


def _widest_stroke(ink: np.ndarray, background: np.ndarray) -> int:
    """The width of the widest stroke, in pixels, where the ink stands out from ``background`` by more than
    half its contrast (twice the largest distance inside it to paper; a shadow's band is fainter)."""
    above = np.subtract(ink, background)
    strong = cv2.compare(above, 0.5 * float(above.max()), cv2.CMP_GT)
    return int(2 * cv2.distanceTransform(strong, cv2.DIST_L2, 3).max())


def _at_border(stats: np.ndarray, shape: tuple[int, int], margin: int) -> np.ndarray:
    """Which components (OpenCV's stats, without the background's row) come within ``margin`` of the frame's border."""
    height, width = shape
    left, top, wide, tall = (stats[:, i] for i in range(4))
    return (left <= margin) | (top <= margin) | (left + wide >= width - margin) | (top + tall >= height - margin)


def _long(stats: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Which components span at least LONG_MARK of the frame's short side: what a straight edge across it leaves."""
    return np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]) >= LONG_MARK * min(shape)


def _flatten_lighting(pixels: np.ndarray, dark: bool) -> np.ndarray:
    """The ink layer of ``pixels`` less a smooth estimate of the paper's brightness (per-tile level, interpolated)."""
    ink = _ink_layer(pixels, dark)
    height, width = ink.shape
    if min(height, width) < GRID * 4:
        background = _median(ink)
    else:
        background = cv2.resize(_paper_grid(ink), (width, height), interpolation=cv2.INTER_LINEAR)
        _follow_sharp_edges(ink, background, pixels, dark)
    np.subtract(ink, background, out=ink)
    return np.maximum(ink, np.float32(0), out=ink)


def _ink_peak(ink: np.ndarray) -> float:
    """The ink's full strength: its lightest 0.5% (a stroke's core) -- or, for a digit thinner than that
    (a fine "1" in a large frame, whose lightest 0.5% is partly paper), half of its lightest 0.1%."""
    usual, thin = _top_order_statistics(ink.ravel(), (_rank(ink.size, 0.995), _rank(ink.size, 1 - EXTREME)))
    return max(usual, 0.5 * thin)


def _top_order_statistics(values: np.ndarray, ranks: tuple[int, ...]) -> list[float]:
    """The values at positions ``ranks`` of the sorted ``values``, for ranks in the top few percent.

    Only the values above a cut are sorted, a few hundred instead of a partition of all: the cut is
    estimated a little below the lowest rank on every 8th value; the values below it and equal to it
    are counted, so the answer is exact whatever the estimate (and the rare cut above the rank is dropped).
    """
    lowest = min(ranks)
    sample = values[::8]
    position = max(0, int((lowest / values.size - 0.01) * (sample.size - 1)))
    cut = np.partition(sample, position)[position]
    if np.count_nonzero(values < cut) > lowest:
        return [float(value) for value in np.partition(values, ranks)[list(ranks)]]
    above = np.sort(values[values > cut])
    not_above = values.size - above.size
    return [float(above[rank - not_above]) if rank >= not_above else float(cut) for rank in ranks]


def _otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of ``values`` in [0, 1], on OTSU_BINS bins (a value of exactly 1.0 in the last).

    OpenCV's Otsu on the bin numbers (0 to OTSU_BINS - 1 as grey levels): the class split is the same as
    on the bins' centres, as Otsu's criterion does not change under a shift and scale of the values.
    """
    bins = np.multiply(values, np.float32(OTSU_BINS)).astype(np.uint8)  # exact scaling, then floor
    np.minimum(bins, np.uint8(OTSU_BINS - 1), out=bins)
    last_below, _ = cv2.threshold(bins, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return float(_OTSU_EDGES[int(last_below) + 1])


def _drop_border_edges(ink: np.ndarray) -> None:
    """Zero the marks at the frame's border that are not part of a digit inside it, in place.

    What is left of a shadow's or a page's edge after the lighting is flattened is a long faint trace
    that runs into the border of the frame (a straight edge crosses it), or a small piece of one in a
    corner; a digit usually lies inside the frame. Marks at the border are dropped when they are long
    or small beside the largest mark inside (less than 1 / SMALL_MARK of it); a 5's detached top at the
    border is kept, and so is everything when no mark of at least KEPT_MARK of the frame lies inside
    (a digit cropped tight against the border, with specks of noise beside it).
    """
    inked = (ink > 0).view(np.uint8)
    reach = _GROUPING_KERNEL.shape[0] // 2 + 1  # ink this close to the border is at it once grouped
    if not _reaches_border(inked, reach - 1):
        return
    grouped = cv2.dilate(inked, _GROUPING_KERNEL)  # an edge's faint trace comes in pieces
    _, labels, stats, _ = cv2.connectedComponentsWithStats(grouped, connectivity=8)
    at_border = _at_border(stats[1:], ink.shape, 0)
    area = stats[1:, cv2.CC_STAT_AREA]
    inside = area[~at_border].max(initial=0)
    if inside < KEPT_MARK * ink.size:
        return
    dropped = at_border & (_long(stats[1:], ink.shape) | (area * SMALL_MARK < inside))
    if dropped.any():
        ink[np.concatenate([[False], dropped])[labels]] = 0


def _ink_bounding_box(ink: np.ndarray) -> tuple[int, int, int, int]:
    """Rows and columns where ink is present, ignoring specks of noise: a pixel of ink with no ink around
    it (a grain of the paper, sensor noise) would otherwise stretch the box and shrink the digit."""
    inked = (ink > 0).view(np.uint8)
    around = cv2.boxFilter(inked, -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
    mask = cv2.bitwise_and(cv2.compare(around, 1, cv2.CMP_GT), inked)  # 1 where an ink pixel has ink around
    rows = np.flatnonzero(cv2.reduce(mask, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S) >= max(1, mask.shape[1] // 200))
    cols = np.flatnonzero(cv2.reduce(mask, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S) >= max(1, mask.shape[0] // 200))
    if rows.size == 0 or cols.size == 0:
        raise InvalidInput("no digit found in the photo: it looks blank (no ink stands out from the paper)")
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _lanczos(x: float) -> float:
    """Pillow's Lanczos (a = 3) kernel, evaluated as its C code does."""
    if not -3.0 <= x < 3.0:
        return 0.0
    if x == 0.0:
        return 1.0
    return math.sin(math.pi * x) / (math.pi * x) * (math.sin(x / 3 * math.pi) / (x / 3 * math.pi))


@functools.lru_cache(maxsize=512)
def _lanczos_weights(in_size: int, out_size: int) -> np.ndarray:
    """float64 [out_size, in_size]: Pillow's antialiased Lanczos resampling of one axis as a matrix, with
    its coefficients computed as Pillow computes them (``precompute_coeffs`` in Resample.c)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    weights = np.zeros((out_size, in_size))
    for out in range(out_size):
        centre = (out + 0.5) * scale
        first = max(int(centre - support + 0.5), 0)
        last = min(int(centre + support + 0.5), in_size)
        taps = [_lanczos((x + first - centre + 0.5) / filterscale) for x in range(last - first)]
        total = 0.0
        for tap in taps:
            total += tap
        weights[out, first:last] = [tap / total for tap in taps] if total != 0.0 else taps
    return weights


def _lanczos_resize(crop: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 ``crop`` resized to ``size`` (width, height) as Pillow's LANCZOS resize of a float image does
    (the horizontal pass first, each pass accumulated in double and stored as float32), by two small matrix
    products instead of a round trip through Pillow."""
    height, width = crop.shape
    out = crop
    if size[0] != width:
        out = (out.astype(np.float64) @ _lanczos_weights(width, size[0]).T).astype(np.float32)
    if size[1] != height:
        out = (_lanczos_weights(height, size[1]) @ out.astype(np.float64)).astype(np.float32)
    return np.ascontiguousarray(out, dtype=np.float32)


def _centre_by_mass(digit: np.ndarray) -> np.ndarray:
    field = np.zeros((FIELD, FIELD), np.float32)
    height, width = digit.shape
    moments = cv2.moments(digit)
    total = moments["m00"]
    centre_row = moments["m01"] / total if total else height / 2
    centre_col = moments["m10"] / total if total else width / 2
    top = int(round(FIELD / 2 - centre_row))
    left = int(round(FIELD / 2 - centre_col))
    top = min(max(top, 0), FIELD - height)
    left = min(max(left, 0), FIELD - width)
    field[top : top + height, left : left + width] = digit
    return field


def _normalise(digit: np.ndarray) -> np.ndarray:
    """Scale so the median ink pixel is 1.0: MNIST strokes are saturated at their core.

    Chosen so prepared photos match the training digits' mean intensity and contrast
    (0.132 / 0.309 against 0.134 / 0.306 on the held-out sample), which is what the skew
    monitor compares.
    """
    peak = float(digit.max())
    if peak <= 0:
        return digit
    ink = digit[digit > 0.1 * peak]
    digit = np.divide(digit, np.float32(_median(ink)))  # the digit is >= 0 already: only the top is clipped
    return np.minimum(digit, np.float32(1), out=digit)


def prepare_digit(photo: Image.Image | np.ndarray) -> np.ndarray:
    """Return a float32 [1, 28, 28] array in [0, 1], white ink on black, MNIST-style."""
    pixels = _to_work_array(_grey_pixels(photo))
    ink = _flatten_lighting(pixels, _ink_is_dark(pixels))
    peak = _ink_peak(ink)
    if peak < 0.08:
        raise InvalidInput("no digit found in the photo: the contrast between ink and paper is too low")
    np.divide(ink, np.float32(peak), out=ink)
    ink = np.minimum(ink, np.float32(1), out=ink)
    threshold = np.nextafter(np.float32(_otsu_threshold(ink) * 0.5), np.float32(0))
    cv2.threshold(ink, float(threshold), 0, cv2.THRESH_TOZERO, dst=ink)  # keeps ink >= half Otsu's threshold
    if min(ink.shape) >= GRID * 4:  # (a smaller picture's lighting is flat: one level, no edges)
        _drop_border_edges(ink)
    top, bottom, left, right = _ink_bounding_box(ink)
    crop = ink[top:bottom, left:right]
    height, width = crop.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    digit = _lanczos_resize(crop, size)
    return _centre_by_mass(_normalise(np.maximum(digit, np.float32(0))))[np.newaxis]
