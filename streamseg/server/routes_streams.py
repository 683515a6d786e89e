"""Camera streams (RTSP/HTTP/file/V4L2) and their websocket mask feeds for robots."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, cast

import cv2
from fastapi import APIRouter, HTTPException, Request, Response, WebSocket, WebSocketDisconnect
from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field

from streamseg.media.frame import Frame
from streamseg.media.overlay import draw_overlay
from streamseg.media.slot import LatestSlot, SlotClosed
from streamseg.media.sources import SourceError, SourceOptions, SourceReader, SourceState, classify
from streamseg.model.errors import TrackerError
from streamseg.pipeline.commands import apply_to_tracker
from streamseg.pipeline.stream import StreamResult, StreamSession
from streamseg.pipeline.wire import result_message
from streamseg.pipeline.worker import WorkerBusyError, WorkerStoppedError
from streamseg.protocol.masks import MaskEncoding
from streamseg.protocol.messages import (
    ack_message,
    encode_frame_message,
    encode_masks,
    error_message,
    hello_message,
)
from streamseg.protocol.prompts import (
    ClientMessage,
    PromptError,
    PromptLimits,
    SetOptions,
    parse_client_message,
    peek_request_id,
)
from streamseg.server.metrics import Metrics
from streamseg.server.runtime import LimitReachedError, Runtime

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/streams", tags=["streams"])
SEND_TIMEOUT_S = 2.0
CLOSE_TIMEOUT_S = 1.0
JOIN_TIMEOUT_S = 1.0
RATE_WINDOW_S = 5.0
# Websocket close codes (4000-4999 are the application's).
CLOSE_UNKNOWN_STREAM = 4404  # no such stream, or it was deleted
CLOSE_BAD_REQUEST = 4422  # bad query parameters


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    transport: Literal["tcp", "udp"] = Field(
        default="tcp", description="RTSP transport; `?transport=udp` in the URL wins"
    )
    loop: bool = Field(default=False, description="files: start again at the end")
    realtime: bool = Field(default=True, description="files: pace frames at their frame rate")
    stall_timeout_s: float = Field(
        default=5.0, gt=0, le=300, description="no frame this long: stalled"
    )
    open_timeout_s: float = Field(default=3.0, gt=0, le=60)
    read_timeout_s: float = Field(default=3.0, gt=0, le=60)
    backoff_max_s: float = Field(default=10.0, ge=0.5, le=300, description="longest reconnect wait")


class StreamCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048)
    name: str | None = Field(None, max_length=200)
    options: StreamOptions = StreamOptions()


@dataclass(eq=False)
class CameraStream:
    """A source feeding a stream session, plus what GET /v1/streams/{id} reports."""

    session: StreamSession
    reader: SourceReader
    name: str | None
    created: float = field(default_factory=time.time)
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

    def describe(self) -> dict[str, Any]:
        c = self.session.counters
        r = self.reader
        fps_in, fps_out = self._rates()
        lag = r.last_capture_lag_s
        return {
            "id": self.session.id,
            "name": self.name,
            "url": r.public_url,
            "kind": r.kind,
            "state": r.state.value,
            "options": asdict(r.options),
            "fps_in": round(fps_in, 2),
            "fps_out": round(fps_out, 2),
            "frames_received": c.received,
            "frames_processed": c.processed,
            "frames_dropped": c.dropped,
            "websocket_clients": len(self.feeds),
            "websocket_drops": self.websocket_drops,
            "reconnects": r.reconnects,
            "tracks": self.session.tracker.track_ids,
            "width": r.width,
            "height": r.height,
            "capture_clock": r.last_capture_source,
            "capture_lag_ms": None if lag is None else round(lag * 1000, 1),
            "last_frame_ts": r.last_frame_ts,
            "last_error": r.last_error or c.last_error,
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
        for sid, camera in list(self._cameras.items()):
            r = camera.reader
            now = r.state
            for s in SourceState:
                state.add_metric([sid, r.kind, s.value], 1.0 if s is now else 0.0)
            reconnects.add_metric([sid], r.reconnects)
            clients.add_metric([sid], len(camera.feeds))
            if r.last_capture_lag_s is not None and r.last_capture_source is not None:
                lag.add_metric([sid, r.last_capture_source], r.last_capture_lag_s)
        yield from (state, reconnects, clients, lag)


@dataclass
class _StreamMetrics:
    feed_closed: Counter


_metrics_by_registry: weakref.WeakKeyDictionary[Metrics, _StreamMetrics] = (
    weakref.WeakKeyDictionary()
)


def _metrics(runtime: Runtime) -> _StreamMetrics:
    """This module's metrics, registered on the runtime's registry on first use."""
    found = _metrics_by_registry.get(runtime.metrics)
    if found is None:
        registry = runtime.metrics.registry
        registry.register(_SourceCollector(_cameras(runtime)))
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


def _cameras(runtime: Runtime) -> dict[str, CameraStream]:
    registry: dict[str, CameraStream] = runtime.cameras
    return registry


def _get(request: Request, stream_id: str) -> tuple[Runtime, CameraStream]:
    runtime: Runtime = request.app.state.runtime
    camera = _cameras(runtime).get(stream_id)
    if camera is None:
        raise HTTPException(404, {"code": "unknown_stream", "message": f"no stream {stream_id!r}"})
    return runtime, camera


async def close_camera(runtime: Runtime, stream_id: str) -> None:
    """Stop a camera: its reader, its session, and every websocket feed on it."""
    camera = _cameras(runtime).pop(stream_id, None)
    if camera is None:
        return
    runtime.closers.pop(stream_id, None)
    camera.reader.request_stop()
    for feed in list(camera.feeds):
        feed.close()
    runtime.close_stream(stream_id)
    if not await asyncio.to_thread(camera.reader.join, JOIN_TIMEOUT_S):
        # Blocked in a PyAV read on a frozen server: it ends at its read timeout and
        # can no longer deliver anything (the session is closed).
        log.info("source %s ends at its read timeout", camera.reader.public_url)


@router.post("", status_code=201)
async def create_stream(body: StreamCreate, request: Request) -> dict[str, Any]:
    """Start reading a camera: `rtsp://` (`?transport=udp` for UDP), `rtsps://`,
    `http(s)://`, a file path or `/dev/videoN`."""
    runtime: Runtime = request.app.state.runtime
    _metrics(runtime)
    try:
        kind = classify(body.url)
    except SourceError as exc:
        runtime.metrics.requests_rejected.labels("bad_url").inc()
        raise HTTPException(422, {"code": "bad_url", "message": str(exc)}) from None
    try:
        session = runtime.open_stream(kind)
    except LimitReachedError as exc:
        runtime.metrics.requests_rejected.labels("max_streams").inc()
        raise HTTPException(429, {"code": "limit", "message": str(exc)}) from None
    o = body.options
    options = SourceOptions(
        transport=o.transport,
        loop=o.loop,
        realtime=o.realtime,
        stall_timeout_s=o.stall_timeout_s,
        open_timeout_s=o.open_timeout_s,
        read_timeout_s=o.read_timeout_s,
        backoff_max_s=o.backoff_max_s,
    )
    camera: CameraStream

    def decoded(seconds: float) -> None:
        runtime.metrics.observe_stage("decode", seconds)

    def sink(frame: Frame) -> None:
        camera.on_frame_in()
        session.submit_frame(frame)

    reader = SourceReader(body.url, sink, options, on_decode=decoded)
    camera = CameraStream(session, reader, body.name)
    session.add_sink(camera.on_result)
    _cameras(runtime)[session.id] = camera

    async def closer() -> None:
        await close_camera(runtime, session.id)

    runtime.closers[session.id] = closer
    reader.start()
    return camera.describe()


@router.get("")
async def list_streams(request: Request) -> list[dict[str, Any]]:
    runtime: Runtime = request.app.state.runtime
    return [c.describe() for c in _cameras(runtime).values()]


@router.get("/{stream_id}")
async def get_stream(stream_id: str, request: Request) -> dict[str, Any]:
    """State (connecting, streaming, stalled, reconnecting, error, stopped), rates,
    drops, tracks, frame size, capture clock and the last error."""
    return _get(request, stream_id)[1].describe()


@router.delete("/{stream_id}", status_code=204)
async def delete_stream(stream_id: str, request: Request) -> Response:
    runtime, _ = _get(request, stream_id)
    await close_camera(runtime, stream_id)
    return Response(status_code=204)


def _limits(runtime: Runtime) -> PromptLimits:
    return PromptLimits(max_points=runtime.settings.max_prompts_per_request)


async def _apply(runtime: Runtime, session: StreamSession, msg: ClientMessage) -> dict[str, Any]:
    if isinstance(msg, SetOptions):
        raise PromptError("bad_field", "options are set on the websocket, not here")
    if runtime.worker is None:
        raise WorkerStoppedError("the server is shutting down")
    result = await apply_to_tracker(runtime.worker, session, msg)
    runtime.metrics.tracks_active.set(runtime.count_tracks())
    return result


@router.post("/{stream_id}/prompts")
async def prompt_stream(stream_id: str, request: Request) -> dict[str, Any]:
    """Same JSON as the websocket and data-channel messages (`type`: prompt, remove,
    reset); returns what was done (track_id, applied_seq, exact, ...)."""
    runtime, camera = _get(request, stream_id)
    try:
        msg = parse_client_message(await request.body(), _limits(runtime))
        return await _apply(runtime, camera.session, msg)
    except PromptError as exc:
        raise HTTPException(422, {"code": exc.code, "message": str(exc)}) from None
    except TrackerError as exc:
        status = 404 if exc.code == "unknown_track" else 409 if exc.code == "no_frame_yet" else 422
        raise HTTPException(status, {"code": exc.code, "message": str(exc)}) from None
    except (WorkerBusyError, WorkerStoppedError) as exc:
        raise HTTPException(503, {"code": "busy", "message": str(exc)}) from None


@router.get("/{stream_id}/frame.jpg")
async def latest_frame(stream_id: str, request: Request) -> Response:
    """The newest processed frame with overlays, to choose where to click; 409 until
    the first frame is processed."""
    runtime, camera = _get(request, stream_id)
    out = camera.latest
    if out is None:
        raise HTTPException(409, {"code": "no_frame_yet", "message": "no frame processed yet"})

    def render() -> bytes:
        image = draw_overlay(out.frame.image, [(t.track_id, t.mask) for t in out.result.tracks])
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        return jpeg.tobytes() if ok else b""

    jpeg = await asyncio.get_running_loop().run_in_executor(runtime.media_executor(), render)
    return Response(jpeg, media_type="image/jpeg", headers={"X-Frame-Seq": str(out.frame.seq)})


# ---- websocket -----------------------------------------------------------------------


class _Abortable(Protocol):
    def abort(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


def _find_transport(send: Any, depth: int = 0) -> _Abortable | None:
    """The server's transport behind an ASGI `send` (uvicorn's protocol object, maybe
    wrapped in middleware closures), or None when it cannot be found. Duck-typed:
    uvloop's transports are not `asyncio.Transport` subclasses."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if callable(getattr(transport, "abort", None)):
        return cast(_Abortable, transport)
    if depth < 4:
        for cell in getattr(send, "__closure__", None) or ():
            with contextlib.suppress(ValueError):  # an empty cell
                inner = cell.cell_contents
                if callable(inner):
                    deeper = _find_transport(inner, depth + 1)
                    if deeper is not None:
                        return deeper
    return None


