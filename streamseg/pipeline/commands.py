"""Client messages (data channel, websocket, REST) applied to a stream's tracker on
the inference thread; one implementation for every surface."""

from __future__ import annotations

from typing import Any

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

        def add() -> Any:
            track_id = msg.track_id
            if track_id is None:
                track_id = tracker.next_track_id(PromptLimits().max_track_id)
            return tracker.add_prompt(
                track_id,
                points=list(msg.points) or None,
                labels=list(msg.labels) or None,
                box=msg.box,
                frame_seq=msg.frame_seq,
                clear_old_points=msg.clear_old_points,
            )

        outcome = await worker.submit(add)
        return {
            "track_id": outcome.track_id,
            "created": outcome.created,
            "requested_seq": outcome.requested_seq,
            "applied_seq": outcome.applied_seq,
            "exact": outcome.exact,
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
