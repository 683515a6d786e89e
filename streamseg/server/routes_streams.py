"""Camera streams (RTSP/HTTP/file/V4L2) over REST: create, list, describe, delete,
prompt, and the latest processed frame as JPEG."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

import cv2
from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from streamseg.media.frame import Frame
from streamseg.media.overlay import draw_overlay
from streamseg.media.source_policy import policy_from_settings
from streamseg.media.sources import SourceError, SourceOptions, SourceReader, vet_source
from streamseg.model.errors import TrackerError
from streamseg.pipeline.stream import MAX_INTERVAL
from streamseg.pipeline.worker import WorkerBusyError, WorkerStoppedError
from streamseg.protocol.error_codes import http_status
from streamseg.protocol.prompts import (
    PromptError,
    parse_client_message,
)
from streamseg.server.api_errors import JsonInt, read_bounded
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
from streamseg.server.runtime import LimitReachedError, Runtime, StreamExistsError
from streamseg.server.security import audit_note, requires
from streamseg.server.stream_store import PersistRefused, StreamStore
from streamseg.server.streams_file import StreamsFileError, stream_id_problem

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
        default=5.0, gt=0, le=300, description="no packet arrived (or no frame) this long: stalled"
    )
    open_timeout_s: float = Field(default=3.0, gt=0, le=60)
    read_timeout_s: float = Field(default=3.0, gt=0, le=60)
    backoff_initial_s: float = Field(
        default=0.5, ge=0.05, le=60, description="first wait after a source answers but fails"
    )
    backoff_max_s: float = Field(default=10.0, ge=0.5, le=300, description="longest reconnect wait")
    probe_interval_s: float = Field(
        default=0.25, ge=0.05, le=10, description="a lost camera is probed this often at most"
    )
    max_clock_skew_s: float = Field(
        default=10.0, gt=0, le=3600, description="a stream clock further off is not trusted"
    )
    max_lag_s: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="live sources: decoding this far behind arrival skips to the next keyframe",
    )
    tls_verify: bool = Field(
        default=True,
        description="https/rtsps: verify the certificate and host name; false accepts any "
        "certificate for this stream (anyone on the path can then impersonate the camera)",
    )
    interval: JsonInt = Field(
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
    id: str | None = Field(
        None,
        description="a stream id of your choosing (A-Z, a-z, 0-9, _ and -, at most 64, "
        "not s<number>); default: the server assigns s1, s2, ...",
        # What `stream_id_problem` accepts, for clients and fuzzers (s<number> excluded).
        json_schema_extra={
            "pattern": "^(?:[A-Za-rt-z0-9][A-Za-z0-9_-]*|s(?:[0-9]*[A-Za-z_-][A-Za-z0-9_-]*)?)$",
            "minLength": 1,
            "maxLength": 64,
        },
    )

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str | None) -> str | None:
        problem = None if value is None else stream_id_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class CameraRefused(Exception):
    """A stream that cannot be created: HTTP `status` and the error `detail`."""

    def __init__(self, status: int, detail: dict[str, str]) -> None:
        super().__init__(detail["message"])
        self.status, self.detail, self.message = status, detail, detail["message"]


async def start_camera(
    runtime: Runtime, body: StreamCreate, *, persisted: bool = False
) -> CameraStream:
    """Vet the URL under the source policy, open the session, start the reader.
    Shared by `POST /v1/streams` and the streams file; CameraRefused otherwise."""
    stream_metrics(runtime)
    policy = policy_from_settings(runtime.settings)
    try:
        parsed = await vet_source(body.url, policy)
    except SourceError as exc:
        runtime.metrics.requests_rejected.labels("bad_url").inc()
        detail = {"code": "bad_url", "reason": exc.reason.value, "message": str(exc)}
        raise CameraRefused(422, detail) from None
    if body.id is not None and body.id in cameras_of(runtime):
        message = f"a stream {body.id!r} exists already; delete it first"
        raise CameraRefused(409, {"code": "stream_exists", "message": message})
    try:
        session = runtime.open_stream(parsed.kind, body.options.interval, body.id)
    except LimitReachedError as exc:
        runtime.metrics.requests_rejected.labels("max_streams").inc()
        raise CameraRefused(429, {"code": "limit", "message": str(exc)}) from None
    except StreamExistsError as exc:
        raise CameraRefused(409, {"code": "stream_exists", "message": str(exc)}) from None
    o = body.options
    options = SourceOptions(
        transport=o.transport,
        loop=o.loop,
        realtime=o.realtime,
        stall_timeout_s=o.stall_timeout_s,
        open_timeout_s=o.open_timeout_s,
        read_timeout_s=o.read_timeout_s,
        backoff_initial_s=o.backoff_initial_s,
        backoff_max_s=o.backoff_max_s,
        probe_interval_s=o.probe_interval_s,
        max_clock_skew_s=o.max_clock_skew_s,
        max_lag_s=o.max_lag_s,
        tls_verify=o.tls_verify,
    )
    camera: CameraStream

    def decoded(seconds: float) -> None:
        runtime.metrics.observe_stage("decode", seconds)

    def sink(frame: Frame) -> None:
        camera.on_frame_in()
        session.submit_frame(frame)

    def dropped(where: str) -> None:  # packets skipped undecoded to catch up
        runtime.metrics.count_drop(session.id, where)

    reader = SourceReader(
        body.url, sink, options, on_decode=decoded, policy=policy, on_drop=dropped
    )
    camera = CameraStream(session, reader, body.name, persisted=persisted)
    session.add_sink(camera.on_result)
    cameras_of(runtime)[session.id] = camera

    async def closer() -> None:
        await close_camera(runtime, session.id)

    runtime.closers[session.id] = closer
    reader.start()
    return camera


def _store(request: Request) -> StreamStore:
    store: StreamStore = request.app.state.streams
    return store


PERSIST = Query(
    False,
    description="also write the change to the streams file (atomically), so it survives "
    "a restart; needs --streams-file, and on create an `id` and a URL without secrets",
)


@router.post("", status_code=201, dependencies=[requires("admin")])
async def create_stream(
    body: StreamCreate, request: Request, persist: bool = PERSIST
) -> dict[str, Any]:
    """Start reading a camera: `rtsp://` (`?transport=udp` for UDP), `rtsps://`,
    `http(s)://`, a file under the media root or a configured `/dev/videoN`, as the
    source policy allows (docs/SECURITY.md); 422 `bad_url` with a `reason` otherwise.
    `?persist=true` adds it to the streams file too (replacing one with its id)."""
    runtime: Runtime = request.app.state.runtime
    store = _store(request)
    definition = None
    try:
        if persist:
            options = body.options.model_dump(exclude_unset=True)
            definition = store.definition_for(body.id, body.url, body.name, options)
        camera = await start_camera(runtime, body, persisted=persist)
    except PersistRefused as exc:
        raise HTTPException(exc.status, {"code": exc.code, "message": str(exc)}) from None
    except CameraRefused as exc:
        raise HTTPException(exc.status, exc.detail) from None
    sid = camera.session.id
    audit_note(request, stream=sid, url=camera.reader.public_url, persist=persist)
    if definition is not None:
        try:
            await store.save(definition)
        except (StreamsFileError, OSError) as exc:
            await close_camera(runtime, sid)  # all or nothing
            message = f"the streams file was not written: {_why(exc)}"
            raise HTTPException(500, {"code": "persist_failed", "message": message}) from None
    return camera.describe()


def _why(exc: Exception) -> str:
    return exc.strerror or type(exc).__name__ if isinstance(exc, OSError) else str(exc)


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
async def delete_stream(stream_id: str, request: Request, persist: bool = PERSIST) -> Response:
    """Stop a stream. Without `?persist=true` one from the streams file comes back at
    the next start; with it, it is removed from the file as well."""
    runtime, _ = get_camera(request, stream_id)
    store = _store(request)
    if persist and store.path is None:
        message = "persist needs a streams file (--streams-file or STREAMSEG_STREAMS_FILE)"
        raise HTTPException(409, {"code": "no_streams_file", "message": message})
    await close_camera(runtime, stream_id)
    if persist:
        try:
            await store.forget(stream_id)
        except (StreamsFileError, OSError) as exc:
            message = f"the stream was stopped but the streams file was not written: {_why(exc)}"
            raise HTTPException(500, {"code": "persist_failed", "message": message}) from None
    return Response(status_code=204)


@router.post("/{stream_id}/prompts", dependencies=[requires("control")])
async def prompt_stream(stream_id: str, request: Request) -> dict[str, Any]:
    """Same JSON as the websocket and data-channel messages (`type`: prompt, remove,
    reset); returns what was done (track_id, applied_seq, exact, ...)."""
    runtime, camera = get_camera(request, stream_id)
    limits = prompt_limits(runtime)
    try:
        body = await read_bounded(request, limits.max_message_bytes)  # 413 `too_large`
        msg = parse_client_message(body, limits)
        return await apply_message(runtime, camera.session, msg)
    except PromptError as exc:
        detail = {"code": exc.code, "message": str(exc)}
        if exc.field is not None:
            detail["field"] = exc.field
        raise HTTPException(http_status(exc.code), detail) from None
    except TrackerError as exc:
        raise HTTPException(
            http_status(exc.code), {"code": exc.code, "message": str(exc)}
        ) from None
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
