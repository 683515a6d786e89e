"""Events on the websocket mask feed (opt-in with `?events=`): the camera's source state
when it changes, and tracks lost or found when their `present` flag flips; and closing
every feed with 1012 and a reason when the server shuts down.

A robot cannot tell a silent socket from a dead camera; these say which. The state is
sampled on the loop every `POLL_S` (the reader judges `stalled` from the clock, so
there is no thread-side transition to hook), track changes are diffed per result.
Each feed gets its own small bounded queue: events are rare, but a client that stops
reading must not grow it without bound (the oldest are dropped and counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from streamseg.media.sources import SourceState
from streamseg.pipeline.stream import StreamResult
from streamseg.protocol.messages import EVENT_KINDS, state_event_message, track_event_message

if TYPE_CHECKING:
    from streamseg.server.cameras import CameraStream
    from streamseg.server.runtime import Runtime

log = logging.getLogger(__name__)
POLL_S = 0.1
QUEUE_BOUND = 64
SHUTDOWN_REASON = "server shutting down"


def parse_events(value: str | None) -> frozenset[str]:
    """`?events=` as a set of kinds: `state`, `tracks`, a comma list of them, `all`, or
    `none`/empty (the default, so clients from before revision 3 never see a message
    type they do not know). ValueError names what is allowed."""
    if value is None or value.strip() in ("", "none"):
        return frozenset()
    if value.strip() == "all":
        return frozenset(EVENT_KINDS)
    kinds = frozenset(v.strip() for v in value.split(","))
    unknown = kinds - set(EVENT_KINDS)
    if unknown:
        raise ValueError(
            f"events must be all, none or a comma list of {', '.join(EVENT_KINDS)}; "
            f"got {sorted(unknown)[0][:40]!r}"
        )
    return kinds


class EventQueue:
    """One feed's pending events (text messages), oldest dropped past `QUEUE_BOUND`."""

    def __init__(self, kinds: frozenset[str]) -> None:
        self.kinds = kinds
        self.dropped = 0
        self._items: deque[str] = deque()
        self._ready = asyncio.Event()
        self.closed = False

    def put(self, kind: str, text: str) -> None:
        if kind not in self.kinds or self.closed:
            return
        if len(self._items) >= QUEUE_BOUND:
            self._items.popleft()
            self.dropped += 1
        self._items.append(text)
        self._ready.set()

    async def take(self) -> str | None:
        """The next event; None once the queue is closed and empty."""
        while not self._items:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def close(self) -> None:
        self.closed = True
        self._ready.set()


def state_reason(camera: CameraStream, state: SourceState) -> tuple[str, str]:
    """A machine-readable reason and a sentence for entering `state`."""
    reader = camera.reader
    if state is SourceState.STREAMING:
        return "frames", "frames are arriving"
    if state is SourceState.STALLED:
        return "no_frames", f"no frame for {reader.options.stall_timeout_s:g} s"
    if state is SourceState.CONNECTING:
        return "opening", "opening the source"
    if state is SourceState.STOPPED:  # deletion and shutdown are told by the feed itself
        if reader.kind == "file":
            return "ended", "the file ended"
        return "stopped", "the source was stopped"
    error = reader.error
    if error is None:
        return "error", "the source failed"
    return error.reason, error.message


class CameraEvents:
    """The events of one camera, fanned out to its subscribed feeds. Runs only while
    at least one feed subscribes: a watcher task and a result sink, both on the loop."""

    def __init__(self, camera: CameraStream) -> None:
        self.camera = camera
        self._queues: set[EventQueue] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._remove_sink: Callable[[], None] | None = None
        self._state: SourceState | None = None
        self._present: dict[int, bool] = {}

    def subscribe(self, kinds: frozenset[str]) -> EventQueue:
        """A queue for one feed; it starts with the current state (`previous` null)."""
        queue = EventQueue(kinds)
        if not self._queues:
            self._state = self.camera.reader.state
            latest = self.camera.latest
            self._present = (
                {} if latest is None else {t.track_id: t.present for t in latest.result.tracks}
            )
            self._remove_sink = self.camera.session.add_sink(self._on_result)
            self._watcher = asyncio.ensure_future(self._watch())
        self._queues.add(queue)
        state = self._state or self.camera.reader.state
        queue.put("state", self._state_message(state, None))
        return queue

    def unsubscribe(self, queue: EventQueue) -> None:
        queue.close()
        self._queues.discard(queue)
        if not self._queues:
            if self._watcher is not None:
                self._watcher.cancel()
                self._watcher = None
            if self._remove_sink is not None:
                self._remove_sink()
                self._remove_sink = None

    def stopped(self, reason: str, message: str) -> str:
        """The final `stopped` event (deleted, shutdown), for a feed's last words."""
        previous = self._state.value if self._state is not None else None
        return state_event_message(
            self.camera.session.id, "stopped", previous, reason, message, time.time()
        )

    def _state_message(self, state: SourceState, previous: SourceState | None) -> str:
        reason, message = state_reason(self.camera, state)
        return state_event_message(
            self.camera.session.id,
            state.value,
            None if previous is None else previous.value,
            reason,
            message,
            time.time(),
        )

    def _emit(self, kind: str, text: str) -> None:
        for queue in list(self._queues):
            queue.put(kind, text)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                self.check_state()
            except Exception:  # a bug here must not end the watcher silently
                log.exception("state events of %s", self.camera.session.id)

    def check_state(self) -> None:
        state = self.camera.reader.state
        if state is not self._state:
            previous, self._state = self._state, state
            self._emit("state", self._state_message(state, previous))

    def _on_result(self, out: StreamResult) -> None:
        """Runs on the loop for every result: `lost`/`found` when `present` flips. A new
        track counts as absent before, so one that starts visible is `found`."""
        present = {t.track_id: t.present for t in out.result.tracks}
        for track_id, now in present.items():
            if now != self._present.get(track_id, False):
                event = "found" if now else "lost"
                text = track_event_message(
                    out.stream_id, event, track_id, out.frame.seq, out.frame.capture_ts
                )
                self._emit("tracks", text)
        self._present = present


_events: weakref.WeakKeyDictionary[CameraStream, CameraEvents] = weakref.WeakKeyDictionary()


def events_of(camera: CameraStream) -> CameraEvents:
    found = _events.get(camera)
    if found is None:
        found = _events[camera] = CameraEvents(camera)
    return found


# ---- shutdown ------------------------------------------------------------------------


async def close_feeds(runtime: Runtime, timeout_s: float = 2.0) -> int:
    """Close every mask feed with 1012 and a reason (a `stopped` event first where
    asked for) before uvicorn closes the sockets itself, with 1012 and no reason.
    Returns how many feeds were open."""
    from streamseg.server.cameras import cameras_of

    runtime.shutting_down = True
    cameras = list(cameras_of(runtime).values())
    count = sum(len(c.feeds) for c in cameras)
    for camera in cameras:
        for mailbox in list(camera.feeds):
            mailbox.close()  # the feed's sender ends and closes its socket
    deadline = time.monotonic() + timeout_s
    while any(c.feeds for c in cameras) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return count


async def before_shutdown(runtime: Runtime) -> None:
    """What a server runs before uvicorn's own shutdown (see `serving.py`)."""
    with contextlib.suppress(Exception):
        count = await close_feeds(runtime)
        if count:
            log.info("closed %d websocket feed(s): %s", count, SHUTDOWN_REASON)
