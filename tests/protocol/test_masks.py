from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from streamseg.protocol.masks import (
    MaskCodecError,
    MaskEncoding,
    decode_mask,
    encode_mask,
    mask_area,
    mask_bbox,
    mask_grid,
    rle_counts,
    rle_decode,
    rle_encode,
    shrink_mask,
)

SHAPES = [(1, 1), (1, 9), (9, 1), (37, 53), (720, 1280)]


def _patterns(shape: tuple[int, int], seed: int = 0) -> Iterator[tuple[str, np.ndarray]]:
    h, w = shape
    rng = np.random.default_rng(seed)
    yield "empty", np.zeros(shape, bool)
    yield "full", np.ones(shape, bool)
    yield "random", rng.random(shape) < 0.3
    yy, xx = np.mgrid[:h, :w]
    yield "blob", (yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (min(h, w) / 3) ** 2
    for y, x in {(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)}:
        one = np.zeros(shape, bool)
        one[y, x] = True
        yield f"pixel {y},{x}", one
        yield f"hole {y},{x}", ~one


CASES = [(shape, name, mask) for shape in SHAPES for name, mask in _patterns(shape)]
IDS = [f"{s[0]}x{s[1]}-{name}" for s, name, _ in CASES]


@pytest.mark.parametrize("encoding", list(MaskEncoding))
@pytest.mark.parametrize(("shape", "name", "mask"), CASES, ids=IDS)
def test_round_trip(
    encoding: MaskEncoding, shape: tuple[int, int], name: str, mask: np.ndarray
) -> None:
    data = encode_mask(mask, encoding)
    assert isinstance(data, bytes)
    out = decode_mask(data, encoding, *shape)
    assert out.dtype == np.bool_ and out.shape == shape
    assert np.array_equal(out, mask)
    assert np.array_equal(rle_decode(rle_encode(mask)), mask)


@pytest.mark.parametrize("encoding", list(MaskEncoding))
def test_accepts_uint8_strided_and_fortran_masks(encoding: MaskEncoding) -> None:
    mask = np.random.default_rng(1).random((40, 60)) < 0.5
    for variant in (mask.astype(np.uint8), mask[::2, ::3], np.asfortranarray(mask), mask.T):
        data = encode_mask(variant, encoding)
        assert np.array_equal(decode_mask(data, encoding, *variant.shape), variant.astype(bool))
    assert encode_mask(mask, encoding.value) == encode_mask(mask, encoding)


def test_known_encodings() -> None:
    """Fixed bytes for a small mask, so a change in any codec's output is noticed."""
    mask = np.zeros((3, 4), bool)
    mask[0:2, 1:3] = True
    # Column-major: 3 zeros, 2 ones, 1 zero, 2 ones, 4 zeros.
    assert rle_counts(mask) == [3, 2, 1, 2, 4]
    # From the fourth count on, each is stored minus the count two before it: 2-2, 4-1.
    assert rle_encode(mask) == {"size": [3, 4], "counts": "32103"}
    assert encode_mask(mask, MaskEncoding.RLE) == b"32103"
    # Row-major bits 0110 0110 0000, padded to 16 bits.
    assert encode_mask(mask, MaskEncoding.BITPACK) == bytes([0b01100110, 0b00000000])
    full = np.ones((2, 2), bool)
    assert rle_counts(full) == [0, 4]


def test_png_is_one_bit_grayscale_readable_by_pillow() -> None:
    mask = np.random.default_rng(2).random((37, 53)) < 0.4
    data = encode_mask(mask, MaskEncoding.PNG)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    bit_depth, colour_type = data[24], data[25]
    assert (bit_depth, colour_type) == (1, 0)
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (53, 37)
        assert np.array_equal(np.asarray(image.convert("L")) > 127, mask)


def _coco() -> Any:
    return pytest.importorskip(
        "pycocotools.mask",
        reason="pycocotools is not installed (dev dependency): COCO RLE byte-compatibility "
        "is unchecked",
    )


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("shape", "name", "mask"), CASES, ids=IDS)
def test_rle_is_byte_compatible_with_pycocotools(
    shape: tuple[int, int], name: str, mask: np.ndarray
) -> None:
    coco = _coco()
    ref = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
    ours = rle_encode(mask)
    assert ours["counts"] == ref["counts"].decode("ascii")
    assert ours["size"] == [int(v) for v in ref["size"]]
    assert encode_mask(mask, MaskEncoding.RLE) == ref["counts"]
    decoded = coco.decode({"size": ours["size"], "counts": ours["counts"].encode()})
    assert np.array_equal(decoded, mask)
    assert np.array_equal(rle_decode(ref), mask)
    assert np.array_equal(decode_mask(ref["counts"], MaskEncoding.RLE, *shape), mask)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_uncompressed_counts_match_pycocotools() -> None:
    coco = _coco()
    mask = np.random.default_rng(3).random((37, 53)) < 0.3
    counts = rle_counts(mask)
    assert np.array_equal(rle_decode({"size": [37, 53], "counts": counts}), mask)
    assert np.array_equal(rle_decode({"size": [37, 53], "counts": np.array(counts)}), mask)
    compressed = coco.frPyObjects({"size": [37, 53], "counts": counts}, 37, 53)
    assert compressed["counts"].decode() == rle_encode(mask)["counts"]


