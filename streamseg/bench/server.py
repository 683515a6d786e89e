"""`streamseg bench server`: what the server adds around the model, and latency when
the model is far slower than the camera.

1. Per-frame overhead with the model excluded, at 480p and 720p: the stages a frame
   passes through outside the tracker (RGB conversion of the decoded frame, overlay
   compositing, building the outgoing video frame, VP8 encoding as aiortc does it,
   the metadata message).
2. Overload: a real aiortc client sends 30 fps to the real server running a tracker
   several times slower than the frame interval; capture->sent latency percentiles,
   frames received and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import av
import numpy as np

from streamseg.media.frame import Frame, frame_from_av
from streamseg.media.overlay import draw_overlay
from streamseg.media.synthetic import scene_frame, shape_boxes

SIZES = {"480p": (640, 480), "720p": (1280, 720)}


def sample_s(fn: Callable[[], Any], repeat: int) -> list[float]:
    """Seconds per call over `repeat` calls, after one untimed warm-up call."""
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    return statistics.median(sample_s(fn, repeat)) * 1000


def _box_masks(
    boxes: Sequence[Sequence[int]], height: int, width: int
) -> list[tuple[int, np.ndarray]]:
    """Filled boxes as (track id, mask) pairs, track ids from 1."""
    masks = []
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        mask = np.zeros((height, width), bool)
        mask[y0:y1, x0:x1] = True
        masks.append((k + 1, mask))
    return masks


def vp8_encoder() -> Any:
    """The encoder aiortc's sender uses for VP8."""
    from aiortc.codecs import get_encoder
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    return get_encoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000))


def webrtc_egress_s(width: int, height: int, tracks: int, repeat: int) -> dict[str, list[float]]:
    """What the WebRTC overlay track adds per frame, model excluded: compositing
    `tracks` masks onto the frame, and VP8-encoding it as aiortc's sender does."""
    from streamseg.bench.cell import prompt_boxes

    images = [scene_frame(i, height, width) for i in range(30)]  # moving, as video is
    masks = _box_masks(prompt_boxes(tracks, width, height), height, width)
    encoder = vp8_encoder()
    composed = [av.VideoFrame.from_ndarray(draw_overlay(i, masks), format="rgb24") for i in images]
    counter = itertools.count()

    def overlay() -> None:
        draw_overlay(images[next(counter) % len(images)], masks)

    def encode() -> None:
        n = next(counter)
        frame = composed[n % len(composed)]
        frame.pts, frame.time_base = n * 3000, Fraction(1, 90_000)
        encoder.encode(frame, force_keyframe=False)

    return {
        "overlay": sample_s(overlay, repeat),
        "video_encode": sample_s(encode, repeat),
    }


def _overhead_row(w: int, h: int, repeat: int) -> dict[str, float]:
    from streamseg.model.tracker import FrameResult, StageTimes, TrackResult
    from streamseg.pipeline.stream import StreamResult
    from streamseg.pipeline.wire import result_message
    from streamseg.protocol.messages import frame_message_json

    image = scene_frame(0, h, w)
    decoded = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
    masks = _box_masks(shape_boxes(0, h, w), h, w)
    tracks = tuple(
        TrackResult(k, m, np.zeros((256, 256), np.float32), 0.9, 0.9, True, (0, 0, 1, 1), 1)
        for k, m in masks
    )
    frame = Frame(0, image, time.time(), "receive", time.time())
    out = StreamResult("s", frame, FrameResult(0, 0, w, h, tracks, StageTimes()), 0.0, 0.0)
    encoder = vp8_encoder()
    composed = av.VideoFrame.from_ndarray(draw_overlay(image, masks), format="rgb24")
    composed.pts, composed.time_base = 0, Fraction(1, 90_000)
    row = {
        "rgb_conversion": median_ms(lambda: frame_from_av(decoded, 0, 0.0), repeat),
        "overlay_3_masks": median_ms(lambda: draw_overlay(image, masks), repeat),
        "to_video_frame": median_ms(
            lambda: av.VideoFrame.from_ndarray(image, format="rgb24"), repeat
        ),
        "vp8_encode": median_ms(lambda: encoder.encode(composed, force_keyframe=False), repeat),
        "metadata_json": median_ms(
            lambda: frame_message_json(result_message(out, time.time(), 0)), repeat
        ),
    }
    row["total"] = sum(row.values())
    return row


def overhead_table(repeat: int = 30) -> dict[str, dict[str, float]]:
    return {name: _overhead_row(w, h, repeat) for name, (w, h) in SIZES.items()}


async def overload_run(seconds: float, model: str, image_size: int) -> dict[str, Any]:
    from streamseg.client_webrtc import SyntheticVideoTrack, WebRTCClient
    from streamseg.server.background import running_server, server_token

    with running_server(model=model, image_size=image_size) as (url, runtime):
        track = SyntheticVideoTrack(640, 480, fps=30)
        client = WebRTCClient(url, track, token=server_token(runtime))
        await client.connect()
        try:
            while len(client.metadata) < 3:
                await asyncio.sleep(0.05)
            x0, y0, x1, y1 = shape_boxes(client.metadata[-1]["seq"], 480, 640)[0]
            await client.request({"type": "prompt", "box": [x0, y0, x1, y1]})
            first = len(client.metadata)
            await asyncio.sleep(seconds)
            metas = list(client.metadata)[first:]
            received = sum(s.counters.received for s in runtime.streams.values())
        finally:
            await client.close()
    latency = [m["times"]["sent_ts"] - m["times"]["capture_ts"] for m in metas]
    steps = [m["times"]["infer_end"] - m["times"]["infer_start"] for m in metas]
    step = statistics.median(steps)
    return {
        "model": f"{model} @ {image_size}px (random weights)",
        "step_ms": step * 1000,
        "overload_factor": step * 30,
        "results": len(metas),
        "frames_received": received,
        "dropped": metas[-1]["dropped_frames"] if metas else 0,
        "latency_p50_ms": float(np.percentile(latency, 50)) * 1000,
        "latency_p99_ms": float(np.percentile(latency, 99)) * 1000,
        "latency_first_third_p50_ms": float(np.median(latency[: len(latency) // 3])) * 1000,
        "latency_last_third_p50_ms": float(np.median(latency[-len(latency) // 3 :])) * 1000,
    }


def run_server_bench(args: argparse.Namespace) -> dict[str, Any]:
    import logging

    logging.getLogger("aioice").setLevel(logging.WARNING)
    logging.getLogger("aiortc").setLevel(logging.WARNING)
    table = overhead_table()
    print("per-frame server overhead, model excluded (ms, median):")
    stages = list(next(iter(table.values())))
    print(f"{'':8}" + "".join(f"{s:>17}" for s in stages))
    for name, row in table.items():
        print(f"{name:8}" + "".join(f"{row[s]:17.2f}" for s in stages))
    overload = asyncio.run(overload_run(args.seconds, args.model or "tiny", args.image_size or 320))
    print(
        f"\noverload: {overload['model']}, step {overload['step_ms']:.0f} ms = "
        f"{overload['overload_factor']:.1f}x the 33 ms frame interval; "
        f"capture->sent p50 {overload['latency_p50_ms']:.0f} ms, "
        f"p99 {overload['latency_p99_ms']:.0f} ms (first third p50 "
        f"{overload['latency_first_third_p50_ms']:.0f}, last third "
        f"{overload['latency_last_third_p50_ms']:.0f}); {overload['results']} results, "
        f"{overload['dropped']} frames dropped (latest frame wins)"
    )
    return {"mode": "server", "overhead_ms": table, "overload": overload}
