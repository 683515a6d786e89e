"""A decoded frame with the timestamps the pipeline's latency metrics come from."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import numpy as np

CaptureSource = Literal["stream", "receive"]


@dataclass(slots=True)
class Frame:
    seq: int  # per source, monotonic
    image: np.ndarray  # H x W x 3 RGB uint8, C-contiguous
    capture_ts: float  # epoch seconds
    capture_ts_source: CaptureSource  # "receive" when the source has no wall clock
    recv_ts: float
    pts: int | None = None
    time_base: Fraction | None = None
    source_frame: Any = None  # e.g. the original av.VideoFrame

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


def frame_from_av(
    av_frame: Any, seq: int, recv_ts: float, capture_ts: float | None = None
) -> Frame:
    """Convert an av.VideoFrame (call from a reader thread, never on the event loop)."""
    image = av_frame.to_ndarray(format="rgb24")
    return Frame(
        seq=seq,
        image=np.ascontiguousarray(image),
        capture_ts=recv_ts if capture_ts is None else capture_ts,
        capture_ts_source="receive" if capture_ts is None else "stream",
        recv_ts=recv_ts,
        pts=av_frame.pts,
        time_base=av_frame.time_base,
        source_frame=av_frame,
    )
