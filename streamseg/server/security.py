"""The web side of access control: the bearer-token dependency with scopes (REST,
WebRTC offer, websocket), the Host/Origin guard, the content-type rule against
cross-site form posts, and the audit log.

Order of checks for a request: Host (421) and Origin (403) in `SecurityMiddleware`,
then per route the token (401), its scope (403) and, for bodies, the content type
(415). `/healthz` and `/readyz` are open and skip the Host check (probes send the
pod's address)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Security
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import HTTPException
from fastapi.params import Security as SecurityParam
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketState

from streamseg.protocol.messages import CLOSE_FORBIDDEN, CLOSE_UNAUTHORIZED, error_message
from streamseg.server.auth import HostPolicy, Principal, TokenStore, headers_of

log = logging.getLogger(__name__)
audit_log = logging.getLogger("streamseg.audit")

# Browsers cannot set headers on a websocket: they offer these two subprotocols,
# `new WebSocket(url, ["streamseg.v1", "streamseg.bearer." + token])`; the server
# answers with `streamseg.v1`, never echoing the token.
WS_SUBPROTOCOL = "streamseg.v1"
WS_TOKEN_PREFIX = "streamseg.bearer."
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
TOKEN_TAKES_EFFECT_S = 1.0  # token file poll interval

bearer = HTTPBearer(
    auto_error=False,
    description="A streamseg token: `Authorization: Bearer <token>` (docs/SECURITY.md)",
)


class AuthError(HTTPException):
    """401 (no or unknown token) or 403 (missing scope); on a websocket it becomes a
    close with 4401/4403 after an `error` message, so browsers can read why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        super().__init__(status, {"code": code, "message": message}, headers=headers)
        self.code, self.message = code, message


def _store(conn: HTTPConnection) -> TokenStore:
    store: TokenStore = conn.app.state.auth
    return store


def _presented(
    conn: HTTPConnection, credentials: HTTPAuthorizationCredentials | None
) -> str | None:
    if credentials is not None:
        return credentials.credentials
    if conn.scope["type"] == "websocket":
        for proto in conn.scope.get("subprotocols", ()):
            if proto.startswith(WS_TOKEN_PREFIX):
                return str(proto[len(WS_TOKEN_PREFIX) :])
    return None


def _check(
    security_scopes: SecurityScopes,
    conn: HTTPConnection,
    credentials: HTTPAuthorizationCredentials | None,
    uploads: bool,
) -> Principal:
    principal = _store(conn).lookup(_presented(conn, credentials))
    if principal is None:
        raise AuthError(401, "unauthorized", "a valid token is required (Authorization: Bearer)")
    conn.state.token_id = principal.token_id
    missing = [s for s in security_scopes.scopes if not principal.allows(s)]
    if missing:
        raise AuthError(403, "forbidden", f"this token lacks the {missing[0]!r} scope")
    if isinstance(conn, Request) and conn.method in BODY_METHODS:
        _check_content_type(conn, uploads)
    return principal


def _check_content_type(request: Request, uploads: bool) -> None:
    """Only JSON (and multipart images where a route takes them): a cross-site HTML
    form or a `text/plain` fetch cannot produce these without a CORS preflight."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    json_type = ctype.startswith("application/") and ctype.endswith("+json")
    if ctype == "application/json" or json_type:
        return
    if uploads and ctype == "multipart/form-data":
        return
    wanted = "application/json or multipart/form-data" if uploads else "application/json"
    raise HTTPException(
        415, {"code": "unsupported_media_type", "message": f"send the body as {wanted}"}
    )


async def authorize(
    security_scopes: SecurityScopes,
    conn: HTTPConnection,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller's token must exist and carry every scope the route names."""
    return _check(security_scopes, conn, credentials, uploads=False)


