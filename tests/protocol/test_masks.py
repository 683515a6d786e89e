from __future__ import annotations

import numpy as np
import pytest

from streamseg.protocol.masks import (
    MaskCodecError,
    MaskEncoding,
    decode_mask,
    encode_mask,
    mask_bbox,
    rle_decode,
    rle_encode,
)

SHAPES = [(1, 1), (1, 9), (9, 1), (37, 53), (720, 1280)]


def _masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for shape in SHAPES:
        out += [np.zeros(shape, bool), np.ones(shape, bool), rng.random(shape) < 0.3]
        one = np.zeros(shape, bool)
        one[-1, -1] = True
        out.append(one)
        one = np.zeros(shape, bool)
        one[0, 0] = True
        out.append(one)
    return out


@pytest.mark.parametrize("encoding", list(MaskEncoding))
def test_round_trip(encoding: MaskEncoding) -> None:
    for mask in _masks():
        data = encode_mask(mask, encoding)
        assert np.array_equal(decode_mask(data, encoding, *mask.shape), mask)


def test_rle_matches_pycocotools() -> None:
    coco = pytest.importorskip("pycocotools.mask")
    for mask in _masks():
        ref = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
        ours = rle_encode(mask)
        assert ours["counts"] == ref["counts"].decode()
        assert ours["size"] == list(ref["size"])
        assert np.array_equal(coco.decode({**ours, "counts": ours["counts"].encode()}), mask)


def test_uncompressed_counts_and_bbox() -> None:
    mask = rle_decode({"size": [2, 3], "counts": [1, 2, 3]})
    assert mask.T.ravel().tolist() == [False, True, True, False, False, False]
    assert mask_bbox(mask) == (0, 0, 2, 2)
    assert mask_bbox(np.zeros((3, 3), bool)) is None


@pytest.mark.parametrize(
    ("data", "encoding", "shape"),
    [
        (b"\xff\xfe", MaskEncoding.RLE, (4, 4)),
        (b"12", MaskEncoding.RLE, (40, 40)),
        (b"\x00", MaskEncoding.BITPACK, (4, 4)),
        (b"not a png", MaskEncoding.PNG, (4, 4)),
    ],
)
def test_corrupt_data_raises(data: bytes, encoding: MaskEncoding, shape: tuple[int, int]) -> None:
    with pytest.raises(MaskCodecError):
        decode_mask(data, encoding, *shape)


def test_bad_masks_raise() -> None:
    with pytest.raises(MaskCodecError):
        encode_mask(np.zeros((2, 2, 2), bool), MaskEncoding.RLE)
    with pytest.raises(MaskCodecError):
        encode_mask(np.full((2, 2), 7, np.uint8), MaskEncoding.PNG)
