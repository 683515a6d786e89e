"""Websocket feed messages at the camera's rate (`?rate=source`): one per incoming
frame, with the stream's newest model masks moved onto it (`pipeline/egress.py`).

The placing and encoding run in the media executor, never on the event loop. The
newest frame's placement and its encoded masks are kept once per camera, so several
source-rate clients of one camera cost one placement and one encoding per frame.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, field

import msgspec

from streamseg.media.frame import Frame
from streamseg.pipeline.egress import PlacedFrame, SourceRateMasks
from streamseg.pipeline.stream import StreamSession
from streamseg.pipeline.wire import placed_message
from streamseg.protocol.masks import MaskEncoding
from streamseg.protocol.messages import encode_frame_message, encode_masks
from streamseg.server.cameras import CameraStream

RATES = ("model", "source")


@dataclass(frozen=True, slots=True)
class Encoded:
    """One outgoing message and what it took, for the stage metrics."""

    data: bytes
    capture_ts: float
    place_s: float
    encode_s: float


@dataclass(eq=False)
class PlacedFrames:
    """The newest frame placed (and its masks encoded) for every source-rate client of
    one camera. Bound: one frame's placement and one blob list per encoding; an older
    frame asked for later (a slow client) is placed again, not cached."""

    # The session, not the camera: `_by_camera` holds these weakly by camera, and a
    # value that referenced its key would keep every deleted camera alive.
    session: StreamSession
    placer: SourceRateMasks
    _seq: int = -1
    _placed: PlacedFrame | None = None
    _encoded: dict[MaskEncoding, list[bytes]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def place(self, frame: Frame) -> PlacedFrame:
        with self._lock:
            if frame.seq == self._seq and self._placed is not None:
                return self._placed
        placed = self.placer.place(frame)  # serialised by the placer's own lock
        with self._lock:
            if frame.seq > self._seq:
                self._seq, self._placed, self._encoded = frame.seq, placed, {}
        return placed

    def masks(self, placed: PlacedFrame, encoding: MaskEncoding) -> list[bytes]:
        seq = placed.frame.seq
        with self._lock:
            cached = self._encoded.get(encoding) if seq == self._seq else None
        if cached is None:
            cached = encode_masks([t.mask for t in placed.tracks], encoding)
            with self._lock:
                if seq == self._seq and self._placed is placed:
                    self._encoded[encoding] = cached
        return cached

    def message(self, frame: Frame, encoding: MaskEncoding | None) -> Encoded:
        """Runs in the media executor: the binary frame message for `frame`."""
        start = time.perf_counter()
        placed = self.place(frame)
        placed_at = time.perf_counter()
        blobs = self.masks(placed, encoding) if encoding is not None else None
        session = self.session
        msg = placed_message(placed, session.id, time.time(), session.counters.dropped)
        if encoding is not None:
            msg = msgspec.structs.replace(msg, encoding=encoding)
        data = encode_frame_message(msg, encoded=blobs)
        return Encoded(data, frame.capture_ts, placed_at - start, time.perf_counter() - placed_at)


_by_camera: weakref.WeakKeyDictionary[CameraStream, PlacedFrames] = weakref.WeakKeyDictionary()


def placed_frames(camera: CameraStream) -> PlacedFrames:
    """The camera's shared source-rate placer (started on first use; call on the loop).
    It starts from the camera's newest result, so a new client sees masks at once
    rather than after the next model step."""
    found = _by_camera.get(camera)
    if found is None:
        placer = camera.session.source_rate_masks()
        if camera.latest is not None:
            placer.on_result(camera.latest)
        found = PlacedFrames(camera.session, placer)
        _by_camera[camera] = found
    return found
