"""What the gateway reads from a JPEG's header before decoding it: the frame (size, components) and the EXIF
orientation, without Pillow, so both decode paths (CPU and GPU) decide from the same bytes."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

FRAME_MARKERS = {0xC0, 0xC1, 0xC2}
"""Start-of-frame markers of baseline, extended and progressive Huffman JPEGs (what cameras write)."""
STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD8)}
"""Markers without a length field (TEM, RST0-7)."""


def jpeg_segments(data: bytes) -> Iterator[tuple[int, int]]:
    """(marker, offset of its 0xFF) of each marker segment with a length, from after the SOI up to and
    including the first scan (SOS) or end of image (EOI); fill bytes and markers without a length are
    stepped over. Stops where no marker follows a segment (not a JPEG there, or a file cut short)."""
    position, end = 2, len(data)
    while position + 4 <= end and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in STANDALONE_MARKERS:
            position += 2
            continue
        yield marker, position
        if marker in (0xD9, 0xDA):
            return
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")


def jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from the frame header of an 8-bit Huffman JPEG, read without Pillow;
    None for anything else (other formats, other JPEG flavours, a header cut short): Pillow's path then
    reads it, and refuses it with the precise reason if it must."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    for marker, position in jpeg_segments(data):
        if marker in FRAME_MARKERS:
            if position + 10 > len(data) or data[position + 4] != 8:
                return None
            height = int.from_bytes(data[position + 5 : position + 7], "big")
            width = int.from_bytes(data[position + 7 : position + 9], "big")
            return width, height, data[position + 9]
        if 0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xCC) or marker in (0xD9, 0xDA):
            return None  # another frame type (lossless, arithmetic, hierarchical), or scan data before a frame
    return None


ORIENTATIONS: dict[int, tuple[str, ...]] = {
    1: (),
    2: ("flip_x",),
    3: ("flip_x", "flip_y"),
    4: ("flip_y",),
    5: ("transpose",),
    6: ("transpose", "flip_x"),
    7: ("transpose", "flip_x", "flip_y"),
    8: ("transpose", "flip_y"),
}
"""EXIF orientation -> the steps that make the stored photo upright (as Pillow's exif_transpose turns it)."""
EXIF_ORIENTATION_TAG = 0x0112


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Decoded ``pixels`` ([H, W] or [H, W, C], as stored) turned upright for their EXIF ``orientation``."""
    for step in ORIENTATIONS[orientation]:
        pixels = pixels.swapaxes(0, 1) if step == "transpose" else np.flip(pixels, 1 if step == "flip_x" else 0)
    return np.ascontiguousarray(pixels)


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of a JPEG; 1 when it has none or it cannot be read."""
    for marker, position in jpeg_segments(data):
        if marker == 0xE1 and data[position + 4 : position + 10] == b"Exif\x00\x00":
            length = int.from_bytes(data[position + 2 : position + 4], "big")
            return _tiff_orientation(data[position + 10 : position + 2 + length])
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    """The orientation tag of IFD0 in an EXIF TIFF block (1 when absent or malformed)."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return 1
    count = int.from_bytes(tiff[ifd : ifd + 2], order)
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        if int.from_bytes(tiff[entry : entry + 2], order) == EXIF_ORIENTATION_TAG:
            value = int.from_bytes(tiff[entry + 8 : entry + 10], order)  # a SHORT, first in its value field
            return value if value in ORIENTATIONS else 1
    return 1
