from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from streamseg.media.overlay import PALETTE, draw_overlay, track_colour


def _scene(h: int = 60, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    mask[10:40, 20:60] = True
    mask[25:40, 35:45] = False  # a notch, so the outline has a concave part
    return image, mask


def _inner_edge(mask: np.ndarray, px: int) -> np.ndarray:
    """Mask pixels with a non-mask pixel (or the image border) within `px` (chessboard)."""
    h, w = mask.shape
    padded = np.zeros((h + 2 * px, w + 2 * px), bool)
    padded[px : px + h, px : px + w] = mask
    near_outside = np.zeros_like(mask)
    for dy in range(2 * px + 1):
        for dx in range(2 * px + 1):
            near_outside |= ~padded[dy : dy + h, dx : dx + w]
    return mask & near_outside


def test_inside_moves_towards_colour_outside_is_untouched() -> None:
    image, mask = _scene()
    before = image.copy()
    out = draw_overlay(image, [(3, mask)], alpha=0.5, outline=False)
    assert np.array_equal(image, before)
    assert out is not image and out.dtype == np.uint8 and out.flags.c_contiguous
    assert np.array_equal(out[~mask], image[~mask])
    colour = np.array(track_colour(3), float)
    expected = 0.5 * image[mask].astype(float) + 0.5 * colour
    assert np.abs(out[mask].astype(float) - expected).max() <= 1
    changed = out[mask] != image[mask]
    assert changed.any(axis=1).mean() > 0.95


def test_outline_is_exact_colour_inside_the_mask_only() -> None:
    image, mask = _scene()
    for px in (1, 2, 3):
        out = draw_overlay(image, [(1, mask)], outline=True, outline_px=px)
        edge = _inner_edge(mask, px)
        assert np.all(out[edge] == track_colour(1))
        assert np.array_equal(out[~mask], image[~mask])
    out = draw_overlay(image, [(1, mask)], outline_px=2)
    assert tuple(out[10, 30]) == tuple(out[11, 30]) == track_colour(1)  # top edge, 2 px
    assert tuple(out[12, 30]) != track_colour(1)


def test_later_masks_cover_earlier_ones() -> None:
    image, _ = _scene()
    a = np.zeros(image.shape[:2], bool)
    a[0:30, 0:30] = True
    b = np.zeros_like(a)
    b[10:20, 10:20] = True
    out = draw_overlay(image, [(0, a), (1, b)], alpha=1.0, outline=False)
    assert tuple(out[15, 15]) == track_colour(1)
    assert tuple(out[5, 5]) == track_colour(0)


def test_empty_mask_list_returns_an_equal_copy() -> None:
    image, _ = _scene()
    out = draw_overlay(image, [])
    assert out is not image and np.array_equal(out, image)
    assert np.array_equal(draw_overlay(image, [(0, np.zeros(image.shape[:2], bool))]), image)


@pytest.mark.parametrize(("h", "w"), [(1, 1), (37, 53)])
def test_odd_sizes_and_masks_touching_edges(h: int, w: int) -> None:
    image, _ = _scene(h, w)
    full = np.ones((h, w), bool)
    corner = np.zeros((h, w), np.uint8)  # a non-bool mask: nonzero is inside
    corner[h - 1, w - 1] = 7
    out = draw_overlay(image, [(0, full), (1, corner)], boxes=True, labels=True)
    assert out.shape == image.shape
    assert tuple(out[h - 1, w - 1]) == track_colour(1)
    out = draw_overlay(image, [(0, full)], outline=False, alpha=0.5)
    assert np.abs(out.astype(int) - (image.astype(int) + track_colour(0)) / 2).max() <= 1


def test_boxes_and_labels_draw_outside_the_mask() -> None:
    image, mask = _scene(120, 160)
    mask[:] = False
    mask[50:90, 40:100] = True
    out = draw_overlay(image, [(2, mask)], boxes=True, labels=True, outline=False)
    assert tuple(out[50, 70]) == track_colour(2)  # box edge
    label_area = out[30:50, 40:80]
    assert np.any(np.all(label_area == track_colour(2), axis=-1))
    plain = draw_overlay(image, [(2, mask)], outline=False)
    assert not np.array_equal(out, plain)


@pytest.mark.parametrize(
    "masks",
    [
        [(0, np.zeros((5, 5), bool))],
        [(0, np.zeros((60, 80), bool)), (1, np.zeros((80, 60), bool))],
        [(0, np.zeros((60, 80, 1), bool))],
    ],
)
def test_wrong_mask_shape_raises_naming_both(masks: list[tuple[int, np.ndarray]]) -> None:
    image, _ = _scene()
    with pytest.raises(ValueError, match=r"mask shape .* does not match image shape \(60, 80\)"):
        draw_overlay(image, masks)


def test_bad_image_or_alpha_raises() -> None:
    image, mask = _scene()
    with pytest.raises(ValueError, match="image"):
        draw_overlay(image[..., 0], [])
    with pytest.raises(ValueError, match="alpha"):
        draw_overlay(image, [(0, mask)], alpha=1.5)


def test_track_colours_are_stable_distinct_and_bright() -> None:
    assert len(PALETTE) == 20 and len(set(PALETTE)) == 20
    assert [track_colour(i) for i in range(20)] == list(PALETTE)
    assert track_colour(25) == track_colour(5) and track_colour(-1) == PALETTE[-1]
    lab = cv2.cvtColor(np.array([PALETTE], np.float32) / 255, cv2.COLOR_RGB2Lab)[0]
    assert lab[:, 0].min() > 50  # lightness: visible on dark video
    for i, j in itertools.combinations(range(len(PALETTE)), 2):
        assert np.linalg.norm(lab[i] - lab[j]) > 20, (PALETTE[i], PALETTE[j])
