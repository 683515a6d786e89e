"""Camera streams (RTSP/HTTP/file/V4L2) and their websocket mask feeds for robots."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
from fastapi import APIRouter, HTTPException, Request, Response, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, Field

from streamseg.media.overlay import draw_overlay
from streamseg.media.slot import LatestSlot, SlotClosed
from streamseg.media.sources import SourceError, SourceOptions, SourceReader, classify
from streamseg.model.errors import TrackerError
from streamseg.pipeline.commands import apply_to_tracker
from streamseg.pipeline.stream import StreamResult, StreamSession
from streamseg.pipeline.wire import result_message
from streamseg.pipeline.worker import WorkerBusyError, WorkerStoppedError
from streamseg.protocol.masks import MaskEncoding
from streamseg.protocol.messages import (
    SCHEMA_VERSION,
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
from streamseg.server.runtime import LimitReachedError, Runtime

router = APIRouter(prefix="/v1/streams", tags=["streams"])
SEND_TIMEOUT_S = 2.0
RATE_WINDOW_S = 5.0


class StreamOptions(BaseModel):
    transport: Literal["tcp", "udp"] = "tcp"
    loop: bool = False
    realtime: bool = True
    stall_timeout_s: float = Field(default=5.0, gt=0, le=300)


class StreamCreate(BaseModel):
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
    out_times: deque[float] = field(default_factory=lambda: deque(maxlen=512))
    in_times: deque[float] = field(default_factory=lambda: deque(maxlen=512))
    _encoded: dict[tuple[int, MaskEncoding], list[bytes]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def encoded_masks(self, out: StreamResult, encoding: MaskEncoding) -> list[bytes]:
        """Masks of the newest result encoded once per encoding, however many clients."""
        key = (out.frame.seq, encoding)
        with self._lock:
            cached = self._encoded.get(key)
            if cached is None:
                cached = encode_masks([t.mask for t in out.result.tracks], encoding)
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
        return fps_in / RATE_WINDOW_S, fps_out / RATE_WINDOW_S

    def describe(self) -> dict[str, Any]:
        c = self.session.counters
        fps_in, fps_out = self._rates()
        return {
            "id": self.session.id,
            "name": self.name,
            "url": self.reader.url,
            "kind": self.reader.kind,
            "state": self.reader.state.value,
            "fps_in": fps_in,
            "fps_out": fps_out,
            "frames_received": c.received,
            "frames_processed": c.processed,
            "frames_dropped": c.dropped,
            "reconnects": self.reader.reconnects,
            "tracks": self.session.tracker.track_ids,
            "width": self.reader.width,
            "height": self.reader.height,
            "last_error": self.reader.last_error or c.last_error,
            "created": self.created,
        }


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
    camera = _cameras(runtime).pop(stream_id, None)
    if camera is None:
        return
    runtime.closers.pop(stream_id, None)
    await asyncio.to_thread(camera.reader.stop)
    runtime.close_stream(stream_id)


@router.post("", status_code=201)
async def create_stream(body: StreamCreate, request: Request) -> dict[str, Any]:
    """Start reading a camera: `rtsp://`, `http(s)://`, a file path or `/dev/videoN`."""
    runtime: Runtime = request.app.state.runtime
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
        transport=o.transport, loop=o.loop, realtime=o.realtime, stall_timeout_s=o.stall_timeout_s
    )
    decode = runtime.metrics.stage_seconds.labels("decode")
    camera: CameraStream

    def sink(frame: Any) -> None:
        camera.on_frame_in()
        session.submit_frame(frame)

    reader = SourceReader(body.url, sink, options, on_decode=decode.observe)
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
    return _get(request, stream_id)[1].describe()


@router.delete("/{stream_id}", status_code=204)
async def delete_stream(stream_id: str, request: Request) -> Response:
    runtime, _ = _get(request, stream_id)
    await close_camera(runtime, stream_id)
    return Response(status_code=204)


def _parse(runtime: Runtime, raw: str | bytes) -> ClientMessage:
    limits = PromptLimits(max_points=runtime.settings.max_prompts_per_request)
    return parse_client_message(raw, limits)


async def _apply(runtime: Runtime, session: StreamSession, msg: ClientMessage) -> dict[str, Any]:
    if isinstance(msg, SetOptions):
        raise PromptError("bad_field", "options are set on the websocket, not here")
    assert runtime.worker is not None
    result = await apply_to_tracker(runtime.worker, session, msg)
    runtime.metrics.tracks_active.set(runtime.count_tracks())
    return result


@router.post("/{stream_id}/prompts")
async def prompt_stream(stream_id: str, request: Request) -> dict[str, Any]:
    """Same JSON as the websocket and data-channel messages (`type`: prompt/remove/reset)."""
    runtime, camera = _get(request, stream_id)
    try:
        return await _apply(runtime, camera.session, _parse(runtime, await request.body()))
    except PromptError as exc:
        raise HTTPException(422, {"code": exc.code, "message": str(exc)}) from None
    except TrackerError as exc:
        status = 404 if exc.code == "unknown_track" else 409 if exc.code == "no_frame_yet" else 422
        raise HTTPException(status, {"code": exc.code, "message": str(exc)}) from None
    except WorkerBusyError as exc:
        raise HTTPException(503, {"code": "busy", "message": str(exc)}) from None


@router.get("/{stream_id}/frame.jpg")
async def latest_frame(stream_id: str, request: Request) -> Response:
    """The newest processed frame with overlays, to choose where to click."""
    _, camera = _get(request, stream_id)
    out = camera.latest
    if out is None:
        raise HTTPException(409, {"code": "no_frame_yet", "message": "no frame processed yet"})

    def render() -> bytes:
        image = draw_overlay(out.frame.image, [(t.track_id, t.mask) for t in out.result.tracks])
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        return jpeg.tobytes() if ok else b""

    return Response(
        await asyncio.to_thread(render),
        media_type="image/jpeg",
        headers={"X-Frame-Seq": str(out.frame.seq)},
    )


@router.websocket("/{stream_id}/masks")
async def mask_feed(websocket: WebSocket, stream_id: str) -> None:
    """Per processed frame: one binary message (see docs/PROTOCOL.md). Latest-only per
    client: a slow reader gets fewer, fresh messages and never delays anyone else."""
    runtime: Runtime = websocket.app.state.runtime
    camera = _cameras(runtime).get(stream_id)
    await websocket.accept()
    if camera is None:
        await websocket.send_text(error_message("unknown_stream", f"no stream {stream_id!r}"))
        await websocket.close(code=4404, reason="unknown stream")
        return
    try:
        encoding = MaskEncoding(websocket.query_params.get("encoding", "rle"))
    except ValueError:
        await websocket.close(code=4422, reason="encoding must be rle, bitpack or png")
        return
    session = camera.session
    # Bound 1, policy `latest`; replaced results are counted as websocket drops.
    mailbox: LatestSlot[StreamResult] = LatestSlot(
        on_drop=lambda _: runtime.metrics.count_drop(session.id, "websocket")
    )
    remove_sink = session.add_sink(mailbox.put)
    state = {"encoding": encoding, "masks": True}
    await websocket.send_text(
        hello_message(
            schema=SCHEMA_VERSION,
            stream_id=session.id,
            encoding=encoding.value,
            encodings=[e.value for e in MaskEncoding],
            send_timeout_s=SEND_TIMEOUT_S,
        )
    )
    sender = asyncio.ensure_future(_send_results(websocket, runtime, camera, mailbox, state))
    receiver = asyncio.ensure_future(_receive_prompts(websocket, runtime, session, state))
    try:
        await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        remove_sink()
        mailbox.close()
        for task in (sender, receiver):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(websocket.close(), 1.0)


async def _send_results(
    websocket: WebSocket,
    runtime: Runtime,
    camera: CameraStream,
    mailbox: LatestSlot[StreamResult],
    state: dict[str, Any],
) -> None:
    session = camera.session
    loop = asyncio.get_running_loop()
    executor = runtime.media_executor()
    while True:
        try:
            out = await mailbox.take_async()
        except SlotClosed:
            return

        def encode(out: StreamResult = out) -> bytes:
            encoding = state["encoding"] if state["masks"] else None
            blobs = camera.encoded_masks(out, encoding) if encoding is not None else None
            msg = result_message(out, time.time(), session.counters.dropped, encoding)
            return encode_frame_message(msg, encoded=blobs)

        data = await loop.run_in_executor(executor, encode)
        try:
            await asyncio.wait_for(websocket.send_bytes(data), SEND_TIMEOUT_S)
        except (TimeoutError, WebSocketDisconnect, RuntimeError):
            runtime.metrics.requests_rejected.labels("websocket_send_timeout").inc()
            return
        runtime.metrics.capture_to_sent.labels("websocket").observe(
            time.time() - out.frame.capture_ts
        )


async def _receive_prompts(
    websocket: WebSocket, runtime: Runtime, session: StreamSession, state: dict[str, Any]
) -> None:
    while True:
        try:
            raw = await websocket.receive_text()
        except (WebSocketDisconnect, RuntimeError, KeyError):
            return
        request_id = peek_request_id(raw)
        try:
            msg = _parse(runtime, raw)
            if isinstance(msg, SetOptions):
                if msg.encoding is not None:
                    state["encoding"] = msg.encoding
                if msg.include_masks is not None:
                    state["masks"] = msg.include_masks
                result: dict[str, Any] = {
                    "encoding": state["encoding"].value,
                    "masks": state["masks"],
                }
            else:
                result = await _apply(runtime, session, msg)
        except (PromptError, TrackerError) as exc:
            reply = error_message(exc.code, str(exc), request_id)
        except (WorkerBusyError, WorkerStoppedError) as exc:
            reply = error_message("busy", str(exc), request_id)
        else:
            reply = ack_message(request_id, result)
        try:
            await asyncio.wait_for(websocket.send_text(reply), SEND_TIMEOUT_S)
        except (TimeoutError, WebSocketDisconnect, RuntimeError):
            return
