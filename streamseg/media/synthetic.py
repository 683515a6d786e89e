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


MOTIONS = ("translate", "rotate", "scale", "occlude")


def moving_object(
    motion: str, count: int, height: int = 480, width: int = 640, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """`count` RGB frames of one textured ellipse moving over a static textured
    background, and its true visible mask on each frame: ground truth for judging masks
    carried between model steps. `motion` is one of MOTIONS: a steady drift, a turn
    about its centre (2 degrees a frame), growth (1% a frame), or a drift behind a
    static bar that hides part of it."""
    if motion not in MOTIONS:
        raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}")
    import cv2

    rng = np.random.default_rng(seed)
    background = cv2.GaussianBlur(
        rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 1.5
    )
    side = min(height, width) // 3
    texture = cv2.GaussianBlur(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), (0, 0), 1.2)
    shape = np.zeros((side, side), np.uint8)
    cv2.ellipse(shape, (side // 2, side // 2), (side // 2 - 2, side // 3), 30, 0, 360, 1, -1)
    bar = np.zeros((height, width), bool)
    if motion == "occlude":
        bar[:, width // 2 : width // 2 + width // 16] = True
    frames, masks = [], []
    for i in range(count):
        angle = 2.0 * i if motion == "rotate" else 0.0
        scale = 1.0 + 0.01 * i if motion == "scale" else 1.0
        shift = (3.0 * i, 1.5 * i) if motion in ("translate", "occlude") else (0.0, 0.0)
        centre = (width * 0.3 + shift[0], height * 0.45 + shift[1])
        rotation = np.asarray(cv2.getRotationMatrix2D((side / 2, side / 2), angle, scale))
        offset = np.array([[0.0, 0.0, centre[0] - side / 2], [0.0, 0.0, centre[1] - side / 2]])
        matrix = rotation.astype(np.float64) + offset
        placed = cv2.warpAffine(shape, matrix, (width, height), flags=cv2.INTER_NEAREST) > 0
        moved = cv2.warpAffine(texture, matrix, (width, height), flags=cv2.INTER_LINEAR)
        image = background.copy()
        image[placed] = moved[placed]
        visible = placed & ~bar
        image[bar] = (40, 40, 40)
        frames.append(image)
        masks.append(visible)
    return frames, masks


BARCODE_BITS = 16
BARCODE_BLOCKS_PER_WIDTH = 40


def barcode_check(index: int) -> int:
    """6 check bits, so a misread (e.g. under a mask's tint) is rejected 63 times in 64."""
    return (index * 37 + 11) % 64


def draw_barcode(image: np.ndarray, index: int) -> np.ndarray:
    """Stamp a frame index into the top-left corner (10 bits + a 6-bit check), readable
    after video compression; `web/js/barcode.js` reads it back."""
    index %= 1024
    value = (index << 6) | barcode_check(index)
    out = image.copy()
    block = image.shape[1] / BARCODE_BLOCKS_PER_WIDTH
    for bit in range(BARCODE_BITS):
        on = (value >> (BARCODE_BITS - 1 - bit)) & 1
        out[: round(block), round(bit * block) : round((bit + 1) * block)] = 255 if on else 0
    return out


def write_y4m(path: str, frames: list[np.ndarray], fps: int = 30) -> None:
    """A y4m clip (Chromium's fake camera plays it in a loop)."""
    import av

    height, width = frames[0].shape[:2]
    with av.open(path, "w", format="yuv4mpegpipe") as container:
        stream = container.add_stream("rawvideo", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for image in frames:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_h264(path: str, width: int, height: int, frames: int, fps: int = 30) -> None:
    """An H.264 file of the moving scene (for file sources and the websocket bench)."""
    import av

    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(scene_frame(i, height, width), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
