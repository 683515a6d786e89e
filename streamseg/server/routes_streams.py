"""Camera streams (RTSP/HTTP/file/V4L2) over REST: create, list, describe, delete,
prompt, and the latest processed frame as JPEG."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

import cv2
from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from streamseg.media.frame import Frame
from streamseg.media.overlay import draw_overlay
from streamseg.media.source_policy import policy_from_settings
from streamseg.media.sources import SourceError, SourceOptions, SourceReader, vet_source
from streamseg.model.errors import TrackerError
from streamseg.pipeline.stream import MAX_INTERVAL
from streamseg.pipeline.worker import WorkerBusyError, WorkerStoppedError
from streamseg.protocol.prompts import (
    PromptError,
    parse_client_message,
)
from streamseg.server.cameras import (
    CameraStream,
    apply_message,
    cameras_of,
    close_camera,
    get_camera,
    prompt_limits,
    stream_metrics,
)
from streamseg.server.errors import StrictJSONRoute
from streamseg.server.runtime import LimitReachedError, Runtime
from streamseg.server.security import audit_note, requires

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/streams", tags=["streams"], route_class=StrictJSONRoute)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

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
    tls_verify: bool = Field(
        default=True,
        description="https/rtsps: verify the certificate and host name; false accepts any "
        "certificate for this stream (anyone on the path can then impersonate the camera)",
    )
    interval: int = Field(
        default=1,
        ge=1,
        le=MAX_INTERVAL,
        strict=True,
        description="run the model on every Nth frame only (DeepStream's `interval`); the "
        "frames between are skipped by choice, not dropped, and still go out at the "
        "camera's rate with the masks carried forward",
    )


class StreamCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048)
    name: str | None = Field(None, max_length=200)
    options: StreamOptions = StreamOptions()


@router.post("", status_code=201, dependencies=[requires("admin")])
async def create_stream(body: StreamCreate, request: Request) -> dict[str, Any]:
    """Start reading a camera: `rtsp://` (`?transport=udp` for UDP), `rtsps://`,
    `http(s)://`, a file under the media root or a configured `/dev/videoN`, as the
    source policy allows (docs/SECURITY.md); 422 `bad_url` with a `reason` otherwise."""
    runtime: Runtime = request.app.state.runtime
    stream_metrics(runtime)
    policy = policy_from_settings(runtime.settings)
    try:
        parsed = await vet_source(body.url, policy)
    except SourceError as exc:
        runtime.metrics.requests_rejected.labels("bad_url").inc()
        detail = {"code": "bad_url", "reason": exc.reason.value, "message": str(exc)}
        raise HTTPException(422, detail) from None
    try:
        session = runtime.open_stream(parsed.kind, body.options.interval)
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
        tls_verify=o.tls_verify,
    )
    camera: CameraStream

    def decoded(seconds: float) -> None:
        runtime.metrics.observe_stage("decode", seconds)

    def sink(frame: Frame) -> None:
        camera.on_frame_in()
        session.submit_frame(frame)

    reader = SourceReader(body.url, sink, options, on_decode=decoded, policy=policy)
    camera = CameraStream(session, reader, body.name)
    session.add_sink(camera.on_result)
    cameras_of(runtime)[session.id] = camera

    async def closer() -> None:
        await close_camera(runtime, session.id)

    runtime.closers[session.id] = closer
    audit_note(request, stream=session.id, url=reader.public_url)
    reader.start()
    return camera.describe()


@router.get("", dependencies=[requires("view")])
async def list_streams(request: Request) -> list[dict[str, Any]]:
    runtime: Runtime = request.app.state.runtime
    return [c.describe() for c in cameras_of(runtime).values()]


@router.get("/{stream_id}", dependencies=[requires("view")])
async def get_stream(stream_id: str, request: Request) -> dict[str, Any]:
    """State (connecting, streaming, stalled, reconnecting, error, stopped), rates,
    drops, tracks, frame size, capture clock and the last error."""
    return get_camera(request, stream_id)[1].describe()


@router.delete("/{stream_id}", status_code=204, dependencies=[requires("admin")])
async def delete_stream(stream_id: str, request: Request) -> Response:
    runtime, _ = get_camera(request, stream_id)
    await close_camera(runtime, stream_id)
    return Response(status_code=204)


@router.post("/{stream_id}/prompts", dependencies=[requires("control")])
async def prompt_stream(stream_id: str, request: Request) -> dict[str, Any]:
    """Same JSON as the websocket and data-channel messages (`type`: prompt, remove,
    reset); returns what was done (track_id, applied_seq, exact, ...)."""
    runtime, camera = get_camera(request, stream_id)
    try:
        msg = parse_client_message(await request.body(), prompt_limits(runtime))
        return await apply_message(runtime, camera.session, msg)
    except PromptError as exc:
        raise HTTPException(422, {"code": exc.code, "message": str(exc)}) from None
    except TrackerError as exc:
        status = 404 if exc.code == "unknown_track" else 409 if exc.code == "no_frame_yet" else 422
        raise HTTPException(status, {"code": exc.code, "message": str(exc)}) from None
    except (WorkerBusyError, WorkerStoppedError) as exc:
        raise HTTPException(503, {"code": "busy", "message": str(exc)}) from None


@router.get("/{stream_id}/frame.jpg", dependencies=[requires("view")])
async def latest_frame(stream_id: str, request: Request) -> Response:
    """The newest processed frame with overlays, to choose where to click; 409 until
    the first frame is processed."""
    runtime, camera = get_camera(request, stream_id)
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
