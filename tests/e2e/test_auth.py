"""Access control against the real server on loopback, with real clients (httpx,
websockets, aiortc): tokens and scopes, the token file reloaded while running, the
Host/Origin allow-lists, the content-type rule, the audit log, and secrets that never
reach a log line or a response."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from fastapi import routing
from websockets.exceptions import ConnectionClosed, InvalidStatus

from streamseg.cli import main
from streamseg.client import RequestError, StreamsegClient
from streamseg.client_webrtc import SyntheticVideoTrack, WebRTCClient
from streamseg.config import Settings
from streamseg.media.synthetic import write_h264
from streamseg.protocol.messages import CLOSE_UNAUTHORIZED
from streamseg.server.app import create_app
from streamseg.server.background import running_server
from streamseg.server.runtime import Runtime
from tests.auth_helpers import AUTH, TOKEN

pytestmark = pytest.mark.e2e

VIEWER = "viewer-secret-aaaaaaaaaaaaaaaa"
CONTROLLER = "controller-secret-bbbbbbbbbbbbbb"
ADMIN = "admin-secret-cccccccccccccccccccc"
SCRAPER = "metrics-secret-dddddddddddddddddd"
WRONG = "not-a-token-eeeeeeeeeeeeeeeeeeeee"
TOKEN_FILE = f"""# id      scopes   token
viewer      view     {VIEWER}
controller  control  {CONTROLLER}
ops         admin    {ADMIN}
prometheus  metrics  {SCRAPER}
"""
# Routes anyone may call: probes, and the API description (no data in it).
OPEN = {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("auth")
    tokens = root / "tokens"
    tokens.write_text(TOKEN_FILE)
    tokens.chmod(0o600)
    clip = root / "clip.mp4"
    write_h264(str(clip), 160, 120, 30)
    return tokens, clip


@pytest.fixture(scope="module")
def server(files: tuple[Path, Path]) -> Iterator[tuple[str, Runtime]]:
    tokens, clip = files
    with running_server(
        token_file=str(tokens), source_media_root=str(clip.parent), max_streams=4
    ) as running:
        yield running


@pytest.fixture(scope="module")
def stream(server: tuple[str, Runtime], files: tuple[Path, Path]) -> Iterator[str]:
    url, _ = server
    r = httpx.post(
        f"{url}/v1/streams",
        json={"url": str(files[1]), "options": {"loop": True}},
        headers=bearer(ADMIN),
    )
    assert r.status_code == 201, r.text
    sid = str(r.json()["id"])
    deadline = time.time() + 30
    while httpx.get(f"{url}/v1/streams/{sid}", headers=AUTH).json()["frames_processed"] == 0:
        assert time.time() < deadline, "the clip was never processed"
        time.sleep(0.1)
    yield sid
    httpx.delete(f"{url}/v1/streams/{sid}", headers=bearer(ADMIN))


def _ws_url(url: str, sid: str) -> str:
    return url.replace("http://", "ws://", 1) + f"/v1/streams/{sid}/masks"


def _routes() -> list[tuple[str, set[str] | None]]:
    """(path, methods; None for a websocket) of every route the app has, read from its
    router, included routers flattened: a new route is covered at once."""
    app = create_app(Settings(model="test", weights="random", token=TOKEN))
    out: list[tuple[str, set[str] | None]] = []
    for context in routing.iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, routing.APIWebSocketRoute):
            out.append((str(context.path), None))
        elif isinstance(route, routing.APIRoute):
            out.append((str(context.path), set(route.methods)))
    return out


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


async def _ws_refusal(url: str, **kwargs: Any) -> tuple[dict[str, Any], int]:
    async with websockets.connect(url, **kwargs) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    return first, closed.value.rcvd.code


async def test_every_protected_route_needs_a_token(server: tuple[str, Runtime]) -> None:
    url, _ = server
    routes = _routes()
    paths = {path for path, _ in routes}
    assert paths >= {"/v1/streams", "/v1/segment", "/v1/webrtc/offer", "/metrics"}
    assert "/v1/streams/{stream_id}/masks" in paths
    unprotected: set[str] = set()
    async with httpx.AsyncClient(base_url=url) as http:
        for template, methods in routes:
            path = _concrete(template)
            if methods is None:
                for kwargs in ({}, {"additional_headers": bearer(WRONG)}):
                    first, code = await _ws_refusal(_ws_url(url, "x1"), **kwargs)
                    assert first["code"] == "unauthorized" and code == CLOSE_UNAUTHORIZED
                continue
            for method in sorted(methods - {"HEAD"}):
                for headers in ({}, bearer(WRONG), {"Authorization": f"Basic {TOKEN}"}):
                    r = await http.request(method, path, json={}, headers=headers)
                    if template in OPEN:
                        assert r.status_code != 401
                        continue
                    if r.status_code != 401:
                        unprotected.add(f"{method} {template}: {r.status_code}")
                        continue
                    assert r.json()["detail"]["code"] == "unauthorized"
                    assert r.headers["www-authenticate"] == "Bearer"
    assert not unprotected, unprotected
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200
        page = await http.get("/")  # the demo page itself; it reads the token from #token=
        assert page.status_code == 200 and "streamseg" in page.text


async def test_scopes(server: tuple[str, Runtime], stream: str, files: tuple[Path, Path]) -> None:
    url, _ = server
    prompt = {"type": "prompt", "box": [10, 10, 60, 60]}
    create = {"url": str(files[1])}
    cases: list[tuple[str, str, dict[str, Any] | None, str, int]] = [
        ("GET", "/v1/streams", None, VIEWER, 200),
        ("GET", f"/v1/streams/{stream}/frame.jpg", None, VIEWER, 200),
        ("GET", "/v1/info", None, VIEWER, 200),
        ("POST", f"/v1/streams/{stream}/prompts", prompt, VIEWER, 403),
        ("POST", "/v1/streams", create, VIEWER, 403),
        ("POST", "/v1/streams", create, CONTROLLER, 403),
        ("DELETE", f"/v1/streams/{stream}", None, CONTROLLER, 403),
        ("GET", "/v1/streams", None, CONTROLLER, 403),
        ("GET", "/metrics", None, VIEWER, 403),
        ("GET", "/metrics", None, SCRAPER, 200),
        ("GET", "/v1/streams", None, SCRAPER, 403),
        ("POST", "/v1/segment", {"prompts": []}, VIEWER, 403),
        ("POST", "/v1/segment", {"prompts": []}, ADMIN, 403),
        ("POST", f"/v1/streams/{stream}/prompts", prompt, CONTROLLER, 200),
        ("POST", f"/v1/streams/{stream}/prompts", {"type": "reset"}, CONTROLLER, 200),
    ]
    async with httpx.AsyncClient(base_url=url) as http:
        for method, path, body, token, status in cases:
            r = await http.request(method, path, json=body, headers=bearer(token))
            assert r.status_code == status, (method, path, token[:6], r.text)
            if status == 403:
                detail = r.json()["detail"]
                assert detail["code"] == "forbidden" and "scope" in detail["message"]

    # The websocket feed needs `view`; prompting over it needs `control` as well.
    async with websockets.connect(
        _ws_url(url, stream), subprotocols=["streamseg.v1", f"streamseg.bearer.{VIEWER}"]
    ) as ws:
        assert ws.subprotocol == "streamseg.v1"  # the token itself is never echoed
        assert json.loads(await ws.recv())["type"] == "hello"
        await ws.send(json.dumps({**prompt, "request_id": "p"}))
        await ws.send(json.dumps({"type": "options", "include_masks": False, "request_id": "o"}))
        replies = {}
        while len(replies) < 2:
            message = await asyncio.wait_for(ws.recv(), 10)
            if isinstance(message, str):
                body = json.loads(message)
                replies[body["request_id"]] = body
        assert replies["p"]["type"] == "error" and replies["p"]["code"] == "forbidden"
        assert replies["o"]["type"] == "ack"
    first, code = await _ws_refusal(_ws_url(url, stream), additional_headers=bearer(SCRAPER))
    assert first["code"] == "forbidden" and code == 4403

    # The Python client: a refused token is an error, not a reconnect loop.
    with pytest.raises(RequestError) as refused:
        await StreamsegClient(url, token=WRONG).list_streams()
    assert refused.value.status == 401 and refused.value.code == "unauthorized"
    with pytest.raises(RequestError) as refused:
        async for _ in StreamsegClient(url, token=SCRAPER).results(stream):
            pass
    assert refused.value.code == "forbidden"


async def test_webrtc_offer_needs_control(server: tuple[str, Runtime]) -> None:
    url, runtime = server
    viewer = WebRTCClient(url, SyntheticVideoTrack(160, 120), token=VIEWER)
    with pytest.raises(httpx.HTTPStatusError) as refused:
        await viewer.connect()
    await viewer.close()
    assert refused.value.response.status_code == 403
    nobody = WebRTCClient(url, SyntheticVideoTrack(160, 120), token="")
    with pytest.raises(httpx.HTTPStatusError) as refused:
        await nobody.connect()
    await nobody.close()
    assert refused.value.response.status_code == 401
    assert not any(s.kind == "webrtc" for s in runtime.streams.values())
    client = WebRTCClient(url, SyntheticVideoTrack(160, 120), token=CONTROLLER)
    await client.connect()
    try:
        deadline = time.time() + 20
        while not client.metadata:
            assert time.time() < deadline
            await asyncio.sleep(0.05)
        reply = await client.request({"type": "prompt", "box": [10, 10, 80, 80]})
        assert reply["type"] == "ack"
    finally:
        await client.close()


async def _status_becomes(url: str, token: str, wanted: int, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    async with httpx.AsyncClient(base_url=url) as http:
        while True:
            status = (await http.get("/v1/streams", headers=bearer(token))).status_code
            if status == wanted:
                return
            assert time.time() < deadline, f"still {status}, wanted {wanted}"
            await asyncio.sleep(0.1)


async def test_token_file_is_reloaded_without_a_restart(
    server: tuple[str, Runtime], files: tuple[Path, Path]
) -> None:
    url, _ = server
    tokens = files[0]
    newcomer = "newcomer-secret-ffffffffffffffffff"
    try:
        await _status_becomes(url, newcomer, 401, timeout=1)
        tokens.write_text(TOKEN_FILE + f"newcomer view {newcomer}\n")
        await _status_becomes(url, newcomer, 200)
        tokens.write_text(TOKEN_FILE.replace(f"viewer      view     {VIEWER}", ""))
        await _status_becomes(url, VIEWER, 401)  # revoked
        await _status_becomes(url, newcomer, 401)
        tokens.write_text("this line is not a token entry\n")  # broken: its tokens are off
        await _status_becomes(url, CONTROLLER, 401)
        await _status_becomes(url, TOKEN, 200, timeout=1)  # STREAMSEG_TOKEN is unaffected
    finally:
        tokens.write_text(TOKEN_FILE)
        await _status_becomes(url, VIEWER, 200)


async def test_foreign_host_is_refused(server: tuple[str, Runtime], stream: str) -> None:
    url, _ = server
    port = url.rsplit(":", 1)[1]
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.nip.io", "", "a b"):
            r = await http.get("/v1/info", headers={"Host": host})
            assert r.status_code == 421 and r.json()["detail"]["code"] == "bad_host", host
        r = await http.get("/", headers={"Host": "rebound.example"})  # the page too
        assert r.status_code == 421
        for host in (f"localhost:{port}", f"[::1]:{port}", "127.0.0.1", "LOCALHOST."):
            assert (await http.get("/v1/info", headers={"Host": host})).status_code == 200, host
        assert (await http.get("/healthz", headers={"Host": "10.1.2.3:8000"})).status_code == 200
    # DNS rebinding: the browser resolved evil.example to 127.0.0.1 and says so in Host.
    rebound = _ws_url(url, stream).replace("127.0.0.1", "evil.example")
    with (
        socket.create_connection(("127.0.0.1", int(port))) as sock,
        pytest.raises(InvalidStatus) as refused,
    ):
        async with websockets.connect(rebound, sock=sock, additional_headers=AUTH):
            pass
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as refused:  # a second Host header is refused too
        async with websockets.connect(
            _ws_url(url, stream), additional_headers={**AUTH, "Host": "evil.example"}
        ):
            pass
    # h11 (the per-client limits run on it) refuses two Host headers itself; httptools
    # passes them on and the Host check answers.
    assert refused.value.response.status_code in (400, 403)


async def test_foreign_origin_is_refused(server: tuple[str, Runtime], stream: str) -> None:
    url, _ = server
    for origin in ("http://evil.example", "null", f"{url}.evil.example", "https://127.0.0.1:1"):
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(
                _ws_url(url, stream), additional_headers=AUTH, origin=origin
            ):
                pass
        assert refused.value.response.status_code == 403, origin
    async with websockets.connect(_ws_url(url, stream), additional_headers=AUTH, origin=url) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
        foreign = {"Origin": "http://evil.example"}
        r = await http.post(
            f"/v1/streams/{stream}/prompts", json={"type": "reset"}, headers=foreign
        )
        assert r.status_code == 403 and r.json()["detail"]["code"] == "bad_origin"
        r = await http.delete(f"/v1/streams/{stream}", headers=foreign)
        assert r.status_code == 403
        same = await http.post(
            f"/v1/streams/{stream}/prompts", json={"type": "reset"}, headers={"Origin": url}
        )
        assert same.status_code == 200
        read = await http.get("/v1/streams", headers=foreign)  # reading: no CORS, no headers
        assert read.status_code == 200
        assert not any(k.startswith("access-control-") for k in read.headers)
        preflight = await http.options(
            "/v1/streams",
            headers={**foreign, "Access-Control-Request-Method": "POST"},
        )
        assert not any(k.startswith("access-control-") for k in preflight.headers)


async def test_only_json_or_image_uploads_change_state(
    server: tuple[str, Runtime], stream: str
) -> None:
    """The classic CSRF: a form or a `text/plain` fetch needs no CORS preflight."""
    url, runtime = server
    body = json.dumps({"type": "prompt", "box": [5, 5, 50, 50]}).encode()
    refused_types = [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,
    ]
    tracks = runtime.count_tracks()
    async with httpx.AsyncClient(base_url=url) as http:
        for ctype in refused_types:
            headers = dict(AUTH)
            if ctype is not None:
                headers["content-type"] = ctype
            for path in (f"/v1/streams/{stream}/prompts", "/v1/streams", "/v1/webrtc/offer"):
                r = await http.post(path, content=body, headers=headers)
                assert r.status_code == 415, (path, ctype, r.text)
                assert r.json()["detail"]["code"] == "unsupported_media_type"
        # Image routes also take multipart, and nothing else.
        r = await http.post(
            "/v1/segment", content=b"x", headers={**AUTH, "content-type": "text/plain"}
        )
        assert r.status_code == 415
        r = await http.post(
            "/v1/segment", files={"image": ("x.png", b"junk", "image/png")}, headers=AUTH
        )
        assert r.status_code == 415 and r.json()["detail"]["code"] == "not_an_image"
    assert runtime.count_tracks() == tracks


async def test_secrets_never_reach_logs_or_responses(
    server: tuple[str, Runtime],
    stream: str,
    files: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, _ = server
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    secrets_ = [TOKEN, VIEWER, CONTROLLER, ADMIN, SCRAPER, WRONG]
    async with httpx.AsyncClient(base_url=url) as http:
        for headers in (AUTH, bearer(WRONG), bearer(VIEWER), {}):
            for method, path, body in [
                ("GET", "/v1/info", None),
                ("GET", "/openapi.json", None),
                ("GET", f"/v1/streams/{stream}", None),
                ("POST", f"/v1/streams/{stream}/prompts", {"type": "reset"}),
                ("POST", "/v1/streams", {"url": str(files[1])}),
                ("POST", "/v1/webrtc/offer", {"sdp": "v=0", "type": "offer"}),
                ("GET", "/metrics", None),
            ]:
                r = await http.request(method, path, json=body, headers=headers)
                seen.append(r.text + json.dumps(dict(r.headers)))
                if method == "POST" and path == "/v1/streams" and r.status_code == 201:
                    await http.delete(f"/v1/streams/{r.json()['id']}", headers=AUTH)
    protocols = ["streamseg.v1", f"streamseg.bearer.{WRONG}"]
    first, _ = await _ws_refusal(_ws_url(url, stream), subprotocols=protocols)
    seen.append(json.dumps(first))
    protocols = ["streamseg.v1", f"streamseg.bearer.{TOKEN}"]
    async with websockets.connect(_ws_url(url, stream), subprotocols=protocols) as ws:
        seen.append(str(await ws.recv()))
        seen.append(json.dumps(dict(ws.response.headers)))
        await ws.send(json.dumps({"type": "reset", "request_id": "r"}))
        while True:
            message = await asyncio.wait_for(ws.recv(), 10)
            if isinstance(message, str):
                seen.append(message)
                break
    # The robot client, whose websocket library logs handshake headers at DEBUG.
    results = StreamsegClient(url, token=TOKEN).results(stream)
    await asyncio.wait_for(anext(results), 20)
    await results.aclose()
    await asyncio.sleep(0.2)
    # Plain `websockets.connect` above logs the headers it sends at DEBUG: that is this
    # test's own client, not the server nor streamseg's clients.
    logs = "\n".join(
        f"{r.name} {r.getMessage()}" for r in caplog.records if r.name != "websockets.client"
    )
    assert "[redacted]" in logs  # the robot client's handshake lines, redacted
    for secret in secrets_:
        assert secret not in logs
        assert not any(secret in text for text in seen)
    # The audit log: one JSON line per state-changing request, by token id.
    audits = [
        json.loads(r.getMessage().split(" ", 1)[1])
        for r in caplog.records
        if r.name == "streamseg.audit"
    ]
    created = [a for a in audits if a["action"] == "POST /v1/streams" and a["status"] == 201]
    assert created and created[0]["token_id"] == "env" and created[0]["stream"]
    assert created[0]["url"].endswith("clip.mp4")
    resets = [a for a in audits if a["action"] == "POST /v1/streams/{stream_id}/prompts"]
    assert {(a["token_id"], a["status"]) for a in resets} >= {("env", 200), ("viewer", 403)}
    assert all(a["stream"] == stream for a in resets)
    assert any(a["token_id"] is None and a["status"] == 401 for a in resets)
    assert any(a["action"] == "websocket ResetTracks" and a["token_id"] == "env"
               for a in audits)  # fmt: skip
    assert any(a["action"].startswith("websocket /v1/streams") and a["status"] == 401
               for a in audits)  # fmt: skip


def test_network_bind_without_tokens_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("STREAMSEG_TOKEN", raising=False)
    monkeypatch.delenv("STREAMSEG_TOKEN_FILE", raising=False)
    for host in ("0.0.0.0", "::", "192.168.1.20"):
        rc = main(["serve", "--host", host, "--model", "test", "--weights", "random"])
        err = capsys.readouterr().err
        assert rc == 2 and "--insecure-no-auth-on-network" in err, err
    monkeypatch.setenv("STREAMSEG_TOKEN_FILE", "/nonexistent/tokens")
    assert main(["serve", "--model", "test", "--weights", "random"]) == 2
    assert "cannot be read" in capsys.readouterr().err
