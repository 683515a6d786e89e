"""Smaller masks on request (`?scale=`, `?max_side=`, `?crop=bbox` on a mask feed).

A robot on a thin link often needs a coarse mask, or only the part of it inside the
object's box. The masks are resampled and cropped in the media executor, once per
frame, encoding and view, however many clients share that view (the wire format is
in `protocol/messages.py: reduce_masks`).
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec
import numpy as np

from streamseg.media.frame import Frame
from streamseg.pipeline.stream import StreamResult
from streamseg.pipeline.wire import placed_message, result_message
from streamseg.protocol.masks import MaskEncoding
from streamseg.protocol.messages import (
    FrameResultMessage,
    TrackResultMeta,
    encode_frame_message,
    encode_masks,
    reduce_masks,
)
from streamseg.server.cameras import CameraStream
from streamseg.server.source_rate_feed import Encoded, PlacedFrames

CROPS = ("none", "bbox")
MIN_SCALE = 1 / 64


class ViewError(ValueError):
    """A bad `scale`/`max_side`/`crop` query parameter, with its error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class MaskView:
    """How one client wants its masks: on a grid `scale` times the frame (at most
    `max_side` on the longer side), and cropped to each mask's box or not."""

    scale: float | None = None
    max_side: int | None = None
    crop: bool = False

    @property
    def full(self) -> bool:
        """The frame-sized masks every client got before revision 4."""
        return self.scale is None and self.max_side is None and not self.crop


def parse_view(params: Mapping[str, str]) -> MaskView:
    """The view from a feed's query parameters; `ViewError` names what is wrong."""
    scale: float | None = None
    raw = params.get("scale")
    if raw is not None:
        try:
            scale = float(raw)
        except ValueError:
            scale = math.nan
        if not MIN_SCALE <= scale <= 1:  # NaN fails too
            raise ViewError("bad_scale", f"scale must be a number in [1/64, 1], got {raw!r}")
        scale = None if scale == 1 else scale
    max_side: int | None = None
    raw = params.get("max_side")
    if raw is not None:
        if not raw.isdigit() or not 8 <= int(raw) <= 65536:
            raise ViewError("bad_scale", f"max_side must be an integer in [8, 65536], got {raw!r}")
        max_side = int(raw)
    crop = params.get("crop", "none")
    if crop not in CROPS:
        raise ViewError("bad_crop", f"crop must be one of {', '.join(CROPS)}, got {crop!r}")
    return MaskView(scale, max_side, crop == "bbox")


_Key = tuple[str, int, MaskEncoding, MaskView]
_Reduced = tuple[tuple[TrackResultMeta, ...], tuple[int, int] | None, list[bytes]]


@dataclass(eq=False)
class _Cache:
    """Reduced, encoded masks of the newest frame only (bounded: one frame's views)."""

    seq: int = -1
    entries: dict[_Key, _Reduced] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def message(self, key: _Key, msg: FrameResultMessage, masks: list[np.ndarray]) -> bytes:
        """`msg` (this client's times) with the view's masks, reduced once per key."""
        _, seq, encoding, view = key
        with self.lock:
            found = self.entries.get(key)
        if found is None:
            reduced, wire = reduce_masks(
                msg, masks, scale=view.scale, max_side=view.max_side, crop=view.crop
            )
            found = (reduced.tracks, reduced.mask_size, encode_masks(wire, encoding))
            with self.lock:
                if seq > self.seq:
                    self.seq, self.entries = seq, {}
                if seq == self.seq:
                    self.entries[key] = found
        tracks, size, blobs = found
        out = msgspec.structs.replace(msg, tracks=tracks, mask_size=size, mask_crop=view.crop)
        return encode_frame_message(out, encoded=blobs)


_by_camera: weakref.WeakKeyDictionary[CameraStream, dict[str, _Cache]] = weakref.WeakKeyDictionary()


def view_cache(camera: CameraStream, rate: str) -> _Cache:
    """The camera's shared cache of reduced masks for `rate` feeds (model results and
    source frames share seq numbers but not masks). Call on the event loop."""
    return _by_camera.setdefault(camera, {}).setdefault(rate, _Cache())


def reduced_result(
    cache: _Cache, camera: CameraStream, out: StreamResult, encoding: MaskEncoding, view: MaskView
) -> Encoded:
    """Runs in the media executor: a model result's message with smaller masks."""
    start = time.perf_counter()
    msg = result_message(out, time.time(), camera.session.counters.dropped, encoding)
    key: _Key = ("model", out.frame.seq, encoding, view)
    data = cache.message(key, msg, [t.mask for t in out.result.tracks])
    return Encoded(data, out.frame.capture_ts, 0.0, time.perf_counter() - start)


def reduced_placed(
    cache: _Cache,
    camera: CameraStream,
    placed_frames: PlacedFrames,
    frame: Frame,
    encoding: MaskEncoding,
    view: MaskView,
) -> Encoded:
    """Runs in the media executor: a source-rate frame's message with smaller masks."""
    start = time.perf_counter()
    placed = placed_frames.place(frame)
    placed_at = time.perf_counter()
    session = camera.session
    msg = placed_message(placed, session.id, time.time(), session.counters.dropped)
    msg = msgspec.structs.replace(msg, encoding=encoding)
    key: _Key = ("source", frame.seq, encoding, view)
    data = cache.message(key, msg, [t.mask for t in placed.tracks])
    return Encoded(data, frame.capture_ts, placed_at - start, time.perf_counter() - placed_at)
