"""Feed events without a server: the `?events=` parameter, the bounded per-feed queue,
and lost/found from the `present` flag of consecutive results."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from streamseg.media.frame import Frame
from streamseg.media.sources import SourceOptions, SourceState
from streamseg.model.tracker import FrameResult, StageTimes, TrackResult
from streamseg.pipeline.stream import StreamResult
from streamseg.server.stream_events import (
    QUEUE_BOUND,
    CameraEvents,
    EventQueue,
    parse_events,
)


def test_parse_events() -> None:
    assert parse_events(None) == parse_events("") == parse_events("none") == frozenset()
    assert parse_events("all") == {"state", "tracks"}
    assert parse_events("state") == {"state"}
    assert parse_events("tracks, state") == {"state", "tracks"}
    with pytest.raises(ValueError, match="state, tracks"):
        parse_events("state,gossip")


async def test_the_queue_is_bounded_and_filtered() -> None:
    queue = EventQueue(frozenset({"state"}))
    queue.put("tracks", "ignored")
    for i in range(QUEUE_BOUND + 5):
        queue.put("state", str(i))
    assert queue.dropped == 5
    assert await queue.take() == "5"  # the oldest went first
    queue.close()
    rest = [await queue.take() for _ in range(QUEUE_BOUND - 1)]
    assert rest[-1] == str(QUEUE_BOUND + 4) and await queue.take() is None


class _Camera:
    """What CameraEvents reads of a camera: its session's sinks and its reader."""

    def __init__(self) -> None:
        self.sinks: list[Callable[[StreamResult], object]] = []
        self.session = SimpleNamespace(id="dock", add_sink=self._add_sink)
        self.reader = SimpleNamespace(
            state=SourceState.STREAMING, options=SourceOptions(stall_timeout_s=2), error=None
        )
        self.latest: StreamResult | None = None

    def _add_sink(self, sink: Callable[[StreamResult], object]) -> Callable[[], None]:
        self.sinks.append(sink)
        return lambda: self.sinks.remove(sink)

    def publish(self, seq: int, present: dict[int, bool]) -> None:
        mask = np.zeros((4, 4), bool)
        tracks = tuple(
            TrackResult(tid, mask, np.zeros((16, 16), np.float32), 0.9, 0.9, p, None)
            for tid, p in present.items()
        )
        frame = Frame(seq, np.zeros((4, 4, 3), np.uint8), 100.0 + seq, "receive", 100.0 + seq)
        out = StreamResult("dock", frame, FrameResult(seq, seq, 4, 4, tracks, StageTimes()), 0, 0)
        for sink in list(self.sinks):
            sink(out)


def _drain(queue: EventQueue) -> list[dict[str, Any]]:
    items = []
    while queue._items:
        items.append(json.loads(queue._items.popleft()))
    return items


async def test_state_and_track_events() -> None:
    camera = _Camera()
    events = CameraEvents(camera)  # type: ignore[arg-type]
    queue = events.subscribe(frozenset({"state", "tracks"}))
    (first,) = _drain(queue)
    assert first["state"] == "streaming" and first["previous"] is None

    camera.reader.state = SourceState.STALLED
    events.check_state()
    events.check_state()  # no change, no event
    (stalled,) = _drain(queue)
    assert (stalled["previous"], stalled["reason"]) == ("streaming", "no_frames")
    assert stalled["message"] == "no frame for 2 s"

    camera.publish(1, {1: True})  # a new track that starts visible is found
    camera.publish(2, {1: True, 2: False})  # a new one that is not: nothing
    camera.publish(3, {1: False, 2: True})
    camera.publish(4, {2: True})  # track 1 removed: no event
    got = [(e["event"], e["track_id"], e["seq"]) for e in _drain(queue)]
    assert got == [("found", 1, 1), ("lost", 1, 3), ("found", 2, 3)]

    only_state = events.subscribe(frozenset({"state"}))
    camera.publish(5, {2: False})
    assert [e["event"] for e in _drain(only_state)] == ["state"]
    assert [e["event"] for e in _drain(queue)] == ["lost"]

    events.unsubscribe(queue)
    events.unsubscribe(only_state)
    assert camera.sinks == [] and events._watcher is None
    await asyncio.sleep(0)
