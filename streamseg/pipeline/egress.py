"""Source-rate output: every frame a stream receives can go back out at once, drawn
with the newest masks the model has produced, moved onto it (`media/motion.py`).

The model keeps running on the newest frame as before; this only decides what each
outgoing frame shows. One `SourceRateMasks` per stream is shared by all its source-rate
consumers (the WebRTC overlay, websocket feeds with `rate=source`), so the motion work
is done once per frame whatever the number of viewers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from streamseg.media.frame import Frame
from streamseg.media.motion import MaskPropagator, MotionSettings, PropagatedMask
from streamseg.model.tracker import TrackResult
from streamseg.pipeline.stream import StreamResult
from streamseg.protocol.masks import mask_bbox
from streamseg.protocol.messages import TrackResultMeta


@dataclass(frozen=True, slots=True)
class PlacedTrack:
    """One track's mask on an outgoing frame and what the model said about it."""

    model: TrackResult  # the model's output on frame `model_seq`
    placed: PropagatedMask
    age_ms: float

    @property
    def mask(self) -> np.ndarray:
        return self.placed.mask

    def meta(self) -> TrackResultMeta:
        mask = self.placed.mask
        return TrackResultMeta(
            track_id=self.model.track_id,
            score=self.model.score,
            object_score=self.model.object_score,
            present=self.model.present,
            bbox=mask_bbox(mask) if self.placed.propagated else self.model.bbox,
            area=int(np.count_nonzero(mask)) if self.placed.propagated else self.model.area,
            source=self.placed.source,
            model_seq=self.placed.model_seq if self.placed.propagated else None,
            age_ms=self.age_ms,
        )


@dataclass(frozen=True, slots=True)
class PlacedFrame:
    """An outgoing frame with the masks to draw on it; `result` is the model output the
    masks come from (None before the first one)."""

    frame: Frame
    result: StreamResult | None
    tracks: tuple[PlacedTrack, ...]

    @classmethod
    def from_result(cls, out: StreamResult) -> PlacedFrame:
        """A model result shown on its own frame (the model-rate path)."""
        seq = out.frame.seq
        return cls(
            out.frame,
            out,
            tuple(
                PlacedTrack(t, PropagatedMask(t.track_id, t.mask, seq, False, False), 0.0)
                for t in out.result.tracks
            ),
        )


class SourceRateMasks:
    """Feeds every incoming frame to a `MaskPropagator` and places the newest model
    masks on any frame. `observe` runs on the source's thread; `place` on a compositor
    thread (serialised here, so several consumers may share one instance)."""

    def __init__(self, settings: MotionSettings | None = None) -> None:
        self.propagator = MaskPropagator(settings)
        self._latest: StreamResult | None = None
        self._lock = threading.Lock()

    def observe(self, frame: Frame) -> None:
        self.propagator.add_frame(frame.seq, frame.image)

    def on_result(self, out: StreamResult) -> None:
        latest = self._latest
        if latest is None or out.frame.seq > latest.frame.seq:
            self._latest = out

    def place(self, frame: Frame) -> PlacedFrame:
        with self._lock:
            latest = self._latest
            if latest is None:
                return PlacedFrame(frame, None, ())
            propagator = self.propagator
            model_frame = latest.frame
            if propagator.model_seq != model_frame.seq:
                propagator.set_masks(
                    model_frame.seq, [(t.track_id, t.mask) for t in latest.result.tracks]
                )
            placed = propagator.masks_for(frame.seq, (frame.width, frame.height))
        age_ms = max(0.0, (frame.capture_ts - model_frame.capture_ts) * 1000.0)
        tracks = tuple(
            PlacedTrack(model, p, 0.0 if not p.propagated else age_ms)
            for model, p in zip(latest.result.tracks, placed, strict=True)
        )
        return PlacedFrame(frame, latest, tracks)
