"""Mask codecs: COCO RLE (pycocotools-compatible), bit-packed rows, PNG."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import cv2
import numpy as np


class MaskEncoding(StrEnum):
    RLE = "rle"
    BITPACK = "bitpack"
    PNG = "png"


class MaskCodecError(ValueError):
    pass


def _as_mask(mask: np.ndarray) -> np.ndarray:
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        raise MaskCodecError(f"a mask must be a 2-D array, got {getattr(mask, 'shape', mask)!r}")
    if mask.dtype == bool:
        return mask
    if mask.dtype == np.uint8 and mask.max(initial=0) <= 1:
        return mask.astype(bool)
    raise MaskCodecError(f"a mask must be bool or 0/1 uint8, got {mask.dtype}")


def rle_counts(mask: np.ndarray) -> list[int]:
    """Run lengths over the column-major pixels, starting with a run of zeros."""
    flat = _as_mask(mask).ravel(order="F")
    if flat.size == 0:
        return []
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    return [0, *counts] if flat[0] else counts


def _counts_to_string(counts: list[int]) -> str:
    out = bytearray()
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        while True:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(c + 48)
            if not more:
                break
    return out.decode("ascii")


def _string_to_counts(s: str) -> list[int]:
    counts: list[int] = []
    i = 0
    try:
        data = s.encode("ascii")
    except UnicodeEncodeError:
        raise MaskCodecError("RLE counts must be ASCII") from None
    while i < len(data):
        x, k, more = 0, 0, True
        while more:
            if i >= len(data):
                raise MaskCodecError("RLE string ends inside a number")
            c = data[i] - 48
            if not 0 <= c < 64:
                raise MaskCodecError(f"invalid RLE character {chr(data[i])!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            i += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    m = _as_mask(mask)
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": _counts_to_string(rle_counts(m))}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    try:
        h, w = (int(v) for v in rle["size"])
        raw = rle["counts"]
    except (KeyError, TypeError, ValueError) as exc:
        raise MaskCodecError(f"RLE must be {{'size': [h, w], 'counts': ...}}: {exc}") from None
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", errors="replace")
    counts = _string_to_counts(raw) if isinstance(raw, str) else [int(c) for c in raw]
    if any(c < 0 for c in counts) or sum(counts) != h * w:
        raise MaskCodecError(f"RLE counts cover {sum(counts)} pixels, the mask has {h * w}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T.copy() if h and w else np.zeros((h, w), bool)


def encode_mask(mask: np.ndarray, encoding: MaskEncoding | str) -> bytes:
    m = _as_mask(mask)
    enc = MaskEncoding(encoding)
    if enc is MaskEncoding.RLE:
        return str(rle_encode(m)["counts"]).encode("ascii")
    if enc is MaskEncoding.BITPACK:
        return np.packbits(m, axis=None).tobytes()
    ok, png = cv2.imencode(".png", m.astype(np.uint8) * 255, [cv2.IMWRITE_PNG_BILEVEL, 1])
    if not ok:
        raise MaskCodecError("PNG encoding failed")
    return png.tobytes()


def decode_mask(data: bytes, encoding: MaskEncoding | str, height: int, width: int) -> np.ndarray:
    enc = MaskEncoding(encoding)
    if enc is MaskEncoding.RLE:
        return rle_decode({"size": [height, width], "counts": data.decode("ascii", "replace")})
    if enc is MaskEncoding.BITPACK:
        needed = (height * width + 7) // 8
        if len(data) != needed:
            raise MaskCodecError(f"bit-packed mask has {len(data)} bytes, expected {needed}")
        bits = np.unpackbits(np.frombuffer(data, np.uint8), count=height * width)
        return bits.reshape(height, width).astype(bool)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None or image.shape != (height, width):
        raise MaskCodecError(f"PNG mask is not a {width}x{height} grayscale image")
    return image > 127


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) with exclusive ends; None for an empty mask."""
    m = _as_mask(mask)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
