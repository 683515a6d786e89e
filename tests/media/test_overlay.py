from __future__ import annotations

import numpy as np
import pytest

from streamseg.media.overlay import draw_overlay, track_colour


def _scene(h: int = 60, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    mask[10:40, 20:60] = True
    return image, mask


def test_inside_tinted_outside_untouched() -> None:
    image, mask = _scene()
    before = image.copy()
    out = draw_overlay(image, [(3, mask)], alpha=0.5, outline=False)
    assert np.array_equal(image, before)
    assert np.array_equal(out[~mask], image[~mask])
    colour = np.array(track_colour(3), float)
    dist_in = np.abs(out[mask].astype(float) - colour).mean()
    dist_src = np.abs(image[mask].astype(float) - colour).mean()
    assert dist_in < dist_src * 0.6


def test_outline_has_track_colour() -> None:
    image, mask = _scene()
    out = draw_overlay(image, [(1, mask)], outline=True, outline_px=1)
    assert tuple(out[10, 30]) == track_colour(1)
    dilated = np.zeros_like(mask)
    dilated[9:41, 19:61] = True
    assert np.array_equal(out[~dilated], image[~dilated])


def test_empty_and_odd_sizes() -> None:
    image, _ = _scene(1, 1)
    assert np.array_equal(draw_overlay(image, []), image)
    image, _ = _scene(37, 53)
    mask = np.zeros((37, 53), bool)
    mask[36, 52] = True
    out = draw_overlay(image, [(0, mask), (1, np.zeros((37, 53), bool))])
    assert out.shape == image.shape


def test_wrong_shape_raises() -> None:
    image, _ = _scene()
    with pytest.raises(ValueError, match="does not match"):
        draw_overlay(image, [(0, np.zeros((5, 5), bool))])
