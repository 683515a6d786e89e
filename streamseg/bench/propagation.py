"""`streamseg bench propagation`: masks carried between model steps, measured.

Quality is judged against ground truth, not against the model: the generated object
(`media/synthetic.py: moving_object`) knows its true visible mask on every frame. Each
run starts from the true mask on the "model" frame and reports the IoU of the mask
shown `age` frames later for every motion model, plus holding the old mask unchanged.
The same clip is also run through H.264 (libx264, as a camera would send it) to see
codec noise. Cost is the per-frame work of the source-rate path at 640x480 on one
core: recording the frame, moving 3 masks, drawing the overlay, handing it to the
encoder as a video frame.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from streamseg.media.motion import MaskPropagator, grey_small
from streamseg.media.overlay import draw_overlay
from streamseg.media.synthetic import MOTIONS, moving_object

AGES = (1, 5, 15, 30)
Placer = Callable[[list[np.ndarray], np.ndarray, int], np.ndarray]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _u8(mask: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(mask, dtype=np.uint8)


def _hold(frames: list[np.ndarray], mask: np.ndarray, age: int) -> np.ndarray:
    return mask


def _lk_similarity(frames: list[np.ndarray], mask: np.ndarray, age: int) -> np.ndarray:
    propagator = MaskPropagator()
    for seq, image in enumerate(frames[: age + 1]):
        propagator.add_frame(seq, image)
    propagator.set_masks(0, [(1, mask)])
    height, width = mask.shape
    return propagator.masks_for(age, (width, height))[0].mask


def _dis_flow(frames: list[np.ndarray], mask: np.ndarray, age: int) -> np.ndarray:
    """Dense flow (DIS, ultrafast, 320 px wide) chained frame to frame from the current
    frame back to the model frame; each current pixel takes the mask value where it
    came from."""
    greys = [grey_small(f, 320) for f in frames[: age + 1]]
    scale = greys[0][1]
    dis = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    height, width = greys[0][0].shape
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    map_x, map_y = xs.copy(), ys.copy()
    for t in range(age, 0, -1):
        flow = np.asarray(dis.calc(greys[t][0], greys[t - 1][0], None))  # type: ignore[call-overload]
        step_x = cv2.remap(flow[..., 0], map_x, map_y, cv2.INTER_LINEAR)
        step_y = cv2.remap(flow[..., 1], map_x, map_y, cv2.INTER_LINEAR)
        map_x, map_y = map_x + step_x, map_y + step_y
    full_h, full_w = mask.shape
    big_x = (np.asarray(cv2.resize(map_x, (full_w, full_h))) / scale).astype(np.float32)
    big_y = (np.asarray(cv2.resize(map_y, (full_w, full_h))) / scale).astype(np.float32)
    placed = np.asarray(cv2.remap(_u8(mask), big_x, big_y, cv2.INTER_NEAREST))
    return placed.astype(bool)


def _phase_correlation(frames: list[np.ndarray], mask: np.ndarray, age: int) -> np.ndarray:
    """Translation only: phase correlation of the grey frames (window on the mask's
    box, grown by half its size) between the model frame and the current one."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    gy, gx = (y1 - y0) // 2, (x1 - x0) // 2
    height, width = mask.shape
    y0, y1, x0, x1 = max(0, y0 - gy), min(height, y1 + gy), max(0, x0 - gx), min(width, x1 + gx)
    first = cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY)[y0:y1, x0:x1].astype(np.float32)
    now = cv2.cvtColor(frames[age], cv2.COLOR_RGB2GRAY)[y0:y1, x0:x1].astype(np.float32)
    window = cv2.createHanningWindow(first.shape[::-1], cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(first, now, window)
    shift = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
    placed = np.asarray(cv2.warpAffine(_u8(mask), shift, (width, height), flags=cv2.INTER_NEAREST))
    return placed.astype(bool)


PLACERS: dict[str, Placer] = {
    "hold": _hold,
    "lk_similarity": _lk_similarity,
    "dis_flow": _dis_flow,
    "phase_correlation": _phase_correlation,
}


def _through_h264(frames: list[np.ndarray]) -> list[np.ndarray]:
    """The clip as a camera would send it: libx264 (CRF 23) and back."""
    import av

    buffer = io.BytesIO()
    height, width = frames[0].shape[:2]
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    buffer.seek(0)
    with av.open(buffer, "r") as reader:
        return [f.to_ndarray(format="rgb24") for f in reader.decode(video=0)]


def quality(codec: bool) -> list[dict[str, Any]]:
    rows = []
    for motion in MOTIONS:
        frames, masks = moving_object(motion, max(AGES) + 1)
        if codec:
            frames = _through_h264(frames)
        for name, placer in PLACERS.items():
            ious = [_iou(placer(frames, masks[0], age), masks[age]) for age in AGES]
            rows.append({"motion": motion, "method": name, "iou": ious, "codec": codec})
    return rows


def cost(frames_count: int = 150, tracks: int = 3) -> dict[str, float]:
    """ms per 640x480 frame on one OpenCV thread, model masks refreshed every 30 frames."""
    cv2.setNumThreads(1)
    frames, masks = moving_object("translate", 31)
    shifted = [np.roll(masks[0], 60 * k, axis=1) for k in range(tracks)]
    propagator = MaskPropagator()
    record, seed, place, draw, encode = [], [], [], [], []
    import av

    for seq in range(frames_count):
        image = frames[seq % len(frames)]
        start = time.perf_counter()
        propagator.add_frame(seq, image)
        record.append(time.perf_counter() - start)
        if seq % 30 == 0:
            start = time.perf_counter()
            propagator.set_masks(seq, list(enumerate(shifted)))
            seed.append(time.perf_counter() - start)
        start = time.perf_counter()
        placed = propagator.masks_for(seq, (640, 480))
        place.append(time.perf_counter() - start)
        start = time.perf_counter()
        out = draw_overlay(image, [(p.track_id, p.mask) for p in placed])
        draw.append(time.perf_counter() - start)
        start = time.perf_counter()
        av.VideoFrame.from_ndarray(out, format="rgb24").reformat(format="yuv420p")
        encode.append(time.perf_counter() - start)
    total = [sum(x) for x in zip(record, place, draw, encode, strict=True)]

    def p50(xs: list[float]) -> float:
        return round(1000 * statistics.median(xs), 2)

    def p95(xs: list[float]) -> float:
        return round(1000 * float(np.percentile(xs, 95)), 2)

    return {
        "record_ms_p50": p50(record),
        "place_ms_p50": p50(place),
        "draw_ms_p50": p50(draw),
        "to_video_frame_ms_p50": p50(encode),
        "total_ms_p50": p50(total),
        "total_ms_p95": p95(total),
        "new_model_masks_ms_p50": p50(seed),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    return {"quality": quality(False) + quality(True), "cost": cost()}


def print_report(report: dict[str, Any]) -> None:
    ages = " | ".join(f"age {a}" for a in AGES)
    for codec in (False, True):
        print(f"\nIoU with the true mask ({'through H.264' if codec else 'raw frames'})")
        print(f"| motion | method | {ages} |")
        print("|---|---|" + "---|" * len(AGES))
        for row in report["quality"]:
            if row["codec"] == codec:
                cells = " | ".join(f"{v:.3f}" for v in row["iou"])
                print(f"| {row['motion']} | {row['method']} | {cells} |")
    print("\nsource-rate cost per 640x480 frame, 3 tracks, one core (ms)")
    for key, value in report["cost"].items():
        print(f"  {key}: {value}")
