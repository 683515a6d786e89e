"""Camera streams: a source reader feeding a stream session, the registry of them on
the runtime, their metrics, and how one is stopped. Shared by the REST routes and the
websocket mask feed."""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi import HTTPException, Request
from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streamseg.media.slot import LatestSlot
from streamseg.media.sources import ErrorRecord, SourceReader, SourceState
from streamseg.pipeline.commands import apply_to_tracker
from streamseg.pipeline.stream import StreamResult, StreamSession
from streamseg.pipeline.worker import WorkerStoppedError
from streamseg.protocol.masks import MaskEncoding
from streamseg.protocol.messages import (
    encode_masks,
)
from streamseg.protocol.prompts import (
    ClientMessage,
    PromptError,
    PromptLimits,
    SetOptions,
)
from streamseg.server.metrics import Metrics
from streamseg.server.runtime import Runtime

log = logging.getLogger(__name__)
JOIN_TIMEOUT_S = 1.0
RATE_WINDOW_S = 5.0


@dataclass(eq=False)
class CameraStream:
    """A source feeding a stream session, plus what GET /v1/streams/{id} reports."""

    session: StreamSession
    reader: SourceReader
    name: str | None
    created: float = field(default_factory=time.time)
    # New whenever a stream is (re-)created, even under the same id: clients reset their
    # seq watermark when it (or the server's boot id) changes.
    epoch: str = field(default_factory=lambda: secrets.token_hex(8))
    persisted: bool = False  # its definition is in the streams file
    latest: StreamResult | None = None
    feeds: set[LatestSlot[StreamResult]] = field(default_factory=set)
    websocket_drops: int = 0
    out_times: deque[float] = field(default_factory=lambda: deque(maxlen=1024))
    in_times: deque[float] = field(default_factory=lambda: deque(maxlen=1024))
    _encoded: dict[tuple[int, MaskEncoding], list[bytes]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def encoded_masks(self, out: StreamResult, encoding: MaskEncoding) -> list[bytes]:
        """Masks of the newest result encoded once per encoding, however many clients."""
        key = (out.frame.seq, encoding)
        with self._lock:
            cached = self._encoded.get(key)
        if cached is None:
            cached = encode_masks([t.mask for t in out.result.tracks], encoding)
            with self._lock:
                if key[0] >= max((k[0] for k in self._encoded), default=-1):
                    self._encoded = {k: v for k, v in self._encoded.items() if k[0] == key[0]}
                    self._encoded[key] = cached
        return cached

    def count_websocket_drop(self) -> None:
        """Feeds drop from the inference thread (results) and the executor (frames)."""
        with self._lock:
            self.websocket_drops += 1

    def on_result(self, out: StreamResult) -> None:
        self.latest = out
        with self._lock:
            self.out_times.append(time.time())

    def on_frame_in(self) -> None:
        """Called on the reader thread."""
        with self._lock:
            self.in_times.append(time.time())

    def _rates(self) -> tuple[float, float]:
        now = time.time()
        with self._lock:
            fps_in = sum(1 for t in self.in_times if now - t < RATE_WINDOW_S)
            fps_out = sum(1 for t in self.out_times if now - t < RATE_WINDOW_S)
        span = max(min(RATE_WINDOW_S, now - self.created), 1e-3)  # a young stream
        return fps_in / span, fps_out / span

    def pipeline_error(self) -> ErrorRecord | None:
        """The inference side's latest error (a frame the tracker refused, ...)."""
        c = self.session.counters
        if c.last_error is None or c.last_error_ts is None:
            return None
        kind, _, message = c.last_error.partition(": ")
        return ErrorRecord(kind, message or kind, c.last_error_ts, c.errors)

    def errors(self) -> dict[str, Any]:
        """Each side's latest error with its time and count; `recovered` once a frame
        was received (source) or processed (pipeline) after it."""
        source, pipeline = self.reader.error, self.pipeline_error()
        last_result = self.session.counters.last_result_ts
        return {
            "source": None if source is None else source.describe(self.reader.last_frame_ts),
            "pipeline": None if pipeline is None else pipeline.describe(last_result),
        }

    def current_error(self) -> str | None:
        """The error still in effect, None once the stream has recovered from it."""
        if self.reader.last_error is not None:
            return self.reader.last_error
        pipeline = self.pipeline_error()
        last_result = self.session.counters.last_result_ts
        if pipeline is None or (last_result is not None and last_result >= pipeline.at):
            return None
        return pipeline.text

    def describe(self) -> dict[str, Any]:
        c = self.session.counters
        r = self.reader
        fps_in, fps_out = self._rates()
        lag = r.last_capture_lag_s
        return {
            "id": self.session.id,
            "name": self.name,
            "epoch": self.epoch,
            "persisted": self.persisted,
            "url": r.public_url,
            "kind": r.kind,
            "state": r.state.value,
            "options": asdict(r.options),
            "fps_in": round(fps_in, 2),
            "fps_out": round(fps_out, 2),
            "frames_received": c.received,
            "frames_processed": c.processed,
            "frames_dropped": c.dropped,
            "frames_skipped": c.skipped,
            "interval": self.session.interval,
            "websocket_clients": len(self.feeds),
            "websocket_drops": self.websocket_drops,
            "reconnects": r.reconnects,
            "tracks": self.session.tracker.track_ids,
            "width": r.width,
            "height": r.height,
            "capture_clock": r.last_capture_source,
            "capture_lag_ms": None if lag is None else round(lag * 1000, 1),
            "clock_switches": r.clock_switches,
            "ingest_lag_ms": None if r.ingest_lag_s is None else round(r.ingest_lag_s * 1000, 1),
            "ingest_drops": r.ingest_drops,
            "last_frame_ts": r.last_frame_ts,
            "last_packet_ts": r.last_packet_ts,
            "last_error": self.current_error(),
            "errors": self.errors(),
            "created": self.created,
        }


# ---- metrics -------------------------------------------------------------------------


class _SourceCollector(Collector):
    """Source states and reconnects, read from the readers at scrape time (the reader
    threads never touch Prometheus objects)."""

    def __init__(self, cameras: dict[str, CameraStream]) -> None:
        self._cameras = cameras

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "streamseg_source_state",
            "1 for each camera stream's current source state, 0 for the others",
            labels=["stream", "kind", "state"],
        )
        reconnects = CounterMetricFamily(
            "streamseg_source_reconnects",
            "Times a camera stream's source was lost and retried",
            labels=["stream"],
        )
        clients = GaugeMetricFamily(
            "streamseg_websocket_clients", "Open websocket mask feeds", labels=["stream"]
        )
        lag = GaugeMetricFamily(
            "streamseg_source_capture_lag_seconds",
            "Receive minus capture time of a stream's newest frame (0 on the receive clock)",
            labels=["stream", "clock"],
        )
        ingest = GaugeMetricFamily(
            "streamseg_source_ingest_lag_seconds",
            "How far behind packet arrival a stream's decoder read its newest packet",
            labels=["stream"],
        )
        switches = CounterMetricFamily(
            "streamseg_source_clock_switches",
            "Times a stream's frames changed capture clock (stream <-> receive)",
            labels=["stream"],
        )
        for sid, camera in list(self._cameras.items()):
            r = camera.reader
            now = r.state
            for s in SourceState:
                state.add_metric([sid, r.kind, s.value], 1.0 if s is now else 0.0)
            reconnects.add_metric([sid], r.reconnects)
            clients.add_metric([sid], len(camera.feeds))
            if r.last_capture_lag_s is not None and r.last_capture_source is not None:
                lag.add_metric([sid, r.last_capture_source], r.last_capture_lag_s)
            if r.ingest_lag_s is not None:
                ingest.add_metric([sid], r.ingest_lag_s)
            switches.add_metric([sid], r.clock_switches)
        yield from (state, reconnects, clients, lag, ingest, switches)


