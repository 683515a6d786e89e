"""Foxglove bridge: every camera stream's results as Foxglove channels, served by the
Foxglove SDK's own WebSocket server (`streamseg serve --foxglove-port 8765`).

Per camera stream `<id>` (topics under `/streamseg/<id>/`):

- `camera`: the model frame as `foxglove.CompressedImage` (JPEG);
- `overlay`: the same frame with the masks drawn (JPEG);
- per track `<n>`: `tracks/<n>/mask`, `foxglove.RawImage` mono8 (255 inside, 0
  outside, the frame's size), and `tracks/<n>/annotations`, `foxglove.ImageAnnotations`
  (the box as a line loop in the track's colour, a label with id and score, the
  scores as metadata).

Every message of one result carries the frame's capture time (header and log time)
and the stream's `frame_id`, so Foxglove's Image panel pairs them exactly.

Bounded everywhere, policy `latest`: a stream's results reach the bridge through a
one-slot mailbox (a newer result replaces one not yet published, counted as
`streamseg_frames_dropped_total{where="foxglove"}`), and one encoder thread takes the
newest result of each stream; the event loop only stores results. Images are encoded
only for channels someone subscribed to. Behind that, the SDK keeps a queue per client
(`foxglove_backlog` messages, dropping the oldest message when full and logging it
once); it has no hook to wait for a socket to drain, so the kernel's socket buffers
can still hold a slow reader's backlog (docs/ROBOTS.md).

The Foxglove protocol has no authentication: whoever reaches the port sees every
stream. Hence loopback only unless `--insecure-foxglove-on-network` (docs/SECURITY.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np
from prometheus_client import Counter

from streamseg.config import Settings
from streamseg.media.overlay import draw_overlay, track_colour
from streamseg.media.slot import LatestSlot, WorkSignal
from streamseg.model.tracker import TrackResult
from streamseg.pipeline.stream import StreamResult
from streamseg.server.auth import is_loopback

if TYPE_CHECKING:
    from foxglove import Context
    from foxglove.channels import (
        CompressedImageChannel,
        ImageAnnotationsChannel,
        RawImageChannel,
    )
    from foxglove.messages import ImageAnnotations, Timestamp
    from foxglove.websocket import WebSocketServer

    from streamseg.server.cameras import CameraStream
    from streamseg.server.runtime import Runtime

log = logging.getLogger(__name__)
TOPIC_PREFIX = "/streamseg"
# How often the loop looks for camera streams added or removed. The registry has no
# change hook; a dict comparison every 0.2 s costs microseconds.
SYNC_INTERVAL_S = 0.2
DROP_WHERE = "foxglove"
LABEL_FONT_SIZE = 14.0
BOX_THICKNESS = 2.0


class FoxgloveConfigError(RuntimeError):
    """The bridge cannot be started as configured (address refused, SDK missing)."""


def foxglove_bind_problem(settings: Settings) -> str | None:
    """Why the Foxglove server must not listen as configured, or None. Tokens do not
    help here: the Foxglove protocol has none, so only the explicit flag allows it."""
    if settings.foxglove_port is None:
        return None
    if not 0 <= settings.foxglove_port <= 65535:
        return f"--foxglove-port must be 0-65535, got {settings.foxglove_port}"
    if settings.foxglove_port != 0 and settings.foxglove_port == settings.port:
        return "--foxglove-port must differ from the server's own port"
    if is_loopback(settings.foxglove_host) or settings.insecure_foxglove_on_network:
        return None
    return (
        f"refusing to serve Foxglove on {settings.foxglove_host!r} (beyond loopback): the "
        "Foxglove protocol has no authentication, so anyone who reaches the port would see "
        "every camera; pass --insecure-foxglove-on-network to allow it (docs/SECURITY.md)"
    )


def check_foxglove(settings: Settings) -> None:
    """At app creation: FoxgloveConfigError when the bridge is on but cannot run."""
    if settings.foxglove_port is None:
        return
    problem = foxglove_bind_problem(settings)
    if problem is not None:
        raise FoxgloveConfigError(problem)
    try:
        import foxglove  # noqa: F401
    except ImportError:
        raise FoxgloveConfigError(
            "--foxglove-port needs the Foxglove SDK: pip install 'streamseg[foxglove]'"
        ) from None


def mask_mono8(mask: np.ndarray) -> bytes:
    """A bool mask as mono8 rows: 255 inside, so it is visible as an image as is."""
    return (np.asarray(mask, dtype=bool).view(np.uint8) * np.uint8(255)).tobytes()


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, jpeg = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(jpeg.tobytes())


@dataclass(eq=False)
class _TrackChannels:
    mask: RawImageChannel
    annotations: ImageAnnotationsChannel

    def close(self) -> None:
        self.mask.close()
        self.annotations.close()


@dataclass(eq=False)
class _StreamChannels:
    """One camera stream on the bridge. The loop owns `slot` and `remove_sink`; the
    encoder thread owns the channels (it creates, logs to and closes them)."""

    stream_id: str
    camera: CameraStream
    frame_id: str
    slot: LatestSlot[StreamResult]
    remove_sink: Callable[[], None]
    retired: bool = False
    image: CompressedImageChannel | None = None
    overlay: CompressedImageChannel | None = None
    tracks: dict[int, _TrackChannels] = field(default_factory=dict)

    def close_channels(self) -> None:
        for channel in (self.image, self.overlay):
            if channel is not None:
                channel.close()
        for track in self.tracks.values():
            track.close()
        self.image = self.overlay = None
        self.tracks.clear()


class FoxgloveBridge:
    """The SDK's WebSocket server plus the channels of every camera stream."""

    def __init__(
        self,
        runtime: Runtime,
        settings: Settings,
        frame_id_for: Callable[[str], str | None] = lambda _: None,
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self.frame_id_for = frame_id_for
        self._signal = WorkSignal()
        self._lock = threading.Lock()
        self._streams: dict[str, _StreamChannels] = {}  # guarded by _lock
        self._retired: list[_StreamChannels] = []  # guarded by _lock
        self._context: Context | None = None
        self._server: WebSocketServer | None = None
        self._thread: threading.Thread | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._messages = Counter(
            "streamseg_foxglove_messages",
            "Messages handed to the Foxglove server, by channel kind (camera, overlay, "
            "mask, annotations); kinds nobody subscribed to are not encoded",
            ["kind"],
            registry=runtime.metrics.registry,
        )
        self._errors = Counter(
            "streamseg_foxglove_errors",
            "Results the Foxglove bridge failed to publish",
            registry=runtime.metrics.registry,
        )

    @property
    def port(self) -> int | None:
        return None if self._server is None else self._server.port

    # ---- lifecycle (loop) -----------------------------------------------------------

    def start(self) -> None:
        """Start the SDK's server, the encoder thread and the stream watcher."""
        import foxglove

        s = self.settings
        self._context = foxglove.Context()  # our own, so nothing else logs into it
        self._server = foxglove.start_server(
            name="streamseg",
            host=s.foxglove_host,
            port=s.foxglove_port,
            context=self._context,
            message_backlog_size=s.foxglove_backlog,
        )
        self._thread = threading.Thread(target=self._run, name="streamseg-foxglove", daemon=True)
        self._thread.start()
        self._sync_task = asyncio.get_running_loop().create_task(self._watch())
        log.warning(
            "Foxglove bridge on ws://%s:%d (no authentication: anyone who reaches it sees "
            "every camera)",
            _url_host(s.foxglove_host),
            self._server.port,
        )

    async def stop(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
        with self._lock:
            for state in self._streams.values():
                self._detach_locked(state)
            self._streams.clear()
        self._signal.close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
        for state in self._retired:
            state.close_channels()
        self._retired.clear()
        if self._server is not None:
            await asyncio.to_thread(self._server.stop)
            self._server = None

    async def _watch(self) -> None:
        while True:
            try:
                self.sync()
            except Exception:  # keep watching: one bad stream must not end the bridge
                log.exception("Foxglove bridge: syncing streams failed")
            await asyncio.sleep(SYNC_INTERVAL_S)

    def sync(self) -> None:
        """Attach camera streams that appeared (or were created again), retire those
        that went away. Runs on the loop."""
        from streamseg.server.cameras import cameras_of

        cameras = dict(cameras_of(self.runtime))
        changed = False
        with self._lock:
            for sid, state in list(self._streams.items()):
                if cameras.get(sid) is not state.camera or state.camera.session.closed:
                    self._detach_locked(state)
                    del self._streams[sid]
                    changed = True
            for sid, camera in cameras.items():
                if sid not in self._streams and not camera.session.closed:
                    self._streams[sid] = self._attach(sid, camera)
                    changed = True
        if changed:
            self._signal.notify()

    def _attach(self, sid: str, camera: CameraStream) -> _StreamChannels:
        metrics = self.runtime.metrics
        slot: LatestSlot[StreamResult] = LatestSlot(
            on_drop=lambda _: metrics.count_drop(sid, DROP_WHERE), signal=self._signal
        )
        remove = camera.session.add_sink(slot.put)  # on the loop: only stores it
        return _StreamChannels(sid, camera, self.frame_id_for(sid) or sid, slot, remove)

    def _detach_locked(self, state: _StreamChannels) -> None:
        state.remove_sink()
        state.slot.close()
        state.retired = True
        self._retired.append(state)

    # ---- encoder thread -------------------------------------------------------------

    def _run(self) -> None:
        while self._signal.wait():
            with self._lock:
                states = list(self._streams.values())
                retired, self._retired = self._retired, []
            for state in retired:
                state.close_channels()
            for state in states:
                out = state.slot.take_nowait()
                if out is None:
                    if state.image is None:
                        self._open_stream(state)  # advertise before the first result
                    continue
                try:
                    self.publish(state, out)
                except Exception:
                    self._errors.inc()
                    log.exception("Foxglove bridge: publishing %s failed", state.stream_id)

    def _open_stream(self, state: _StreamChannels) -> None:
        from foxglove.channels import CompressedImageChannel

        base = f"{TOPIC_PREFIX}/{state.stream_id}"
        meta = {"stream_id": state.stream_id, "frame_id": state.frame_id}
        state.image = CompressedImageChannel(f"{base}/camera", metadata=meta, context=self._context)
        state.overlay = CompressedImageChannel(
            f"{base}/overlay", metadata=meta, context=self._context
        )

    def _sync_tracks(self, state: _StreamChannels, tracks: tuple[TrackResult, ...]) -> None:
        from foxglove.channels import ImageAnnotationsChannel, RawImageChannel

        wanted = {t.track_id for t in tracks}
        for track_id in [t for t in state.tracks if t not in wanted]:
            state.tracks.pop(track_id).close()
        for track_id in wanted - state.tracks.keys():
            base = f"{TOPIC_PREFIX}/{state.stream_id}/tracks/{track_id}"
            meta = {
                "stream_id": state.stream_id,
                "frame_id": state.frame_id,
                "track_id": str(track_id),
            }
            state.tracks[track_id] = _TrackChannels(
                RawImageChannel(f"{base}/mask", metadata=meta, context=self._context),
                ImageAnnotationsChannel(
                    f"{base}/annotations", metadata=meta, context=self._context
                ),
            )

    def publish(self, state: _StreamChannels, out: StreamResult) -> None:
        """Log one result on the stream's channels (encoder thread)."""
        from foxglove.messages import CompressedImage, RawImage, Timestamp

        if state.retired:
            return
        if state.image is None:
            self._open_stream(state)
        assert state.image is not None and state.overlay is not None
        started = time.perf_counter()
        frame, tracks = out.frame, out.result.tracks
        self._sync_tracks(state, tracks)
        stamp = Timestamp.from_epoch_secs(frame.capture_ts)
        log_time = stamp.sec * 1_000_000_000 + stamp.nsec
        quality = self.settings.foxglove_jpeg_quality
        sent = 0
        if state.image.has_sinks():
            state.image.log(
                CompressedImage(
                    timestamp=stamp,
                    frame_id=state.frame_id,
                    data=encode_jpeg(frame.image, quality),
                    format="jpeg",
                ),
                log_time=log_time,
            )
            self._messages.labels("camera").inc()
            sent += 1
        if state.overlay.has_sinks():
            drawn = draw_overlay(frame.image, [(t.track_id, t.mask) for t in tracks])
            state.overlay.log(
                CompressedImage(
                    timestamp=stamp,
                    frame_id=state.frame_id,
                    data=encode_jpeg(drawn, quality),
                    format="jpeg",
                ),
                log_time=log_time,
            )
            self._messages.labels("overlay").inc()
            sent += 1
        for track in tracks:
            channels = state.tracks[track.track_id]
            if channels.mask.has_sinks():
                height, width = track.mask.shape
                channels.mask.log(
                    RawImage(
                        timestamp=stamp,
                        frame_id=state.frame_id,
                        width=width,
                        height=height,
                        encoding="mono8",
                        step=width,
                        data=mask_mono8(track.mask),
                    ),
                    log_time=log_time,
                )
                self._messages.labels("mask").inc()
                sent += 1
            if channels.annotations.has_sinks():
                channels.annotations.log(track_annotations(track, stamp), log_time=log_time)
                self._messages.labels("annotations").inc()
                sent += 1
        if sent:  # nobody subscribed: nothing was encoded or sent
            metrics = self.runtime.metrics
            metrics.observe_stage("foxglove_encode", time.perf_counter() - started)
            metrics.observe_sent("foxglove", frame.capture_ts, time.time())


def track_annotations(track: TrackResult, stamp: Timestamp) -> ImageAnnotations:
    """A track's box (line loop in its colour), a label with its id and score, and
    its scores as metadata; empty while the object is not in view."""
    from foxglove.messages import (
        Color,
        ImageAnnotations,
        KeyValuePair,
        Point2,
        PointsAnnotation,
        PointsAnnotationType,
        TextAnnotation,
    )

    if track.bbox is None or not track.present:
        return ImageAnnotations(timestamp=stamp)
    r, g, b = (c / 255.0 for c in track_colour(track.track_id))
    colour = Color(r=r, g=g, b=b, a=1.0)
    x0, y0, x1, y1 = (float(v) for v in track.bbox)
    metadata = [
        KeyValuePair(key="track_id", value=str(track.track_id)),
        KeyValuePair(key="score", value=f"{track.score:.4f}"),
        KeyValuePair(key="object_score", value=f"{track.object_score:.4f}"),
        KeyValuePair(key="area", value=str(track.area)),
    ]
    box = PointsAnnotation(
        timestamp=stamp,
        type=PointsAnnotationType.LineLoop,
        points=[Point2(x=x0, y=y0), Point2(x=x1, y=y0), Point2(x=x1, y=y1), Point2(x=x0, y=y1)],
        outline_color=colour,
        thickness=BOX_THICKNESS,
        metadata=metadata,
    )
    label = TextAnnotation(
        timestamp=stamp,
        position=Point2(x=x0, y=max(0.0, y0 - 2.0)),
        text=f"{track.track_id} {track.score:.2f}",
        font_size=LABEL_FONT_SIZE,
        text_color=Color(r=0.0, g=0.0, b=0.0, a=1.0),
        background_color=colour,
    )
    return ImageAnnotations(timestamp=stamp, points=[box], texts=[label], metadata=metadata)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def start_bridge(
    runtime: Runtime, settings: Settings, frame_id_for: Callable[[str], str | None]
) -> FoxgloveBridge | None:
    """The running bridge, or None when `--foxglove-port` is not set (on the loop)."""
    if settings.foxglove_port is None:
        return None
    bridge = FoxgloveBridge(runtime, settings, frame_id_for)
    bridge.start()
    return bridge