async def authorize_upload(
    security_scopes: SecurityScopes,
    conn: HTTPConnection,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """`authorize`, also accepting a multipart body (image uploads)."""
    return _check(security_scopes, conn, credentials, uploads=True)


def requires(*scopes: str, uploads: bool = False) -> Any:
    """A route dependency: `dependencies=[requires("control")]`, or a parameter
    `principal: Principal = requires("view")` to act on the caller's scopes."""
    dependency = authorize_upload if uploads else authorize
    param: SecurityParam = Security(dependency, scopes=list(scopes))
    return param


def accept_subprotocol(websocket: WebSocket) -> str | None:
    """The subprotocol to accept with: ours when the client offered it (browsers fail
    the connection if a subprotocol they offered is not answered)."""
    return WS_SUBPROTOCOL if WS_SUBPROTOCOL in websocket.scope.get("subprotocols", ()) else None


async def _auth_error_handler(conn: HTTPConnection, exc: Exception) -> Response | None:
    assert isinstance(exc, AuthError)
    if isinstance(conn, WebSocket):
        audit("websocket " + _route_path(conn.scope), conn.scope, exc.status_code,
              token_id=getattr(conn.state, "token_id", None))  # fmt: skip
        close_code = CLOSE_UNAUTHORIZED if exc.status_code == 401 else CLOSE_FORBIDDEN
        with contextlib.suppress(Exception):
            if conn.client_state == WebSocketState.CONNECTING:
                await conn.accept(subprotocol=accept_subprotocol(conn))
            await asyncio.wait_for(conn.send_text(error_message(exc.code, exc.message)), 2.0)
            await asyncio.wait_for(conn.close(close_code, exc.code), 1.0)
        return None
    assert isinstance(conn, Request)
    return await http_exception_handler(conn, exc)


# ---- audit -------------------------------------------------------------------------------


def _route_path(scope: Scope) -> str:
    """The path with its parameters named (`/v1/streams/{stream_id}`): the request's
    path with each path-parameter value put back as `{name}`, so audit actions group
    by route and no query string ever reaches the log."""
    names = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    segments = str(scope.get("path", "")).split("/")
    return "/".join(f"{{{names[s]}}}" if s in names else s for s in segments)


def audit(action: str, scope: Scope, status: int, **fields: Any) -> None:
    """One JSON line on the `streamseg.audit` logger. Values are JSON-escaped (no
    fake log lines); tokens never reach it, only their ids."""
    client = scope.get("client")
    params = scope.get("path_params") or {}
    record: dict[str, Any] = {
        "action": action,
        "token_id": fields.pop("token_id", None),
        "stream": fields.pop("stream", None) or params.get("stream_id"),
        "outcome": "ok" if status < 400 else "refused" if status < 500 else "error",
        "status": status,
        "client": client[0] if client else None,
    }
    if params.get("image_id"):
        record["image"] = params["image_id"]
    record.update({k: v for k, v in fields.items() if v is not None})
    audit_log.info("audit %s", json.dumps(record, ensure_ascii=True, separators=(",", ":")))


def audit_note(conn: HTTPConnection, **fields: Any) -> None:
    """Add facts to this request's audit line (e.g. the stream a POST created)."""
    notes = conn.scope.setdefault("state", {}).setdefault("audit", {})
    notes.update(fields)


# ---- the middleware ----------------------------------------------------------------------


class SecurityMiddleware:
    """Host allow-list (DNS rebinding), Origin allow-list for websockets and state-
    changing requests (cross-site requests), and the audit line of every state-changing
    or refused request."""

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        raw_headers = scope.get("headers", ())
        headers = headers_of(raw_headers)
        hosts = sum(1 for name, _ in raw_headers if name.lower() == b"host")
        method = scope.get("method", "GET") if kind == "http" else "WEBSOCKET"
        path = scope.get("path", "")
        state: dict[str, Any] = scope.setdefault("state", {})
        refusal: tuple[int, str, str] | None = None
        if path not in OPEN_PATHS and (
            hosts != 1 or not self.policy.host_allowed(headers.get("host"))
        ):  # two Host headers: which one a proxy used is anyone's guess
            refusal = (421, "bad_host", "this server does not answer for that Host name")
        elif kind == "websocket" or method in UNSAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None and not self.policy.origin_allowed(origin, headers.get("host")):
                refusal = (403, "bad_origin", "requests from that Origin are not allowed")
        if refusal is not None:
            status, code, message = refusal
            audit(f"{method} {path}", scope, status, reason=code)
            await _refuse(scope, receive, send, status, code, message)
            return
        if kind == "websocket":
            await self.app(scope, receive, send)
            return

        status_box = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            status = status_box[0]
            if method in UNSAFE_METHODS or status in (401, 403):
                audit(
                    f"{method} {_route_path(scope)}",
                    scope,
                    status,
                    token_id=state.get("token_id"),
                    **state.get("audit", {}),
                )


async def _refuse(
    scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str
) -> None:
    if scope["type"] == "http":
        body = {"detail": {"code": code, "message": message}}
        await JSONResponse(body, status_code=status)(scope, receive, send)
    else:  # a close before accept: the server refuses the handshake with 403
        await send({"type": "websocket.close", "code": 1008, "reason": code})


# ---- wiring ------------------------------------------------------------------------------


def install(app: FastAPI, policy: HostPolicy, cors_origins: tuple[str, ...]) -> None:
    """Add the guard (outermost), CORS only when origins are configured, and the
    handler that turns AuthError into 401/403 or a websocket close."""
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            allow_credentials=False,
            max_age=600,
        )
    app.add_middleware(SecurityMiddleware, policy=policy)
    app.add_exception_handler(AuthError, _auth_error_handler)  # type: ignore[arg-type]


async def watch_token_file(store: TokenStore, interval_s: float = TOKEN_TAKES_EFFECT_S) -> None:
    """Poll the token file's mtime/size/inode off the loop; changes apply within
    `interval_s`, without a restart. Returns at once when there is no file."""
    while store.token_file is not None:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(store.reload_if_changed)
        except Exception:
            log.exception("token file check failed")


def on_sighup(store: TokenStore) -> Callable[[], None] | None:
    """Reload the token file on SIGHUP (main thread only); returns the remover."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[bool]] = set()

    def reload() -> None:
        task = loop.create_task(asyncio.to_thread(store.reload))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, reload)
    except (ValueError, RuntimeError, NotImplementedError, AttributeError):
        return None  # not the main thread (in-process servers), or no SIGHUP here

    def remove() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return remove


def log_auth_mode(store: TokenStore) -> None:
    """What protects this server, by token id only."""
    if store.disabled:
        log.warning(
            "AUTHENTICATION IS OFF (--insecure-no-auth-on-network): anyone who reaches "
            "this port can watch, prompt, add and delete streams"
        )
    elif store.generated is not None:
        log.info("access token generated for this run (id 'generated', all scopes)")
    else:
        log.info("accepting tokens: %s", ", ".join(store.token_ids) or "(none yet)")