@dataclass
class _StreamMetrics:
    feed_closed: Counter


_metrics_by_registry: weakref.WeakKeyDictionary[Metrics, _StreamMetrics] = (
    weakref.WeakKeyDictionary()
)


def stream_metrics(runtime: Runtime) -> _StreamMetrics:
    """This module's metrics, registered on the runtime's registry on first use."""
    found = _metrics_by_registry.get(runtime.metrics)
    if found is None:
        registry = runtime.metrics.registry
        registry.register(_SourceCollector(cameras_of(runtime)))
        found = _StreamMetrics(
            Counter(
                "streamseg_websocket_closed",
                "Websocket mask feeds ended, by reason",
                ["reason"],
                registry=registry,
            )
        )
        _metrics_by_registry[runtime.metrics] = found
    return found


# ---- REST ----------------------------------------------------------------------------


def cameras_of(runtime: Runtime) -> dict[str, CameraStream]:
    registry: dict[str, CameraStream] = runtime.cameras
    return registry


def get_camera(request: Request, stream_id: str) -> tuple[Runtime, CameraStream]:
    runtime: Runtime = request.app.state.runtime
    camera = cameras_of(runtime).get(stream_id)
    if camera is None:
        raise HTTPException(404, {"code": "unknown_stream", "message": f"no stream {stream_id!r}"})
    return runtime, camera


def detach_camera(runtime: Runtime, stream_id: str) -> CameraStream | None:
    """The synchronous part of `close_camera`: its slot, session and feeds are freed
    at once; its reader is asked to stop."""
    camera = cameras_of(runtime).pop(stream_id, None)
    if camera is None:
        return None
    runtime.closers.pop(stream_id, None)
    camera.reader.request_stop()
    for feed in list(camera.feeds):
        feed.close()
    runtime.close_stream(stream_id)
    return camera


async def close_camera(runtime: Runtime, stream_id: str) -> None:
    """Stop a camera: its reader, its session, and every websocket feed on it."""
    camera = detach_camera(runtime, stream_id)
    if camera is None:
        return
    if not await asyncio.to_thread(camera.reader.join, JOIN_TIMEOUT_S):
        # Blocked in a PyAV read on a frozen server: it ends at its read timeout and
        # can no longer deliver anything (the session is closed).
        log.info("source %s ends at its read timeout", camera.reader.public_url)


def prompt_limits(runtime: Runtime) -> PromptLimits:
    return PromptLimits(max_points=runtime.settings.max_prompts_per_request)


async def apply_message(
    runtime: Runtime, session: StreamSession, msg: ClientMessage
) -> dict[str, Any]:
    if isinstance(msg, SetOptions):
        raise PromptError("bad_field", "options are set on the websocket, not here")
    if runtime.worker is None:
        raise WorkerStoppedError("the server is shutting down")
    result = await apply_to_tracker(runtime.worker, session, msg)
    runtime.metrics.tracks_active.set(runtime.count_tracks())
    return result
