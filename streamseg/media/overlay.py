"""Composite masks onto the frame they were computed on (OpenCV: per FACTS.md an
`addWeighted` + masked copy is ~15x faster than a numpy `where` blend)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 64, 64),
    (64, 200, 255),
    (255, 200, 0),
    (120, 255, 80),
    (255, 80, 220),
    (0, 255, 200),
    (255, 140, 0),
    (160, 110, 255),
    (255, 255, 120),
    (80, 140, 255),
    (255, 120, 160),
    (140, 255, 200),
    (200, 60, 255),
    (0, 180, 120),
    (255, 0, 120),
    (120, 200, 0),
    (0, 120, 255),
    (255, 180, 120),
    (180, 255, 255),
    (255, 0, 0),
)


def track_colour(track_id: int) -> tuple[int, int, int]:
    return PALETTE[track_id % len(PALETTE)]


def draw_overlay(
    image: np.ndarray,
    masks: Sequence[tuple[int, np.ndarray]],
    *,
    alpha: float = 0.5,
    outline: bool = True,
    outline_px: int = 2,
) -> np.ndarray:
    """A new RGB image with each (track_id, bool mask) tinted in its colour and outlined."""
    out = image.copy()
    for track_id, mask in masks:
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask shape {mask.shape} does not match image {image.shape[:2]}")
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(mask.any(axis=0))
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        region = out[y0:y1, x0:x1]
        m = mask[y0:y1, x0:x1].astype(np.uint8)
        colour = np.empty_like(region)
        colour[:] = track_colour(track_id)
        tinted = cv2.addWeighted(region, 1.0 - alpha, colour, alpha, 0.0)
        cv2.copyTo(tinted, m, region)
        if outline:
            contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(region, contours, -1, track_colour(track_id), outline_px)
    return out