def _abort(websocket: WebSocket) -> bool:
    """Drop the connection now. A peer that stopped reading keeps its socket and the
    unsent buffer alive indefinitely after a polite close, and ASGI has no abort."""
    transport = _find_transport(websocket._send)
    if transport is None:
        log.warning("cannot abort a stalled websocket: transport not found")
        return False
    sock = transport.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError, ValueError):  # ValueError: closed
        # Linger 0: reset now; a plain close leaves the queued megabytes in the kernel,
        # retransmitted to a peer that does not read, for minutes.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    return True


async def _refuse(websocket: WebSocket, code: str, message: str, close_code: int) -> bool:
    """Say why in an error message, then close; False when the peer did not take it."""
    try:
        await asyncio.wait_for(websocket.send_text(error_message(code, message)), SEND_TIMEOUT_S)
        await asyncio.wait_for(websocket.close(close_code, message[:120]), CLOSE_TIMEOUT_S)
    except Exception:
        return False
    return True


@dataclass
class _Feed:
    """One websocket client of one camera."""

    websocket: WebSocket
    runtime: Runtime
    camera: CameraStream
    mailbox: LatestSlot[StreamResult]
    encoding: MaskEncoding
    masks: bool = True
    ended: str = "client_closed"


@router.websocket("/{stream_id}/masks")
async def mask_feed(websocket: WebSocket, stream_id: str) -> None:
    """Per processed frame one binary message (docs/PROTOCOL.md); text messages in are
    prompts, answered with ack/error. Latest-only per client: a slow reader gets fewer,
    fresh messages and never delays anyone else; one that stops reading is dropped."""
    runtime: Runtime = websocket.app.state.runtime
    metrics = _metrics(runtime)
    camera = _cameras(runtime).get(stream_id)
    await websocket.accept()
    if camera is None:
        metrics.feed_closed.labels("unknown_stream").inc()
        await _refuse(websocket, "unknown_stream", f"no stream {stream_id!r}", CLOSE_UNKNOWN_STREAM)
        return
    try:
        encoding = MaskEncoding(websocket.query_params.get("encoding", "rle"))
    except ValueError:
        metrics.feed_closed.labels("bad_request").inc()
        choices = ", ".join(e.value for e in MaskEncoding)
        await _refuse(
            websocket, "bad_encoding", f"encoding must be one of {choices}", CLOSE_BAD_REQUEST
        )
        return
    session = camera.session

    def dropped(_: StreamResult) -> None:
        camera.websocket_drops += 1
        runtime.metrics.count_drop(session.id, "websocket")

    # Bound 1, policy `latest`: a newer result replaces an unsent one (counted).
    feed = _Feed(websocket, runtime, camera, LatestSlot(on_drop=dropped), encoding)
    camera.feeds.add(feed.mailbox)
    remove_sink = session.add_sink(feed.mailbox.put)
    try:
        hello = hello_message(
            session.id,
            encoding=encoding,
            limits=_limits(runtime),
            send_timeout_s=SEND_TIMEOUT_S,
            state=camera.reader.state.value,
            width=camera.reader.width,
            height=camera.reader.height,
        )
        await asyncio.wait_for(websocket.send_text(hello), SEND_TIMEOUT_S)
        sender = asyncio.ensure_future(_send_results(feed))
        receiver = asyncio.ensure_future(_receive_prompts(feed))
        done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("websocket feed of %s failed", session.id, exc_info=task.exception())
                feed.ended = "error"
        for task in (sender, receiver):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    except TimeoutError:
        feed.ended = "too_slow"
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        remove_sink()
        feed.mailbox.close()
        camera.feeds.discard(feed.mailbox)
        metrics.feed_closed.labels(feed.ended).inc()
        await _close(feed)


