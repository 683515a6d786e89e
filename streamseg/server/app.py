"""FastAPI application: lifespan owns the model and the inference worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from streamseg import __version__
from streamseg.config import Settings
from streamseg.media.overlay import PALETTE
from streamseg.model.tracker import TrackerSettings
from streamseg.protocol.prompts import PromptLimits
from streamseg.server import api_errors, security
from streamseg.server.auth import HostPolicy, TokenStore, bind_problem
from streamseg.server.client_limits import WebsocketsPerClient
from streamseg.server.errors import InternalErrorMiddleware
from streamseg.server.foxglove_bridge import check_foxglove, start_bridge
from streamseg.server.lifecycle import Reaper
from streamseg.server.metrics import CONTENT_TYPE
from streamseg.server.runtime import Runtime
from streamseg.server.stream_store import StreamStore

log = logging.getLogger(__name__)
DEFAULT_WEB_DIR = Path(__file__).resolve().parents[2] / "web"


class InsecureBindError(RuntimeError):
    """Listening beyond loopback without configured tokens, and without the flag that
    explicitly allows it."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; raises AuthConfigError (bad token setup), InsecureBindError,
    FoxgloveConfigError or StreamsFileError (the streams file, with its line and
    reason) before anything starts."""
    settings = settings or Settings.from_env()
    tokens = TokenStore(
        settings.token, settings.token_file, disabled=settings.insecure_no_auth_on_network
    )
    problem = bind_problem(settings.host, tokens)
    if problem is not None:
        raise InsecureBindError(problem)
    check_foxglove(settings)  # FoxgloveConfigError: its address refused, or no SDK
    runtime = Runtime(settings)
    # Read and checked now, so a bad streams file refuses start-up before the model loads.
    streams = StreamStore(settings)
    streams.load()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        security.log_auth_mode(tokens)
        watcher = asyncio.ensure_future(security.watch_token_file(tokens))
        remove_sighup = security.on_sighup(tokens)
        try:
            await runtime.start()
            reaper = Reaper(runtime, settings.ended_stream_ttl_s)
            reaper.start()
            foxglove = None
            try:
                foxglove = start_bridge(runtime, settings, streams.frame_id_for)
                await streams.start_streams(runtime)
                yield
            finally:
                streams.stop()
                if foxglove is not None:
                    await foxglove.stop()
                await reaper.stop()
                await runtime.stop()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if remove_sighup is not None:
                remove_sighup()

    app = FastAPI(
        title="streamseg",
        version=__version__,
        summary="Real-time video segmentation with SAM 2",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.streams = streams
    app.add_middleware(InternalErrorMiddleware, metrics=runtime.metrics)
    app.add_middleware(
        WebsocketsPerClient, limit=settings.max_websockets_per_client, metrics=runtime.metrics
    )
    app.state.auth = tokens
    policy = HostPolicy.build(settings.host, settings.allowed_hosts, settings.allowed_origins)
    security.install(app, policy, settings.allowed_origins)  # outermost: sees every answer

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, object]:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        worker = runtime.worker
        ready = runtime.ready and not runtime.draining and worker is not None and worker.alive
        body: dict[str, object] = {"ready": ready, "draining": runtime.draining}
        if runtime.model is not None:
            body["model"] = runtime.model.description
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["ops"], dependencies=[security.requires("metrics")])
    async def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/info", tags=["ops"], dependencies=[security.requires("view")])
    async def info(request: Request) -> dict[str, object]:
        model = runtime.model
        return {
            "version": __version__,
            "model": model.description if model else None,
            "image_size": model.image_size if model else None,
            "backend": settings.backend,
            "device": str(model.device) if model else None,
            "model_step_ms": (
                None if runtime.model_step_s is None else round(1000 * runtime.model_step_s, 1)
            ),
            "palette": PALETTE,
            # TensorRT only: activation memory per plan and the buffer contexts share
            "tensorrt_memory": _tensorrt_memory(model),
            "limits": {
                "max_peers": settings.max_peers,
                "max_streams": settings.max_streams,
                "max_tracks": settings.max_tracks,
                "max_frame_side": settings.max_frame_side,
                # REST uploads (/v1/segment, /v1/images)
                "max_upload_bytes": settings.max_upload_bytes,
                "max_prompts_per_request": settings.max_prompts_per_request,
                "max_points_per_image_prompt": PromptLimits().max_points,
                # one client message on a stream (REST, websocket, data channel)
                "prompt": asdict(_stream_limits(runtime)),
                "max_points_per_frame": TrackerSettings().max_points_per_frame,
            },
        }

    _include_routers(app)
    bodies = api_errors.request_bodies(
        settings.max_prompts_per_request, settings.max_upload_bytes, _stream_limits(runtime)
    )
    api_errors.install(app, bodies)  # after the routers: documents each of them
    web_dir = Path(settings.web_dir) if settings.web_dir else DEFAULT_WEB_DIR
    if web_dir.is_dir():
        app.mount("/", StaticFiles(directory=web_dir, html=True), name="web")
    return app


def _tensorrt_memory(model: object) -> object:
    report = getattr(getattr(model, "graphs", None), "memory_report", None)
    return report() if callable(report) else None


def _stream_limits(runtime: Runtime) -> PromptLimits:
    from streamseg.server.cameras import prompt_limits

    return prompt_limits(runtime)


def _include_routers(app: FastAPI) -> None:
    from streamseg.server import (
        routes_masks,
        routes_protocol,
        routes_segment,
        routes_streams,
        routes_webrtc,
    )

    app.include_router(routes_webrtc.router)
    app.include_router(routes_segment.router)
    app.include_router(routes_streams.router)
    app.include_router(routes_masks.router)
    app.include_router(routes_protocol.router)
