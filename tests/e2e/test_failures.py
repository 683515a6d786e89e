"""Unexpected failures and stream teardown against the real server on 127.0.0.1: a
prompt that fails inside the inference worker is answered on every surface (aiortc
data channel, websocket feed, REST), and deleted streams leave no /metrics series."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from PIL import Image

from streamseg.client_webrtc import SyntheticVideoTrack, WebRTCClient
from streamseg.media.synthetic import shape_boxes
from streamseg.server.background import free_port, running_server
from streamseg.server.runtime import Runtime
from tests.auth_helpers import AUTH
from tests.e2e.rtsp_server import RtspTestServer

pytestmark = pytest.mark.e2e
SECRET = "secret-detail /etc/streamseg/token.txt"
PROMPT = {"type": "prompt", "points": [[20, 20]], "labels": [1]}
CAMERA = (160, 120)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Runtime]]:
    # 320x240 WebRTC frames exceed max_frame_side: the `too_large` drop path.
    with running_server(
        max_streams=8, max_peers=4, max_frame_side=200, source_allow_loopback=True
    ) as running:
        yield running


@pytest.fixture
async def rtsp() -> AsyncIterator[RtspTestServer]:
    camera = RtspTestServer(free_port(), width=CAMERA[0], height=CAMERA[1])
    await camera.start()
    yield camera
    await camera.stop()


async def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.05)


def _metric(url: str, name: str, **labels: str) -> float:
    """Sum of the series of `name` with these labels (0 when there is none)."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", headers=AUTH).text.splitlines():
        if line.startswith("#") or not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _series_of(url: str, stream_id: str) -> list[str]:
    return [
        line
        for line in httpx.get(f"{url}/metrics", headers=AUTH).text.splitlines()
        if f'stream="{stream_id}"' in line
    ]