async def _close(feed: _Feed) -> None:
    """Close politely within CLOSE_TIMEOUT_S, else abort (a close can hang for as long
    as the peer does not read)."""
    websocket, closed = feed.websocket, False
    if feed.ended == "stream_deleted":
        message = "the stream was deleted"
        closed = await _refuse(websocket, "unknown_stream", message, CLOSE_UNKNOWN_STREAM)
    elif feed.ended != "too_slow":
        try:
            await asyncio.wait_for(websocket.close(), CLOSE_TIMEOUT_S)
            closed = True
        except Exception:
            closed = False
    if not closed:
        _abort(websocket)


def _encode(camera: CameraStream, out: StreamResult, encoding: MaskEncoding | None) -> bytes:
    """Runs in the media executor; masks are encoded once per result and encoding."""
    blobs = camera.encoded_masks(out, encoding) if encoding is not None else None
    msg = result_message(out, time.time(), camera.session.counters.dropped, encoding)
    return encode_frame_message(msg, encoded=blobs)


async def _send_results(feed: _Feed) -> None:
    camera, websocket = feed.camera, feed.websocket
    loop = asyncio.get_running_loop()
    executor = feed.runtime.media_executor()
    metrics = feed.runtime.metrics
    while True:
        try:
            out = await feed.mailbox.take_async()
        except SlotClosed:
            feed.ended = "stream_deleted"
            return

        encoding = feed.encoding if feed.masks else None
        start = time.perf_counter()
        data = await loop.run_in_executor(executor, _encode, camera, out, encoding)
        encoded = time.perf_counter()
        try:
            await asyncio.wait_for(websocket.send_bytes(data), SEND_TIMEOUT_S)
        except TimeoutError:
            feed.ended = "too_slow"
            return
        except (WebSocketDisconnect, RuntimeError):
            return
        metrics.observe_stage("mask_encode", encoded - start)
        metrics.observe_stage("send", time.perf_counter() - encoded)
        metrics.observe_sent("websocket", out.frame.capture_ts, time.time())


