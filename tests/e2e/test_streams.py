"""Camera streams end to end: a real RTSP server on 127.0.0.1, the real server, real
websocket clients."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets

from streamseg.client import Result, StreamNotFoundError, StreamsegClient
from streamseg.media.synthetic import shape_boxes, write_h264
from streamseg.server.background import free_port, running_server
from streamseg.server.runtime import Runtime
from tests.e2e.rtsp_server import RtspTestServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Runtime]]:
    with running_server(max_streams=8) as running:
        yield running


@pytest.fixture
async def rtsp() -> AsyncIterator[RtspTestServer]:
    camera = RtspTestServer(free_port())
    await camera.start()
    yield camera
    await camera.stop()


async def _state(client: StreamsegClient, stream_id: str, wanted: str, timeout: float) -> dict:  # type: ignore[type-arg]
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = await client.get_stream(stream_id)
        if info["state"] == wanted:
            return info  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)
    raise AssertionError(f"stream never became {wanted}: {info}")


async def _take(results: AsyncIterator[Result], count: int, timeout: float = 20) -> list[Result]:
    out: list[Result] = []

    async def collect() -> None:
        async for r in results:
            out.append(r)
            if len(out) >= count:
                return

    await asyncio.wait_for(collect(), timeout)
    return out


async def test_rtsp_camera_to_robot(server: tuple[str, Runtime], rtsp: RtspTestServer) -> None:
    url, _ = server
    client = StreamsegClient(url)
    stream = await client.create_stream(rtsp.url, name="dock camera", stall_timeout_s=2)
    sid = stream["id"]
    info = await _state(client, sid, "streaming", 20)
    assert info["name"] == "dock camera" and info["kind"] == "rtsp"
    await asyncio.sleep(0.3)
    x0, y0, x1, y1 = shape_boxes(0, 240, 320)[1]
    outcome = await client.prompt(sid, box=[x0, y0, x1, y1])
    assert outcome["created"] and outcome["exact"]
    track_id = outcome["track_id"]

    results = await _take(client.results(sid, encoding="rle"), 20)
    seqs = [r.message.seq for r in results]
    assert seqs == sorted(set(seqs))
    for r in results:
        t = r.message.times
        assert t.capture_ts <= t.recv_ts <= t.infer_start <= t.infer_end <= (t.sent_ts or 0)
        assert [tr.track_id for tr in r.message.tracks] == [track_id]
        mask = r.masks[track_id]
        assert mask.shape == (240, 320) and mask.dtype == bool
        assert int(mask.sum()) == r.message.tracks[0].area

    jpeg = httpx.get(f"{url}/v1/streams/{sid}/frame.jpg")
    assert jpeg.status_code == 200 and jpeg.content[:2] == b"\xff\xd8"
    info = await client.get_stream(sid)
    assert info["fps_in"] > 10 and info["tracks"] == [track_id]
    await client.delete_stream(sid)
    with pytest.raises(StreamNotFoundError):
        await client.get_stream(sid)


async def test_camera_drops_freezes_and_comes_back(server: tuple[str, Runtime]) -> None:
    url, _ = server
    port = free_port()
    camera = RtspTestServer(port)
    await camera.start()
    client = StreamsegClient(url)
    sid = (await client.create_stream(camera.url, stall_timeout_s=1.5))["id"]
    try:
        await _state(client, sid, "streaming", 20)
        await camera.stop()
        info = await _state(client, sid, "reconnecting", 10)
        assert info["last_error"]
        frames_before = info["frames_received"]
        camera = RtspTestServer(port)
        await camera.start()
        started = time.time()
        await _state(client, sid, "streaming", 20)
        print(f"\nrtsp: streaming again {time.time() - started:.1f} s after the restart")
        results = await _take(client.results(sid), 5)
        assert results[-1].message.seq >= frames_before
        camera.freeze()
        frozen = time.time()
        await _state(client, sid, "stalled", 10)
        assert time.time() - frozen < 5
    finally:
        await client.delete_stream(sid)
        await camera.stop()


async def test_a_stalled_reader_never_delays_another(
    server: tuple[str, Runtime], rtsp: RtspTestServer
) -> None:
    url, _ = server
    client = StreamsegClient(url)
    sid = (await client.create_stream(rtsp.url))["id"]
    await _state(client, sid, "streaming", 20)
    await client.prompt(sid, box=[10, 10, 200, 200])
    ws_url = client._ws_url(sid, "bitpack")
    async with websockets.connect(ws_url, compression=None, max_queue=1) as stalled:
        await stalled.recv()  # hello, then never read again
        arrivals: list[float] = []
        async with websockets.connect(ws_url, compression=None) as reader:
            await reader.recv()
            end = time.time() + 6
            while time.time() < end:
                await asyncio.wait_for(reader.recv(), 2)
                arrivals.append(time.time())
    gaps = np.diff(arrivals)
    print(
        f"\nwebsocket: {len(arrivals) / 6:.1f} msg/s to the reading client, max gap "
        f"{1000 * gaps.max():.0f} ms, while another client never read"
    )
    assert len(arrivals) > 6 * 10
    assert gaps.max() < 1.0
    await client.delete_stream(sid)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"url": "ftp://example.org/x"}, "bad_url"),
        ({"url": "/nonexistent/video.mp4"}, "bad_url"),
        ({"url": "rtsp:///nohost"}, "bad_url"),
    ],
)
def test_bad_stream_urls(server: tuple[str, Runtime], body: dict, code: str) -> None:  # type: ignore[type-arg]
    url, _ = server
    r = httpx.post(f"{url}/v1/streams", json=body)
    assert r.status_code == 422 and r.json()["detail"]["code"] == code
    assert httpx.post(f"{url}/v1/streams", json={"nope": 1}).status_code == 422


async def test_unreachable_and_unsupported_sources_report_errors(
    server: tuple[str, Runtime], rtsp: RtspTestServer
) -> None:
    url, _ = server
    client = StreamsegClient(url)
    good = (await client.create_stream(rtsp.url))["id"]
    weird = RtspTestServer(free_port(), codec="X-NOPE")
    await weird.start()
    try:
        dead = (await client.create_stream(f"rtsp://127.0.0.1:{free_port()}/x"))["id"]
        odd = (await client.create_stream(weird.url))["id"]
        for sid in (dead, odd):
            info = await _state(client, sid, "reconnecting", 15)
            assert info["last_error"], info
        assert (await client.get_stream(good))["state"] == "streaming"
        results = await _take(client.results(good), 3)
        assert results
    finally:
        for sid in (good, dead, odd):
            await client.delete_stream(sid)
        await weird.stop()


async def test_unknown_ids_and_bad_socket_messages(
    server: tuple[str, Runtime], rtsp: RtspTestServer
) -> None:
    url, _ = server
    unknown = [
        ("GET", "/v1/streams/zz"),
        ("DELETE", "/v1/streams/zz"),
        ("POST", "/v1/streams/zz/prompts"),
        ("GET", "/v1/streams/zz/frame.jpg"),
    ]
    for method, path in unknown:
        assert httpx.request(method, f"{url}{path}").status_code == 404
    client = StreamsegClient(url)
    with pytest.raises(StreamNotFoundError):
        await _take(client.results("zz"), 1)
    sid = (await client.create_stream(rtsp.url))["id"]
    await _state(client, sid, "streaming", 20)
    async with websockets.connect(client._ws_url(sid, "rle"), compression=None) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        for message, code in (("{oops", "bad_json"), ('{"type": "remove", "track_id": 5}',
                              "unknown_track"), ('{"type": "prompt", "box": [0, 0, 999, 9]}',
                              "invalid_prompt")):  # fmt: skip
            await ws.send(message)
            while True:
                reply = await asyncio.wait_for(ws.recv(), 10)
                if isinstance(reply, str):
                    break
            assert json.loads(reply)["code"] == code
        await ws.send('{"type": "prompt", "box": [10, 10, 100, 100], "request_id": "a"}')
        while True:
            reply = await asyncio.wait_for(ws.recv(), 10)
            if isinstance(reply, str):
                break
        assert json.loads(reply) | {"result": None} == {
            "v": 1,
            "type": "ack",
            "request_id": "a",
            "result": None,
        }
    r = httpx.post(f"{url}/v1/streams/{sid}/prompts", json={"type": "prompt"})
    assert r.status_code == 422 and r.json()["detail"]["code"] == "empty_prompt"
    await client.delete_stream(sid)


async def test_file_source_loops(server: tuple[str, Runtime], tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    write_h264(str(path), 160, 120, 15)
    url, _ = server
    client = StreamsegClient(url)
    sid = (await client.create_stream(str(path), loop=True))["id"]
    await asyncio.sleep(1.5)
    info = await client.get_stream(sid)
    assert info["kind"] == "file" and info["frames_received"] > 15 and info["state"] == "streaming"
    await client.delete_stream(sid)
