"""Turn a pipeline result into the wire message every sink sends."""

from __future__ import annotations

from streamseg.pipeline.egress import PlacedFrame
from streamseg.pipeline.stream import StreamResult
from streamseg.protocol.masks import MaskEncoding
from streamseg.protocol.messages import FrameResultMessage, FrameTimes


def result_message(
    out: StreamResult, sent_ts: float, dropped: int, encoding: MaskEncoding | None = None
) -> FrameResultMessage:
    """The message for a model result shown on its own frame (model rate)."""
    return placed_message(PlacedFrame.from_result(out), out.stream_id, sent_ts, dropped, encoding)


def placed_message(
    placed: PlacedFrame,
    stream_id: str,
    sent_ts: float,
    dropped: int,
    encoding: MaskEncoding | None = None,
) -> FrameResultMessage:
    """The message for an outgoing source-rate frame: its own seq, size and times, the
    inference times and stages of the model result its masks come from, and per track
    whether the mask was computed on this frame or carried forward (and how old it is)."""
    frame, out = placed.frame, placed.result
    infer_start = frame.recv_ts if out is None else out.infer_start
    infer_end = frame.recv_ts if out is None else out.infer_end
    on_model_frame = out is not None and out.frame.seq == frame.seq
    return FrameResultMessage(
        stream_id=stream_id,
        seq=frame.seq,
        width=frame.width,
        height=frame.height,
        times=FrameTimes(
            capture_ts=frame.capture_ts,
            capture_ts_source=frame.capture_ts_source,
            recv_ts=frame.recv_ts,
            infer_start=infer_start,
            infer_end=infer_end,
            sent_ts=sent_ts,
        ),
        tracks=tuple(t.meta() for t in placed.tracks),
        dropped_frames=dropped,
        encoding=encoding,
        stages_ms=(
            {k: round(v * 1000, 3) for k, v in out.result.times.as_dict().items()}
            if out is not None and on_model_frame
            else None
        ),
    )
