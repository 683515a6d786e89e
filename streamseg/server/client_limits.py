"""Per-client limits, so one address cannot hold every connection: open connections
per client address and a request-header deadline (transport level, in uvicorn's
protocol), websockets per client address (ASGI), and the uvicorn settings for idle
keep-alive connections, header size and websocket message size.

uvicorn already gives the idle keep-alive timeout (`timeout_keep_alive`), the header
size limit (`h11_max_incomplete_event_size`) and the websocket message bound; what it
lacks is a deadline for a request's headers (a connection that never sends, or sends
half a request, is kept forever) and any per-address count. Those two are added by
subclassing its h11 protocol, the class `uvicorn.Config(http=...)` takes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from streamseg.config import Settings
from streamseg.server.metrics import Metrics

# Addresses whose connections all ended are forgotten past this many entries.
MAX_TRACKED_ADDRESSES = 4096
WS_MAX_MESSAGE_BYTES = 1024 * 1024  # client messages are prompts, a few KB at most


def _json_429(code: str, message: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = json.dumps({"detail": {"code": code, "message": message}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"retry-after", b"1"),
        (b"content-length", str(len(body)).encode()),
    ]
    return headers, body


class ClientConnections:
    """Open transports per client address. A transport counts until it is closing,
    also after an upgrade to a websocket hands it to another protocol object."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, set[Any]] = {}

    def admit(self, address: str, transport: Any) -> bool:
        mine = self._open.get(address)
        if mine is None:
            if len(self._open) >= MAX_TRACKED_ADDRESSES:
                self._prune()
            mine = self._open[address] = set()
        for closed in [t for t in mine if t.is_closing()]:
            mine.discard(closed)
        if self.limit > 0 and len(mine) >= self.limit:
            return False
        mine.add(transport)
        return True

    def discard(self, address: str, transport: Any) -> None:
        mine = self._open.get(address)
        if mine is not None:
            mine.discard(transport)
            if not mine:
                del self._open[address]

    def count(self, address: str) -> int:
        return sum(1 for t in self._open.get(address, ()) if not t.is_closing())

    def _prune(self) -> None:
        for address in list(self._open):
            mine = {t for t in self._open[address] if not t.is_closing()}
            if mine:
                self._open[address] = mine
            else:
                del self._open[address]


def guarded_protocol(settings: Settings, metrics: Metrics) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a per-address connection limit (refused with a
    429 and closed) and a header deadline: a request's headers must be complete
    within `header_timeout_s` of connecting or of the previous response, else the
    connection is closed. h11, not httptools, because uvicorn bounds header size only
    there (`h11_max_incomplete_event_size`)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    connections = ClientConnections(settings.max_connections_per_client)
    header_timeout_s = settings.header_timeout_s
    limit = settings.max_connections_per_client
    headers, body = _json_429(
        "too_many_connections", f"at most {limit} connections at once per client address"
    )
    refusal = b"HTTP/1.1 429 Too Many Requests\r\nconnection: close\r\n"
    refusal += b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n" + body

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _address = "-"

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._address = self.client[0] if self.client else "-"
            if not connections.admit(self._address, transport):
                metrics.requests_rejected.labels("client_connections").inc()
                transport.write(refusal)
                transport.close()
                return
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            if header_timeout_s > 0:
                self._deadline = self.loop.call_later(header_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            transport = self.transport
            if transport.is_closing() or transport.get_protocol() is not self:
                return  # closed, or upgraded to a websocket
            if self.cycle is not None and not self.cycle.response_complete:
                return  # headers arrived: a request is being served
            metrics.requests_rejected.labels("header_timeout").inc()
            transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            connections.discard(self._address, self.transport)
            super().connection_lost(exc)

    return GuardedH11Protocol


def uvicorn_options(settings: Settings, metrics: Metrics) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.Config` that apply the limits above."""
    allow = list(settings.forwarded_allow_ips)
    return {
        "http": guarded_protocol(settings, metrics),
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "ws_max_size": WS_MAX_MESSAGE_BYTES,
        # X-Forwarded-For only from configured proxies: otherwise any local process
        # could claim another address and slip past the per-client limits.
        "proxy_headers": bool(allow),
        "forwarded_allow_ips": allow or None,
    }


class WebsocketsPerClient:
    """At most `limit` open websockets per client address; more are refused at the
    handshake with 429 `too_many_websockets` (or a 1008 close where the server cannot
    send a handshake response)."""

    def __init__(self, app: ASGIApp, limit: int, metrics: Metrics) -> None:
        self.app, self.limit, self.metrics = app, limit, metrics
        self._open: dict[str, int] = {}

    def count(self, address: str) -> int:
        return self._open.get(address, 0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket" or self.limit <= 0:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else "-"
        if self._open.get(address, 0) >= self.limit:
            self.metrics.requests_rejected.labels("client_websockets").inc()
            await self._refuse(scope, send)
            return
        self._open[address] = self._open.get(address, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            left = self._open[address] - 1
            if left:
                self._open[address] = left
            else:
                del self._open[address]

    async def _refuse(self, scope: Scope, send: Send) -> None:
        message = f"at most {self.limit} websockets at once per client address"
        if "websocket.http.response" in scope.get("extensions", {}):
            headers, body = _json_429("too_many_websockets", message)
            await send({"type": "websocket.http.response.start", "status": 429, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": "too_many_websockets"})
