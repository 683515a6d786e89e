"""Client messages (data channel, websocket, REST) applied to a stream's tracker on
the inference thread; one implementation for every surface."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from streamseg.model.errors import FutureFrameError
from streamseg.pipeline.stream import StreamSession
from streamseg.pipeline.worker import InferenceWorker
from streamseg.protocol.prompts import (
    AddPrompt,
    ClientMessage,
    PromptLimits,
    RemoveTrack,
    ResetTracks,
)


async def apply_to_tracker(
    worker: InferenceWorker, stream: StreamSession, msg: ClientMessage
) -> dict[str, Any]:
    """Run one validated message; tracker errors propagate as typed exceptions."""
    tracker = stream.tracker
    if isinstance(msg, AddPrompt):

        def add() -> tuple[Any, bool]:
            _check_not_ahead(stream, msg.frame_seq)
            track_id = msg.track_id
            if track_id is None:
                track_id = tracker.next_track_id(PromptLimits().max_track_id)
            prompt, moved = _onto_a_model_frame(stream, msg)
            outcome = tracker.add_prompt(
                track_id,
                points=list(prompt.points) or None,
                labels=list(prompt.labels) or None,
                box=prompt.box,
                frame_seq=prompt.frame_seq,
                clear_old_points=prompt.clear_old_points,
            )
            return outcome, moved

        outcome, moved = await worker.submit(add)
        return {
            "track_id": outcome.track_id,
            "created": outcome.created,
            "requested_seq": msg.frame_seq,
            "applied_seq": outcome.applied_seq,
            "exact": outcome.exact and not moved,
            "motion_compensated": moved,
            "caught_up_frames": outcome.caught_up_frames,
            "score": outcome.result.score,
            "bbox": outcome.result.bbox,
        }
    if isinstance(msg, RemoveTrack):
        await worker.submit(lambda: tracker.remove_track(msg.track_id))
        return {"removed": msg.track_id}
    if isinstance(msg, ResetTracks):
        await worker.submit(tracker.reset)
        return {"reset": True}
    raise TypeError(f"{type(msg).__name__} is not a tracker command")


def _check_not_ahead(stream: StreamSession, seq: int | None) -> None:
    """A prompt names a frame the client was shown, so never one the stream has not
    received: a seq from the future (a client bug, or another stream's numbering)
    would otherwise land on the newest frame and be acked as if it meant that."""
    if seq is None:
        return
    known = [s for s in (stream.newest_seq, stream.tracker.last_seq) if s is not None]
    if known and seq > max(known):
        raise FutureFrameError(
            f"frame_seq {seq} is ahead of the newest frame this stream has received "
            f"({max(known)}); name a frame you were shown, or omit frame_seq for the newest"
        )


def _onto_a_model_frame(stream: StreamSession, msg: AddPrompt) -> tuple[AddPrompt, bool]:
    """A click on a frame shown at source rate that the model never saw: moved to the
    newest frame the model did see before it, following the video's motion between the
    two, so it lands on the object the user clicked. Runs on the inference thread."""
    placer, seq = stream.source_rate, msg.frame_seq
    tracker = stream.tracker
    if placer is None or seq is None:
        return msg, False
    target = tracker.history_seq_before(seq)
    if target is None or target == seq:
        return msg, False
    corners = list(msg.points)
    if msg.box is not None:
        x0, y0, x1, y1 = msg.box
        corners += [(x0, y0), (x1, y1), (x0, y1), (x1, y0)]
    width, height = tracker.frame_size(seq)
    if not all(0 <= x <= width and 0 <= y <= height for x, y in corners):
        return msg, False  # left for the tracker to refuse as out_of_frame, not clipped in
    mapped = placer.propagator.map_points(np.array(corners, np.float64), seq, target, msg.box)
    if mapped is None:
        return msg, False
    size = tracker.frame_size(target)
    mapped = np.clip(mapped, 0, np.array(size, np.float64))
    points = tuple((float(x), float(y)) for x, y in mapped[: len(msg.points)])
    box = msg.box
    if box is not None:
        quad = mapped[len(msg.points) :]
        lo, hi = quad.min(axis=0), quad.max(axis=0)
        if hi[0] - lo[0] < 1 or hi[1] - lo[1] < 1:
            return msg, False
        box = (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))
    return msgspec.structs.replace(msg, points=points, box=box, frame_seq=target), True