def _options(feed: _Feed, msg: SetOptions) -> dict[str, Any]:
    if msg.encoding is not None:
        feed.encoding = msg.encoding
    if msg.include_masks is not None:
        feed.masks = msg.include_masks
    return {"encoding": feed.encoding.value, "include_masks": feed.masks}


async def _receive_prompts(feed: _Feed) -> None:
    websocket, runtime = feed.websocket, feed.runtime
    limits = _limits(runtime)
    while True:
        try:
            message = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return
        if message["type"] == "websocket.disconnect":
            return
        raw: str | bytes = message.get("text") or message.get("bytes") or b""
        request_id = peek_request_id(raw, limits)
        try:
            msg = parse_client_message(raw, limits)
            if isinstance(msg, SetOptions):
                result = _options(feed, msg)
            else:
                result = await _apply(runtime, feed.camera.session, msg)
        except (PromptError, TrackerError) as exc:
            reply = error_message(exc.code, str(exc), request_id)
        except (WorkerBusyError, WorkerStoppedError) as exc:
            reply = error_message("busy", str(exc), request_id)
        else:
            reply = ack_message(request_id, result)
        try:
            await asyncio.wait_for(websocket.send_text(reply), SEND_TIMEOUT_S)
        except TimeoutError:
            feed.ended = "too_slow"
            return
        except (WebSocketDisconnect, RuntimeError):
            return


def feed_count(runtime: Runtime) -> int:
    """Open websocket feeds over all cameras (for tests and diagnostics)."""
    return sum(len(c.feeds) for c in _cameras(runtime).values())