def test_large_counts_round_trip() -> None:
    """Runs long enough to need five 5-bit groups, and deltas of both signs."""
    mask = np.zeros((3000, 3000), bool)
    mask[:, 2000:] = True
    mask[5, 5] = True
    assert np.array_equal(rle_decode(rle_encode(mask)), mask)


def test_mask_bbox_and_area() -> None:
    assert mask_bbox(np.zeros((3, 3), bool)) is None
    assert mask_area(np.zeros((3, 3), bool)) == 0
    assert mask_bbox(np.zeros((0, 3), bool)) is None
    for shape, _, mask in CASES:
        ys, xs = np.nonzero(mask)
        expected = None if ys.size == 0 else (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert mask_bbox(mask) == expected, shape
        assert mask_area(mask) == ys.size
    one = np.zeros((5, 7), np.uint8)
    one[4, 6] = 1
    assert mask_bbox(one) == (6, 4, 7, 5)
    assert mask_area(one) == 1
    box = mask_bbox(np.ones((2, 3), bool))
    assert box == (0, 0, 3, 2) and all(type(v) is int for v in box)


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((2, 2, 2), bool),
        np.zeros(4, bool),
        np.full((2, 2), 7, np.uint8),
        np.zeros((2, 2), np.float32),
        np.zeros((2, 2), np.int64),
        np.zeros((0, 5), bool),
        [[True, False]],
    ],
    ids=["3d", "1d", "uint8-7", "float", "int64", "zero-size", "list"],
)
@pytest.mark.parametrize("encoding", list(MaskEncoding))
def test_bad_masks_raise(mask: Any, encoding: MaskEncoding) -> None:
    with pytest.raises(MaskCodecError):
        encode_mask(mask, encoding)


def test_unknown_encoding_and_bad_size() -> None:
    with pytest.raises(MaskCodecError, match="unknown mask encoding"):
        encode_mask(np.zeros((2, 2), bool), "gif")
    with pytest.raises(MaskCodecError, match="unknown mask encoding"):
        decode_mask(b"", "gif", 2, 2)
    with pytest.raises(MaskCodecError, match="height"):
        decode_mask(b"0", MaskEncoding.RLE, 0, 2)
    with pytest.raises(MaskCodecError, match="width"):
        decode_mask(b"0", MaskEncoding.RLE, 2, True)
    with pytest.raises(MaskCodecError, match="bytes"):
        decode_mask("4", MaskEncoding.RLE, 2, 2)  # type: ignore[arg-type]


def _png(shape: tuple[int, int]) -> bytes:
    return encode_mask(np.ones(shape, bool), MaskEncoding.PNG)


