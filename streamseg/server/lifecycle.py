"""Streams that ended give their slot back.

A camera stream whose source ended for good (its reader stopped: a file that was not
looping ran out) stays visible for `ended_stream_ttl_s` so a client can read its last
state and error, then it is closed like a DELETE would. When the stream limit is
reached, an ended camera is closed at once to make room. (WebRTC peers that never
connect are closed by their own setup timer, `media/webrtc.py`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from streamseg.media.sources import SourceState
from streamseg.server.cameras import CameraStream, cameras_of, close_camera, detach_camera
from streamseg.server.runtime import Runtime

log = logging.getLogger(__name__)


def _ended(camera: CameraStream) -> bool:
    return camera.reader.state is SourceState.STOPPED and camera.reader.join(0)


class Reaper:
    """Watches camera streams (once a second, on the loop: a few attribute reads per
    stream) and closes those ended longer than the retention time."""

    def __init__(self, runtime: Runtime, ttl_s: float, period_s: float = 1.0) -> None:
        self.runtime, self.ttl_s = runtime, ttl_s
        self.period_s = min(period_s, max(ttl_s / 4, 0.05))
        self._ended_at: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())
        self.runtime.make_room = self.make_room

    async def stop(self) -> None:
        self.runtime.make_room = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            try:
                await self.sweep()
            except Exception:
                log.exception("reaping ended streams failed")

    async def sweep(self) -> None:
        now = time.monotonic()
        cameras = cameras_of(self.runtime)
        self._ended_at = {sid: t for sid, t in self._ended_at.items() if sid in cameras}
        for sid, camera in list(cameras.items()):
            if not _ended(camera):
                continue
            since = self._ended_at.setdefault(sid, now)
            if now - since >= self.ttl_s:
                await self._reap(sid, camera)

    async def _reap(self, sid: str, camera: CameraStream) -> None:
        log.info("stream %s ended %.0f s ago: closed", sid, self.ttl_s)
        self._ended_at.pop(sid, None)
        self.runtime.metrics.streams_reaped.labels(camera.session.kind, "ended").inc()
        await close_camera(self.runtime, sid)

    def make_room(self) -> None:
        """Called by `open_stream` at the stream limit: close the camera that ended
        first, if any (its reader thread is over, so this does not block)."""
        cameras = cameras_of(self.runtime).items()
        ended = [(self._ended_at.get(sid, 0.0), sid, c) for sid, c in cameras if _ended(c)]
        if not ended:
            return
        _, sid, camera = min(ended, key=lambda e: e[0])
        log.info("stream %s ended: closed to make room for a new stream", sid)
        self._ended_at.pop(sid, None)
        self.runtime.metrics.streams_reaped.labels(camera.session.kind, "ended").inc()
        detach_camera(self.runtime, sid)  # its reader thread has ended: nothing to join
