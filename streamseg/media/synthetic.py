"""Generated test video: coloured shapes moving over a textured background, so
tests, benchmarks and demos need no media files."""

from __future__ import annotations

import numpy as np

SHAPE_COLOURS = ((220, 60, 40), (40, 200, 60), (50, 70, 230))


def moving_scene(count: int, height: int = 96, width: int = 128, seed: int = 0) -> list[np.ndarray]:
    """`count` RGB frames; three shapes whose sizes scale with the frame."""
    background = _background(height, width, seed)
    return [scene_frame(i, height, width, background) for i in range(count)]


def _background(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 60, (height, width, 3), dtype=np.uint8)


def shape_boxes(index: int, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of the three shapes on frame `index`."""
    sy, sx = height / 96, width / 128
    x = int(((10 + 2 * index) % 98) * sx)
    cy = int((30 + index % 20) * sy)
    bx = int((15 + index % 30) * sx)
    return [
        (x, int(20 * sy), x + int(25 * sx), int(50 * sy)),
        (width - int(40 * sx), cy, width - int(15 * sx), cy + int(20 * sy)),
        (bx, height - int(30 * sy), bx + int(25 * sx), height - int(8 * sy)),
    ]


def scene_frame(
    index: int, height: int, width: int, background: np.ndarray | None = None, seed: int = 0
) -> np.ndarray:
    img = (_background(height, width, seed) if background is None else background).copy()
    for (x0, y0, x1, y1), colour in zip(
        shape_boxes(index, height, width), SHAPE_COLOURS, strict=True
    ):
        img[y0:y1, x0:x1] = colour
    return img