def _forged_png(width: int, height: int) -> bytes:
    head = bytearray(_png((4, 4)))
    head[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    return bytes(head)


@pytest.mark.parametrize(
    ("data", "encoding", "shape"),
    [
        (b"\xff\xfe", MaskEncoding.RLE, (4, 4)),
        (b"0~", MaskEncoding.RLE, (4, 4)),
        (b"12", MaskEncoding.RLE, (40, 40)),
        (b"", MaskEncoding.RLE, (4, 4)),
        (b"8P", MaskEncoding.RLE, (4, 4)),
        (b"PPPPPPPP0", MaskEncoding.RLE, (4, 4)),
        (b"0" * 40, MaskEncoding.RLE, (4, 4)),
        (b"@", MaskEncoding.RLE, (4, 4)),
        (b"\x00", MaskEncoding.BITPACK, (4, 4)),
        (b"", MaskEncoding.BITPACK, (4, 4)),
        (b"\x00" * 3, MaskEncoding.BITPACK, (4, 4)),
        (b"not a png", MaskEncoding.PNG, (4, 4)),
        (b"", MaskEncoding.PNG, (4, 4)),
        (_png((4, 4))[:40], MaskEncoding.PNG, (4, 4)),
        (_png((4, 5)), MaskEncoding.PNG, (4, 4)),
        (_forged_png(100_000, 100_000), MaskEncoding.PNG, (4, 4)),
        (_png((4, 4))[:8] + b"\x00" * 30, MaskEncoding.PNG, (4, 4)),
    ],
    ids=[
        "rle-non-ascii",
        "rle-bad-char",
        "rle-wrong-total",
        "rle-empty",
        "rle-ends-in-number",
        "rle-huge-number",
        "rle-too-many-runs",
        "rle-negative-count",
        "bitpack-short",
        "bitpack-empty",
        "bitpack-long",
        "png-garbage",
        "png-empty",
        "png-truncated",
        "png-wrong-size",
        "png-forged-size",
        "png-no-ihdr",
    ],
)
def test_corrupt_data_raises(data: bytes, encoding: MaskEncoding, shape: tuple[int, int]) -> None:
    with pytest.raises(MaskCodecError):
        decode_mask(data, encoding, *shape)


@pytest.mark.parametrize(
    "rle",
    [
        {},
        {"size": [2, 2]},
        {"counts": "4"},
        {"size": [2], "counts": "4"},
        {"size": [-2, -2], "counts": [4]},
        {"size": ["2", "2"], "counts": [4]},
        {"size": [2, 2], "counts": [1.5, 2.5]},
        {"size": [2, 2], "counts": [True, True, True, True]},
        {"size": [2, 2], "counts": ["4"]},
        {"size": [2, 2], "counts": [[4]]},
        {"size": [2, 2], "counts": [-1, 5]},
        {"size": [2, 2], "counts": [2**62, 2**62, 4]},
        {"size": [2, 2], "counts": [10**30]},
        {"size": [2, 2], "counts": [3]},
        {"size": [2, 2], "counts": "é"},
        {"size": [2, 2], "counts": 4},
        "size",
    ],
)
def test_bad_rle_dicts_raise(rle: Any) -> None:
    with pytest.raises(MaskCodecError):
        rle_decode(rle)


def test_rle_decode_accepts_empty_leading_run_and_bytes() -> None:
    mask = rle_decode({"size": [2, 2], "counts": [0, 4]})
    assert mask.all()
    assert np.array_equal(rle_decode({"size": [2, 2], "counts": b"04"}), mask)
    assert np.array_equal(rle_decode({"size": np.array([2, 2]), "counts": (0, 4)}), mask)


@pytest.mark.parametrize(
    ("args", "grid"),
    [
        ((480, 640, None, None), (480, 640)),
        ((480, 640, 0.5, None), (240, 320)),
        ((480, 640, 0.25, None), (120, 160)),
        ((480, 640, None, 160), (120, 160)),
        ((480, 640, 0.5, 1000), (240, 320)),  # max_side only ever shrinks
        ((480, 640, 1 / 64, None), (8, 10)),
        ((3, 1000, 0.01, None), (1, 10)),  # never below one pixel
        ((481, 641, 0.5, None), (240, 320)),  # rounded to the nearest pixel
    ],
)
def test_mask_grid(args: tuple[Any, ...], grid: tuple[int, int]) -> None:
    assert mask_grid(*args) == grid


@pytest.mark.parametrize(("scale", "max_side"), [(0.0, None), (1.5, None), (None, 0)])
def test_mask_grid_refuses(scale: float | None, max_side: int | None) -> None:
    with pytest.raises(MaskCodecError):
        mask_grid(480, 640, scale, max_side)


def test_shrink_mask_is_a_majority_vote() -> None:
    mask = np.zeros((8, 8), bool)
    mask[0:4, 0:4] = True  # a whole 4x4 block
    mask[4:6, 4:8] = True  # half of each 4x4 block below right
    mask[0, 4] = True  # one pixel of 16
    small = shrink_mask(mask, 2, 2)
    assert small.dtype == np.bool_
    assert small.tolist() == [[True, False], [False, True]]
    assert shrink_mask(mask, 8, 8) is mask
    assert shrink_mask(np.zeros((480, 640), bool), 120, 160).shape == (120, 160)
