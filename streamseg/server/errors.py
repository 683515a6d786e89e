"""Errors every HTTP surface shares. Unexpected failures: every surface answers them
with code `internal` and an id that finds the traceback in the server log, counts
them, and keeps the connection; the exception's text never reaches the client (it may
carry paths, URLs with credentials or model internals). Model-validated JSON bodies go
through the protocol's strict parser (`StrictJSONRoute`)."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamseg.protocol import strictjson
from streamseg.protocol.messages import internal_error_text
from streamseg.server.metrics import Metrics

log = logging.getLogger("streamseg.internal")
REQUEST_ID_HEADER = "x-request-id"


def new_error_id() -> str:
    return secrets.token_hex(8)


def report_internal(
    metrics: Metrics,
    surface: str,
    exc: BaseException,
    error_id: str | None = None,
    **context: object,
) -> str:
    """Count and log one unexpected failure with its traceback; returns its id."""
    error_id = error_id or new_error_id()
    metrics.internal_errors.labels(surface).inc()
    where = " ".join(f"{k}={v!r}" for k, v in context.items())
    log.error("internal error %s on %s %s", error_id, surface, where, exc_info=exc)
    return error_id


def internal_error_body(error_id: str) -> dict[str, Any]:
    """The REST body of an unexpected failure (the shape of every REST refusal)."""
    message = internal_error_text(error_id)
    detail = {"code": "internal", "message": message, "error_id": error_id, "request_id": error_id}
    return {"detail": detail}


class InternalErrorMiddleware:
    """Turn an exception escaping any HTTP route into a JSON 500 on a connection that
    stays open. Starlette's own handler sends plain text and re-raises, and the server
    then drops the connection."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            error_id = report_internal(
                self.metrics, "rest", exc, method=scope.get("method"), path=scope.get("path")
            )
            if started:  # half a response is out: only dropping the connection is honest
                raise
            body = json.dumps(internal_error_body(error_id)).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (REQUEST_ID_HEADER.encode(), error_id.encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})


class StrictJSONRequest(Request):
    """A request whose JSON body goes through the protocol's strict parser, so a body
    FastAPI validates against a model is refused like every other client JSON."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = strictjson.loads(await self.body())
            except strictjson.JSONRefused as exc:
                message = f"the body is refused: {exc}"
                raise HTTPException(422, {"code": "bad_json", "message": message}) from None
        return self._json


class StrictJSONRoute(APIRoute):
    """Route class for routers with model-validated JSON bodies (`route_class=`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict
