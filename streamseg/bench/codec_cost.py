"""CPU cost of the wire protocol per message: decoding and validating a frame header
(what every robot client does per frame) and a prompt (what the server does per
click), and the server encoding a header. Only the public protocol API is used, so the
same file measures an older checkout (`python -m streamseg.bench.codec_cost` with that
checkout first on PYTHONPATH) for a before/after comparison."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from streamseg.protocol.messages import (
    FrameResultMessage,
    FrameTimes,
    TrackResultMeta,
    decode_frame_header,
    encode_frame_message,
)
from streamseg.protocol.prompts import parse_client_message

PROMPT = json.dumps(
    {
        "type": "prompt",
        "track_id": 3,
        "points": [[320.5, 240.0], [400, 260]],
        "labels": [1, 0],
        "frame_seq": 812,
        "request_id": "r7",
    }
)


def header_with_tracks(count: int) -> bytes:
    """A binary frame message without masks whose header has `count` tracks."""
    tracks = tuple(
        TrackResultMeta(i + 1, 0.91, 0.99, True, (10, 20, 110, 220), 9000, "propagated", 41, 33.3)
        for i in range(count)
    )
    times = FrameTimes(1764000000.101, "stream", 1764000000.102, 1764000000.11, 1764000000.16)
    msg = FrameResultMessage(
        "dock", 812, 640, 480, times, tracks, 0, None, {"encoder": 18.0, "decoder": 2.5}
    )
    return encode_frame_message(msg)


def per_call_us(fn: Callable[[], Any], seconds: float = 0.3, repeats: int = 5) -> float:
    """Best of `repeats` runs of about `seconds` each, in microseconds per call."""
    fn()
    start = time.perf_counter()
    calls = 0
    while time.perf_counter() - start < 0.02:
        fn()
        calls += 1
    batch = max(1, int(calls * seconds / 0.02))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        best = min(best, (time.perf_counter() - start) / batch)
    return best * 1e6


def codec_costs(live_frame: bytes | None = None, seconds: float = 0.3) -> dict[str, float]:
    """µs per call of each step; `live_frame` (a binary frame message from a real feed)
    adds its header decode."""
    sixteen = header_with_tracks(16)
    out: dict[str, float] = {}
    if live_frame is not None:
        out["decode_header_live_us"] = per_call_us(lambda: decode_frame_header(live_frame), seconds)
    out["decode_header_16_tracks_us"] = per_call_us(lambda: decode_frame_header(sixteen), seconds)
    out["parse_prompt_us"] = per_call_us(lambda: parse_client_message(PROMPT), seconds)
    msg = decode_frame_header(sixteen)
    out["encode_header_16_tracks_us"] = per_call_us(lambda: encode_frame_message(msg), seconds)
    return out


def describe(costs: dict[str, float]) -> str:
    names = {
        "decode_header_live_us": "frame header from the feed",
        "decode_header_16_tracks_us": "frame header, 16 tracks",
        "parse_prompt_us": "prompt (2 points)",
        "encode_header_16_tracks_us": "server encode, 16 tracks",
    }
    return ", ".join(f"{names[k]} {v:.1f} µs" for k, v in costs.items())


if __name__ == "__main__":
    print("decode+validate per message:", describe(codec_costs()))
