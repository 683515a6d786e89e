"""Hostile JSON and the other inputs that used to give 500s (issue 12, item 8), against
the real server on 127.0.0.1 with real clients: every REST body, websocket message and
data-channel message is parsed by one strict parser and refused with a clear 4xx or
`bad_json` error, on a connection that stays usable."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from PIL import Image

from streamseg.client_webrtc import SyntheticVideoTrack, WebRTCClient
from streamseg.server.background import free_port, running_server
from streamseg.server.runtime import Runtime
from tests.auth_helpers import AUTH
from tests.e2e.rtsp_server import RtspTestServer

pytestmark = pytest.mark.e2e
DEEP = "[" * 100_000 + "]" * 100_000  # deeper than Python's recursion limit
HUGE_INT = "7" * 5000  # over Python's 4300-digit int() limit
JSON_TYPE = {"content-type": "application/json"}


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


PNG_B64 = base64.b64encode(_png()).decode()


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def server(media_root: Path) -> Iterator[tuple[str, Runtime]]:
    with running_server(source_allow_loopback=True, source_media_root=str(media_root)) as running:
        yield running


@pytest.fixture
async def rtsp() -> AsyncIterator[RtspTestServer]:
    camera = RtspTestServer(free_port(), width=160, height=120)
    await camera.start()
    yield camera
    await camera.stop()


def _internal_errors(url: str) -> float:
    text = httpx.get(f"{url}/metrics", headers=AUTH).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("streamseg_internal_errors_total{")
    )


def _refused(response: httpx.Response, status: int, code: str, words: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert detail["code"] == code and isinstance(detail["message"], str), detail
    assert words in detail["message"], detail
    assert "Traceback" not in response.text


def _body(prompts: str) -> str:
    return f'{{"image_base64": "{PNG_B64}", "prompts": {prompts}}}'


REST_CASES = [
    ("/v1/segment", _body(DEEP), "nested"),
    ("/v1/segment", _body(f'[{{"points": [[1, {HUGE_INT}]], "labels": [1]}}]'), "digits"),
    ("/v1/segment", _body('[{"box": [0, 0, NaN, 4]}]'), "NaN"),
    ("/v1/segment", _body('[{"box": [0, 0, 1e999, 4]}]'), "finite"),
    ("/v1/images", f'{{"image_base64": "{PNG_B64}", "x": {DEEP}}}', "nested"),
    ("/v1/streams", '{"url": "/x", "options": {"stall_timeout_s": NaN}}', "NaN"),
    ("/v1/streams", '{"url": "/x", "options": {"stall_timeout_s": Infinity}}', "Infinity"),
    ("/v1/streams", f'{{"url": "/x", "options": {{"stall_timeout_s": {HUGE_INT}}}}}', "digits"),
    ("/v1/streams", f'{{"url": {DEEP}}}', "nested"),
    ("/v1/webrtc/offer", '{"sdp": NaN, "type": "offer"}', "NaN"),
    ("/v1/webrtc/offer", f'{{"sdp": "v=0", "type": "offer", "options": {DEEP}}}', "nested"),
]


@pytest.mark.parametrize(("path", "body", "words"), REST_CASES)
def test_rest_bodies_are_parsed_strictly(
    server: tuple[str, Runtime], path: str, body: str, words: str
) -> None:
    url, _ = server
    before = _internal_errors(url)
    with httpx.Client(base_url=url, headers=AUTH) as http:
        _refused(http.post(path, content=body, headers=JSON_TYPE), 422, "bad_json", words)
        assert http.get("/healthz").status_code == 200
    assert _internal_errors(url) == before


def test_multipart_prompts_and_cached_images_are_parsed_strictly(
    server: tuple[str, Runtime],
) -> None:
    url, _ = server
    with httpx.Client(base_url=url, headers=AUTH) as http:
        response = http.post(
            "/v1/segment", files={"image": ("x.png", _png(), "image/png")}, data={"prompts": DEEP}
        )
        _refused(response, 422, "bad_json", "nested")
        added = http.post("/v1/images", json={"image_base64": PNG_B64})
        assert added.status_code == 201, added.text
        path = f"/v1/images/{added.json()['image_id']}/segment"
        _refused(http.post(path, content=DEEP, headers=JSON_TYPE), 422, "bad_json", "nested")
        body = f'{{"prompts": [{{"points": [[{HUGE_INT}, 1]], "labels": [1]}}]}}'
        _refused(http.post(path, content=body, headers=JSON_TYPE), 422, "bad_json", "digits")


def test_unusable_urls_are_4xx(server: tuple[str, Runtime], media_root: Path) -> None:
    url, _ = server
    with httpx.Client(base_url=url, headers=AUTH) as http:
        for source in (
            "http://[::1/",
            str(media_root / ("a" * 300 + ".mp4")),  # ENAMETOOLONG
            "file://" + str(media_root / ("b" * 300) / "clip.mp4"),
        ):
            response = http.post("/v1/streams", json={"url": source})
            assert 400 <= response.status_code < 500, response.text
            detail = response.json()["detail"]
            assert detail["code"] == "bad_url" and detail["message"], detail
        assert http.get("/v1/streams").json() == []


NESTED = "[" * 2000 + "]" * 2000
HOSTILE_MESSAGES = [
    (f'{{"type": "remove", "track_id": {HUGE_INT}, "request_id": "h1"}}', "digits"),
    (f'{{"type": "reset", "request_id": "h2", "x": {NESTED}}}', "nested"),
    ('{"type": "prompt", "points": [[NaN, 1]], "labels": [1], "request_id": "h3"}', "NaN"),
]


async def _text_reply(ws: Any) -> dict[str, Any]:
    while True:
        message = await asyncio.wait_for(ws.recv(), 10)
        if isinstance(message, str):
            body: dict[str, Any] = json.loads(message)
            return body


async def test_websocket_messages_are_parsed_strictly(
    server: tuple[str, Runtime], rtsp: RtspTestServer
) -> None:
    url, _ = server
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
        created = await http.post("/v1/streams", json={"url": rtsp.url})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        try:
            prompts = f"/v1/streams/{sid}/prompts"
            for raw, words in HOSTILE_MESSAGES:
                response = await http.post(prompts, content=raw, headers=JSON_TYPE)
                _refused(response, 422, "bad_json", words)
            ws_url = url.replace("http", "ws", 1) + f"/v1/streams/{sid}/masks"
            async with websockets.connect(ws_url, compression=None, additional_headers=AUTH) as ws:
                assert json.loads(await ws.recv())["type"] == "hello"
                for raw, words in HOSTILE_MESSAGES:
                    await ws.send(raw)
                    reply = await _text_reply(ws)
                    assert reply["type"] == "error" and reply["code"] == "bad_json", reply
                    assert words in reply["message"]
                await ws.send('{"type": "reset", "request_id": "ok"}')
                reply = await _text_reply(ws)
                assert reply["type"] == "ack" and reply["request_id"] == "ok", reply
        finally:
            await http.delete(f"/v1/streams/{sid}")


async def test_data_channel_messages_are_parsed_strictly(server: tuple[str, Runtime]) -> None:
    url, _ = server
    client = WebRTCClient(url, SyntheticVideoTrack(160, 120))
    await client.connect()
    try:
        for raw, words in HOSTILE_MESSAGES:
            client.channel.send(raw)
            reply = await asyncio.wait_for(client.replies.get(), 10)
            assert reply["type"] == "error" and reply["code"] == "bad_json", reply
            assert words in reply["message"]
        reply = await client.request({"type": "reset"})
        assert reply["type"] == "ack", reply
    finally:
        await client.close()
