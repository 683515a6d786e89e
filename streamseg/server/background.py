"""Run the real app with uvicorn on 127.0.0.1 in a background thread (tests and the
server benchmark drive it with real peers from the same process)."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from streamseg.config import Settings
from streamseg.server.app import create_app
from streamseg.server.client_limits import uvicorn_options
from streamseg.server.runtime import Runtime
from streamseg.server.serving import DrainingServer


class ServerStartError(RuntimeError):
    """The in-process server could not start (model, backend or port); says why."""


def server_token(runtime: Runtime) -> str:
    """The all-scope token of a server started by `running_server`."""
    token = runtime.settings.token
    if not token:
        raise ValueError("this server was started without a token setting")
    return token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(
    ready_timeout_s: float = 120.0, **overrides: object
) -> Iterator[tuple[str, Runtime]]:
    """The app on a free port until the block ends. Start-up (download, export, engine
    build, warm-up) may take up to `ready_timeout_s`; a failed start raises at once.

    Authentication is on: the token with every scope is `STREAMSEG_TOKEN` when set
    (so clients that read it just work), else a fresh one; `server_token(runtime)`."""
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": free_port(),
        "model": "test",
        "weights": "random",
        "ice_hosts": ("127.0.0.1",),
        "token": os.environ.get("STREAMSEG_TOKEN") or secrets.token_urlsafe(32),
        **overrides,
    }
    settings = Settings(**values)  # type: ignore[arg-type]
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        ws_per_message_deflate=False,
        **uvicorn_options(settings, app.state.runtime.metrics),
    )
    server = DrainingServer(config, app.state.runtime, settings.drain_s)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    runtime: Runtime = app.state.runtime
    deadline = time.time() + ready_timeout_s
    while time.time() < deadline:
        if not thread.is_alive():
            raise ServerStartError(runtime.start_error or "the server stopped while starting")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        server.should_exit = True
        raise ServerStartError(f"the server did not become ready in {ready_timeout_s:.0f} s")
    try:
        yield url, runtime
    finally:
        server.should_exit = True
        thread.join(30)
