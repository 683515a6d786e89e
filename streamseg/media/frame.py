"""A decoded frame and the timestamps the pipeline's latency metrics come from.

Every frame carries its own stamps from the source onwards, so latency per stage is
measured on the frame itself rather than inferred from queue lengths or averages.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import numpy as np

CaptureSource = Literal["stream", "receive"]


@dataclass(slots=True)
class Frame:
    """One RGB frame of one source.

    `capture_ts_source` is "receive" when the source has no wall clock (WebRTC's pts is
    RTP time from the first frame); `capture_ts` then equals `recv_ts`, and any latency
    measured from it excludes the sender and network. `source_frame` keeps the original
    (e.g. av.VideoFrame) so an overlay can reuse its pts and time_base.
    """

    seq: int
    image: np.ndarray
    capture_ts: float
    capture_ts_source: CaptureSource
    recv_ts: float
    pts: int | None = None
    time_base: Fraction | None = None
    source_frame: object | None = None

    def __post_init__(self) -> None:
        # Checked here, on the producer's thread, so a bad frame fails at its source
        # instead of deep inside the inference thread.
        image = self.image
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"frame image must be H x W x 3 uint8 RGB, got {image.shape} {image.dtype}"
            )
        if not image.flags.c_contiguous:
            raise ValueError("frame image must be C-contiguous (use np.ascontiguousarray)")
        if self.capture_ts_source not in ("stream", "receive"):
            raise ValueError(f"unknown capture_ts_source {self.capture_ts_source!r}")

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


def frame_from_av(
    av_frame: Any, seq: int, recv_ts: float, capture_ts: float | None = None
) -> Frame:
    """Convert an av.VideoFrame to a Frame.

    Costs ~2 ms at 720p, so call it from a reader thread or executor, never on the
    event loop. Without `capture_ts` the frame is flagged as receive-timed.
    """
    image = np.ascontiguousarray(av_frame.to_ndarray(format="rgb24"))
    return Frame(
        seq=seq,
        image=image,
        capture_ts=recv_ts if capture_ts is None else capture_ts,
        capture_ts_source="receive" if capture_ts is None else "stream",
        recv_ts=recv_ts,
        pts=av_frame.pts,
        time_base=av_frame.time_base,
        source_frame=av_frame,
    )


@dataclass(slots=True)
class Stamps:
    """Wall-clock (epoch seconds) stamps of one frame's trip through the pipeline.

    The source's stamps are copied from the frame; the pipeline fills the rest as the
    frame passes each stage, and a stage stays None until it has happened.
    """

    capture_ts: float
    recv_ts: float
    infer_start: float | None = None
    infer_end: float | None = None
    sent_ts: float | None = None

    @classmethod
    def of(cls, frame: Frame) -> Stamps:
        return cls(capture_ts=frame.capture_ts, recv_ts=frame.recv_ts)

    def latency_breakdown(self) -> dict[str, float]:
        """Stage durations in seconds; stages whose end is not stamped yet are left out.

        Keys: capture_to_recv, slot_wait, inference, send, capture_to_sent.
        """
        stages: dict[str, float] = {"capture_to_recv": self.recv_ts - self.capture_ts}
        if self.infer_start is not None:
            stages["slot_wait"] = self.infer_start - self.recv_ts
        if self.infer_start is not None and self.infer_end is not None:
            stages["inference"] = self.infer_end - self.infer_start
        if self.sent_ts is not None:
            if self.infer_end is not None:
                stages["send"] = self.sent_ts - self.infer_end
            stages["capture_to_sent"] = self.sent_ts - self.capture_ts
        return stages
