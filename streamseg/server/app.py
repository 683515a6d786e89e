"""FastAPI application: lifespan owns the model and the inference worker."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from streamseg import __version__
from streamseg.config import Settings
from streamseg.media.overlay import PALETTE
from streamseg.server.metrics import CONTENT_TYPE
from streamseg.server.runtime import Runtime

log = logging.getLogger(__name__)
DEFAULT_WEB_DIR = Path(__file__).resolve().parents[2] / "web"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    runtime = Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="streamseg",
        version=__version__,
        summary="Real-time video segmentation with SAM 2",
        lifespan=lifespan,
    )
    app.state.runtime = runtime

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, object]:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        worker = runtime.worker
        ready = runtime.ready and worker is not None and worker.alive
        body: dict[str, object] = {"ready": ready}
        if runtime.model is not None:
            body["model"] = runtime.model.description
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["ops"])
    async def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/info", tags=["ops"])
    async def info(request: Request) -> dict[str, object]:
        model = runtime.model
        return {
            "version": __version__,
            "model": model.description if model else None,
            "image_size": model.image_size if model else None,
            "backend": settings.backend,
            "device": str(model.device) if model else None,
            "palette": PALETTE,
            "limits": {
                "max_peers": settings.max_peers,
                "max_streams": settings.max_streams,
                "max_tracks": settings.max_tracks,
                "max_frame_side": settings.max_frame_side,
            },
        }

    _include_routers(app)
    web_dir = Path(settings.web_dir) if settings.web_dir else DEFAULT_WEB_DIR
    if web_dir.is_dir():
        app.mount("/", StaticFiles(directory=web_dir, html=True), name="web")
    return app


def _include_routers(app: FastAPI) -> None:
    from streamseg.server import routes_masks, routes_segment, routes_streams, routes_webrtc

    app.include_router(routes_webrtc.router)
    app.include_router(routes_segment.router)
    app.include_router(routes_streams.router)
    app.include_router(routes_masks.router)