def _explode(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(SECRET)


def _assert_internal(reply: dict[str, Any], caplog: pytest.LogCaptureFixture) -> str:
    """An `internal` error that leaks nothing and whose id finds the traceback."""
    assert reply["code"] == "internal", reply
    error_id = reply.get("error_id") or reply.get("request_id")
    assert isinstance(error_id, str) and error_id in reply["message"]
    assert SECRET not in json.dumps(reply) and "RuntimeError" not in json.dumps(reply)
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert SECRET in str(logged[0].exc_info[1])
    return error_id


async def _create_camera(http: httpx.AsyncClient, url: str, rtsp: RtspTestServer) -> str:
    response = await http.post(f"{url}/v1/streams", json={"url": rtsp.url})
    assert response.status_code == 201, response.text
    sid: str = response.json()["id"]

    async def processed() -> int:
        info = (await http.get(f"{url}/v1/streams/{sid}")).json()
        return int(info["frames_processed"])

    deadline = time.monotonic() + 20
    while await processed() < 2:
        assert time.monotonic() < deadline, "the camera never delivered frames"
        await asyncio.sleep(0.05)
    return sid


async def test_data_channel_answers_an_unexpected_failure(
    server: tuple[str, Runtime], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url, runtime = server
    caplog.set_level(logging.ERROR)
    client = WebRTCClient(url, SyntheticVideoTrack(*CAMERA))
    await client.connect()
    try:
        await _wait_for(lambda: len(client.metadata) > 2)
        assert client.stream_id is not None
        before = _metric(url, "streamseg_internal_errors_total", surface="data_channel")
        monkeypatch.setattr(runtime.streams[client.stream_id].tracker, "add_prompt", _explode)
        reply = await client.request(PROMPT, timeout=10)
        assert reply["type"] == "error" and reply["request_id"] == f"r{client._request}"
        _assert_internal(reply, caplog)
        assert _metric(url, "streamseg_internal_errors_total", surface="data_channel") == (
            before + 1
        )
        monkeypatch.undo()
        reply = await client.request(PROMPT, timeout=10)
        assert reply["type"] == "ack", reply
        count = len(client.metadata)
        await _wait_for(lambda: len(client.metadata) > count + 3)
    finally:
        await client.close()


async def test_websocket_and_rest_answer_an_unexpected_failure(
    server: tuple[str, Runtime],
    rtsp: RtspTestServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, runtime = server
    caplog.set_level(logging.ERROR)
    async with httpx.AsyncClient(headers=AUTH, limits=httpx.Limits(max_connections=1)) as http:
        sid = await _create_camera(http, url, rtsp)
        try:
            tracker = runtime.streams[sid].tracker
            ws_url = url.replace("http", "ws", 1) + f"/v1/streams/{sid}/masks"
            async with websockets.connect(ws_url, compression=None, additional_headers=AUTH) as ws:
                assert json.loads(await ws.recv())["type"] == "hello"
                before = _metric(url, "streamseg_internal_errors_total", surface="websocket")
                monkeypatch.setattr(tracker, "add_prompt", _explode)
                await ws.send(json.dumps({**PROMPT, "request_id": "w1"}))
                reply = await _text_reply(ws)
                assert reply["type"] == "error" and reply["request_id"] == "w1"
                _assert_internal(reply, caplog)
                assert _metric(url, "streamseg_internal_errors_total", surface="websocket") == (
                    before + 1
                )

                before = _metric(url, "streamseg_internal_errors_total", surface="rest")
                first = await http.post(f"{url}/v1/streams/{sid}/prompts", json=PROMPT)
                assert first.status_code == 500
                assert first.headers["content-type"] == "application/json"
                detail = first.json()["detail"]
                assert detail["request_id"] == first.headers["x-request-id"]
                _assert_internal(detail, caplog)
                assert _metric(url, "streamseg_internal_errors_total", surface="rest") == (
                    before + 1
                )

                monkeypatch.undo()
                second = await http.post(f"{url}/v1/streams/{sid}/prompts", json=PROMPT)
                assert second.status_code == 200, second.text
                # The same keep-alive connection answered both.
                addr = "network_stream"
                assert first.extensions[addr].get_extra_info("client_addr") == (
                    second.extensions[addr].get_extra_info("client_addr")
                )

                await ws.send(json.dumps({**PROMPT, "request_id": "w2"}))
                reply = await _text_reply(ws)
                assert reply["type"] == "ack" and reply["request_id"] == "w2", reply
                frames = 0
                while frames < 3:  # the feed carries on
                    frames += isinstance(await asyncio.wait_for(ws.recv(), 10), bytes)
        finally:
            await http.delete(f"{url}/v1/streams/{sid}")


async def test_any_rest_route_failing_gives_a_json_500(
    server: tuple[str, Runtime], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url, runtime = server
    caplog.set_level(logging.ERROR)
    assert runtime.segmenter is not None
    monkeypatch.setattr(runtime.segmenter, "encode", _explode)
    body = {"image_base64": _tiny_png(), "prompts": [{"box": [0, 0, 4, 4]}]}
    async with httpx.AsyncClient(headers=AUTH) as http:
        response = await http.post(f"{url}/v1/segment", json=body)
        assert response.status_code == 500
        _assert_internal(response.json()["detail"], caplog)
        assert (await http.get(f"{url}/healthz")).status_code == 200


def _tiny_png() -> str:
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


async def _text_reply(ws: Any) -> dict[str, Any]:
    while True:
        message = await asyncio.wait_for(ws.recv(), 10)
        if isinstance(message, str):
            body: dict[str, Any] = json.loads(message)
            return body


class _SlowStep:
    """Wraps a tracker's step so one step is surely in flight when the stream is deleted."""

    def __init__(self, runtime: Runtime, sid: str) -> None:
        self.session = runtime.streams[sid]
        self.original = self.session.tracker.step_encoded
        self.started = threading.Event()
        self.finished = threading.Event()
        self.closed_while_stepping = False
        self.session.tracker.step_encoded = self  # type: ignore[method-assign]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.started.set()
        time.sleep(0.3)
        self.closed_while_stepping = self.session.closed
        try:
            return self.original(*args, **kwargs)
        finally:
            self.finished.set()


async def test_deleted_camera_streams_leave_no_series(
    server: tuple[str, Runtime], rtsp: RtspTestServer
) -> None:
    url, runtime = server
    deleted = []
    async with httpx.AsyncClient(headers=AUTH) as http:
        for _ in range(3):
            sid = await _create_camera(http, url, rtsp)
            box = list(shape_boxes(0, CAMERA[1], CAMERA[0])[0])
            prompt = {"type": "prompt", "box": box}
            response = await http.post(f"{url}/v1/streams/{sid}/prompts", json=prompt)
            assert response.status_code == 200, response.text
            assert _metric(url, "streamseg_tracks_active") == 1
            assert _metric(url, "streamseg_frames_processed_total", stream=sid) > 0
            slow = _SlowStep(runtime, sid)
            assert await asyncio.to_thread(slow.started.wait, 10)
            assert (await http.delete(f"{url}/v1/streams/{sid}")).status_code == 204
            assert await asyncio.to_thread(slow.finished.wait, 10)
            assert slow.closed_while_stepping
            deleted.append(sid)
    await asyncio.sleep(0.3)  # the in-flight step's metrics and result are handled
    for sid in deleted:
        assert _series_of(url, sid) == []
    assert _metric(url, "streamseg_tracks_active") == 0
    assert _metric(url, "streamseg_streams_active") == 0


async def test_closed_peers_leave_no_series(server: tuple[str, Runtime]) -> None:
    url, runtime = server
    normal = WebRTCClient(url, SyntheticVideoTrack(*CAMERA))
    oversized = WebRTCClient(url, SyntheticVideoTrack(320, 240))
    await normal.connect()
    await oversized.connect()
    try:
        await _wait_for(lambda: len(normal.metadata) > 2)
        reply = await normal.request(PROMPT)
        assert reply["type"] == "ack", reply
        assert _metric(url, "streamseg_tracks_active") == 1
        big = oversized.stream_id
        assert big is not None
        await _wait_for(
            lambda: (
                _metric(url, "streamseg_frames_dropped_total", stream=big, where="too_large") > 0
            )
        )
    finally:
        await normal.close()
        await oversized.close()
    await _wait_for(lambda: not runtime.streams, 30)
    await asyncio.sleep(0.3)
    for sid in (normal.stream_id, big):
        assert sid is not None and _series_of(url, sid) == []
    assert _metric(url, "streamseg_tracks_active") == 0
    assert _metric(url, "streamseg_peers_active") == 0
    assert _metric(url, "streamseg_streams_active") == 0
