"""Turn a pipeline result into the wire message every sink sends."""

from __future__ import annotations

from streamseg.pipeline.stream import StreamResult
from streamseg.protocol.masks import MaskEncoding
from streamseg.protocol.messages import FrameResultMessage, FrameTimes, TrackResultMeta


def result_message(
    out: StreamResult, sent_ts: float, dropped: int, encoding: MaskEncoding | None = None
) -> FrameResultMessage:
    frame, result = out.frame, out.result
    return FrameResultMessage(
        stream_id=out.stream_id,
        seq=frame.seq,
        width=frame.width,
        height=frame.height,
        times=FrameTimes(
            capture_ts=frame.capture_ts,
            capture_ts_source=frame.capture_ts_source,
            recv_ts=frame.recv_ts,
            infer_start=out.infer_start,
            infer_end=out.infer_end,
            sent_ts=sent_ts,
        ),
        tracks=tuple(
            TrackResultMeta(t.track_id, t.score, t.object_score, t.present, t.bbox, t.area)
            for t in result.tracks
        ),
        dropped_frames=dropped,
        encoding=encoding,
        stages_ms={k: round(v * 1000, 3) for k, v in result.times.as_dict().items()},
    )
