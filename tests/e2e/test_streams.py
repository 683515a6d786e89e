"""Camera streams end to end: a real RTSP server on 127.0.0.1, the real server, real
websocket clients and the robot client library."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from streamseg.client import LatestResults, Result, StreamNotFoundError, StreamsegClient
from streamseg.media.frame import Frame
from streamseg.media.synthetic import shape_boxes, write_h264
from streamseg.server.background import free_port, running_server
from streamseg.server.routes_masks import feed_count
from streamseg.server.runtime import Runtime
from tests.auth_helpers import AUTH
from tests.e2e.rtsp_server import RtspTestServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Runtime]]:
    # The test cameras live on loopback and the clips in pytest's temporary folders:
    # both are refused by default, so allowed here explicitly.
    root = str(tmp_path_factory.getbasetemp())
    with running_server(
        max_streams=8, source_allow_loopback=True, source_media_root=root
    ) as running:
        yield running


@pytest.fixture
async def rtsp() -> AsyncIterator[RtspTestServer]:
    camera = RtspTestServer(free_port())
    await camera.start()
    yield camera
    await camera.stop()


async def _state(client: StreamsegClient, stream_id: str, wanted: str, timeout: float) -> Any:
    deadline = time.time() + timeout
    info = None
    while time.time() < deadline:
        info = await client.get_stream(stream_id)
        if info["state"] == wanted:
            return info
        await asyncio.sleep(0.05)
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


def _metric(url: str, name: str, **labels: str) -> float | None:
    text = httpx.get(f"{url}/metrics", headers=AUTH).text
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def _server_sockets(server_port: int, client_port: int) -> list[str]:
    """TCP states (hex, /proc/net/tcp) of the server's sockets to one client port."""
    table = Path("/proc/net/tcp")
    if not table.exists():
        pytest.skip("needs Linux /proc/net/tcp")
    states = []
    for line in table.read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == (
            client_port
        ):
            states.append(state)
    return states


async def _reply(ws: Any) -> dict[str, Any]:
    """The next text message, skipping frame messages."""
    while True:
        message = await asyncio.wait_for(ws.recv(), 10)
        if isinstance(message, str):
            body: dict[str, Any] = json.loads(message)
            return body


async def test_rtsp_camera_to_robot(server: tuple[str, Runtime], rtsp: RtspTestServer) -> None:
    url, _ = server
    client = StreamsegClient(url)
    posted = time.time()
    stream = await client.create_stream(rtsp.url, name="dock camera", stall_timeout_s=2)
    sid = stream["id"]
    assert stream["state"] == "connecting"
    info = await _state(client, sid, "streaming", 20)
    print(f"\nrtsp: streaming {time.time() - posted:.2f} s after POST /v1/streams")
    assert info["name"] == "dock camera" and info["kind"] == "rtsp"

    results = client.results(sid, encoding="rle")
    first = (await _take(results, 1))[0]
    assert first.message.tracks == ()
    x0, y0, x1, y1 = shape_boxes(first.seq, 240, 320)[1]
    outcome = await client.add_prompt(sid, box=[x0, y0, x1, y1], frame_seq=first.seq)
    assert outcome["created"] and outcome["exact"] and outcome["applied_seq"] == first.seq
    track_id = outcome["track_id"]

    async for r in results:  # results already on their way were made before the prompt
        if r.message.tracks:
            break
    got = await _take(results, 20)
    await results.aclose()  # type: ignore[attr-defined]
    seqs = [r.seq for r in got]
    assert seqs == sorted(set(seqs))
    skews = []
    for r in got:
        t = r.message.times
        assert t.capture_ts <= t.recv_ts <= t.infer_start <= t.infer_end <= (t.sent_ts or 0)
        assert [tr.track_id for tr in r.message.tracks] == [track_id]
        mask = r.masks[track_id]
        assert mask.shape == (240, 320) and mask.dtype == bool
        assert int(mask.sum()) == r.message.tracks[0].area
        # RTCP sender reports give the camera's own capture time of each frame.
        assert t.capture_ts_source == "stream"
        skews.append(t.capture_ts - rtsp.frame_times[r.seq])
    errors = np.abs(skews)
    print(
        f"rtsp: capture time from RTCP off by {1000 * np.median(errors):.1f} ms median, "
        f"{1000 * errors.max():.1f} ms max (the test camera's own scheduling jitter)"
    )
    assert np.median(errors) < 0.01 and errors.max() < 0.05

    jpeg = await client.frame_jpeg(sid)
    assert jpeg[:2] == b"\xff\xd8"
    info = await client.get_stream(sid)
    assert info["fps_in"] > 10 and info["tracks"] == [track_id]
    assert info["capture_clock"] == "stream" and 0 <= info["capture_lag_ms"] < 500
    assert info["width"] == 320 and info["height"] == 240 and info["last_error"] is None
    assert _metric(url, "streamseg_source_state", stream=sid, state="streaming") == 1.0
    assert _metric(url, "streamseg_source_state", stream=sid, state="stalled") == 0.0
    await client.delete_stream(sid)
    with pytest.raises(StreamNotFoundError):
        await client.get_stream(sid)
    assert _metric(url, "streamseg_source_state", stream=sid) is None


async def test_camera_drops_freezes_and_comes_back(server: tuple[str, Runtime]) -> None:
    url, _ = server
    port = free_port()
    camera = RtspTestServer(port)
    await camera.start()
    client = StreamsegClient(url)
    sid = (await client.create_stream(camera.url, stall_timeout_s=1.0, read_timeout_s=1.5))["id"]
    try:
        await _state(client, sid, "streaming", 20)
        killed = time.time()
        await camera.stop()
        info = await _state(client, sid, "reconnecting", 10)
        lost = time.time() - killed
        assert info["last_error"] and info["reconnects"] >= 1
        frames_before = info["frames_received"]
        camera = RtspTestServer(port)
        await camera.start()
        started = time.time()
        await _state(client, sid, "streaming", 20)
        print(
            f"\nrtsp: kill seen as reconnecting in {lost:.2f} s, streaming again "
            f"{time.time() - started:.2f} s after the restart"
        )
        results = await _take(client.results(sid), 5)
        assert results[-1].seq >= frames_before  # seq stays monotonic over reconnects
        reconnects = _metric(url, "streamseg_source_reconnects_total", stream=sid)
        assert reconnects is not None and reconnects >= 1
        camera.freeze()
        frozen = time.time()
        await _state(client, sid, "stalled", 10)
        stalled = time.time() - frozen
        assert stalled < 3
        info = await _state(client, sid, "reconnecting", 15)
        assert info["last_error"].startswith("timeout:")
        assert info["errors"]["source"]["reason"] == "timeout"
        print(
            f"rtsp: frozen camera reported stalled after {stalled:.2f} s, reconnecting "
            f"after {time.time() - frozen:.2f} s ({info['last_error']})"
        )
    finally:
        await client.delete_stream(sid)
        await camera.stop()


async def test_udp_transport(server: tuple[str, Runtime], rtsp: RtspTestServer) -> None:
    url, _ = server
    client = StreamsegClient(url)
    sid = (await client.create_stream(rtsp.url + "?transport=udp"))["id"]
    try:
        results = await _take(client.results(sid), 5)
        assert rtsp.transports == ["udp"] and results[-1].seq > results[0].seq
        assert (await client.get_stream(sid))["options"]["transport"] == "udp"
    finally:
        await client.delete_stream(sid)


async def test_a_stalled_reader_never_delays_another(server: tuple[str, Runtime]) -> None:
    url, runtime = server
    camera = RtspTestServer(free_port(), width=640, height=480)
    await camera.start()
    client = StreamsegClient(url)
    sid = (await client.create_stream(camera.url))["id"]
    try:
        await _state(client, sid, "streaming", 20)
        for box in shape_boxes(0, 480, 640):  # three big masks: ~115 KB per message
            await client.add_prompt(sid, box=list(box))
        ws_url = client.ws_url(sid, "bitpack")
        async with websockets.connect(
            ws_url, additional_headers=AUTH, compression=None, max_queue=1
        ) as stalled:
            await stalled.recv()  # hello, then never read again
            arrivals: list[float] = []
            async with websockets.connect(
                ws_url, additional_headers=AUTH, compression=None
            ) as reader:
                await reader.recv()
                assert feed_count(runtime) == 2
                end = time.time() + 8
                while time.time() < end:
                    await asyncio.wait_for(reader.recv(), 2)
                    arrivals.append(time.time())
                assert feed_count(runtime) == 1  # the stalled one was dropped
            # Aborted, not closed politely: the server holds no socket (nor the megabytes
            # queued for it) waiting on a peer that does not read.
            server_port = int(url.rsplit(":", 1)[1])
            assert _server_sockets(server_port, stalled.local_address[1]) == []
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(stalled.recv(), 5)
        gaps = np.diff(arrivals)
        info = await client.get_stream(sid)
        print(
            f"\nwebsocket: {len(arrivals) / 8:.1f} msg/s to the reading client, max gap "
            f"{1000 * gaps.max():.0f} ms, while another never read (and was dropped); "
            f"stream fps_out {info['fps_out']:.1f}"
        )
        assert len(arrivals) / 8 > 0.8 * info["fps_out"] > 2  # it got every processed frame
        assert gaps.max() < 1.0
        assert _metric(url, "streamseg_websocket_closed_total", reason="too_slow") == 1.0
    finally:
        await client.delete_stream(sid)
        await camera.stop()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"url": "ftp://example.org/x"}, "bad_url"),
        ({"url": "/nonexistent/video.mp4"}, "bad_url"),
        ({"url": "rtsp:///nohost"}, "bad_url"),
        ({"url": "rtsp://cam/live?transport=quic"}, "bad_url"),
    ],
)
def test_bad_stream_urls(server: tuple[str, Runtime], body: dict[str, Any], code: str) -> None:
    url, _ = server
    r = httpx.post(f"{url}/v1/streams", json=body, headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"]["code"] == code
    assert httpx.post(f"{url}/v1/streams", json={"nope": 1}, headers=AUTH).status_code == 422
    typo = {"url": "rtsp://cam/live", "options": {"stall_timeout": 3}}
    assert httpx.post(f"{url}/v1/streams", json=typo, headers=AUTH).status_code == 422


async def test_unreachable_unsupported_and_broken_sources(
    server: tuple[str, Runtime], rtsp: RtspTestServer, tmp_path: Path
) -> None:
    url, _ = server
    client = StreamsegClient(url)
    good = (await client.create_stream(rtsp.url))["id"]
    weird = RtspTestServer(free_port(), codec="X-NOPE")
    await weird.start()
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 500)
    sids = [good]
    try:
        dead = (await client.create_stream(f"rtsp://127.0.0.1:{free_port()}/x"))["id"]
        odd = (await client.create_stream(weird.url))["id"]
        broken = (await client.create_stream(str(garbage)))["id"]
        sids += [dead, odd, broken]
        info = await _state(client, dead, "reconnecting", 15)
        assert info["last_error"].startswith("refused:"), info
        r = httpx.get(f"{url}/v1/streams/{dead}/frame.jpg", headers=AUTH)
        assert r.status_code == 409 and r.json()["detail"]["code"] == "no_frame_yet"
        info = await _state(client, odd, "error", 15)
        assert info["last_error"].startswith("unsupported:") and "decoder" in info["last_error"]
        info = await _state(client, broken, "error", 15)
        assert info["last_error"].startswith("invalid_data:"), info
        assert (await client.get_stream(good))["state"] == "streaming"
        assert await _take(client.results(good), 3)
        assert _metric(url, "streamseg_source_state", stream=odd, state="error") == 1.0
        assert httpx.get(f"{url}/healthz").status_code == 200
    finally:
        for sid in sids:
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
        headers = {**AUTH, "content-type": "application/json"}
        r = httpx.request(method, f"{url}{path}", headers=headers)
        assert r.status_code == 404 and r.json()["detail"]["code"] == "unknown_stream"
    client = StreamsegClient(url, missing_stream_timeout_s=0)  # raise at once, no retries
    with pytest.raises(StreamNotFoundError):
        await _take(client.results("zz"), 1)
    async with websockets.connect(client.ws_url("zz"), additional_headers=AUTH) as ws:
        assert json.loads(await ws.recv())["code"] == "unknown_stream"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404

    sid = (await client.create_stream(rtsp.url))["id"]
    await _state(client, sid, "streaming", 20)
    async with websockets.connect(client.ws_url(sid, "jpeg"), additional_headers=AUTH) as ws:
        assert json.loads(await ws.recv())["code"] == "bad_encoding"
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    async with websockets.connect(
        client.ws_url(sid), additional_headers=AUTH, compression=None
    ) as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello" and hello["stream_id"] == sid
        cases: list[tuple[str | bytes, str]] = [
            ("{oops", "bad_json"),
            (b"\xff\xfe", "bad_json"),
            ('{"type": "dance"}', "unknown_type"),
            ('{"type": "remove", "track_id": 5}', "unknown_track"),
            ('{"type": "prompt", "box": [0, 0, 999, 9]}', "out_of_frame"),
        ]
        for message, code in cases:
            await ws.send(message)
            reply = await _reply(ws)
            assert reply["type"] == "error" and reply["code"] == code, reply
        await ws.send('{"type": "prompt", "box": [10, 10, 100, 100], "request_id": "a"}')
        reply = await _reply(ws)
        assert reply["type"] == "ack" and reply["request_id"] == "a"
        assert reply["result"]["track_id"] == 1
        await ws.send('{"type": "options", "include_masks": false, "request_id": "b"}')
        assert (await _reply(ws))["result"]["include_masks"] is False
        frame = await asyncio.wait_for(ws.recv(), 10)
        while isinstance(frame, str):
            frame = await asyncio.wait_for(ws.recv(), 10)
        assert b'"mask"' not in frame
    r = httpx.post(f"{url}/v1/streams/{sid}/prompts", json={"type": "prompt"}, headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"]["code"] == "empty_prompt"
    r = httpx.post(
        f"{url}/v1/streams/{sid}/prompts", json={"type": "remove", "track_id": 9}, headers=AUTH
    )
    assert r.status_code == 404 and r.json()["detail"]["code"] == "unknown_track"
    assert (await client.get_stream(sid))["state"] == "streaming"
    await client.delete_stream(sid)


async def test_client_round_trip(server: tuple[str, Runtime], rtsp: RtspTestServer) -> None:
    url, _ = server
    client = StreamsegClient(url)
    sid = (await client.create_stream(rtsp.url, name="robot"))["id"]
    assert [s["id"] for s in await client.list_streams() if s["id"] == sid] == [sid]
    await _state(client, sid, "streaming", 20)
    outcome = await client.add_prompt(sid, points=[[60, 60]])  # no socket open: REST
    track_id = outcome["track_id"]

    # A slow consumer gets fresh results (skipping), never a growing backlog.
    ages: list[float] = []
    async for result in client.results(sid, encoding="png"):
        ages.append(time.time() - result.received_ts)
        if len(ages) <= 6:
            assert set(result.masks) == {track_id}
            assert result.masks[track_id].shape == (240, 320)
        if len(ages) == 6:
            removed = await client.remove_track(sid, track_id)  # over the open socket
            assert removed == {"removed": track_id}
        elif len(ages) > 6 and not result.message.tracks:
            break
        await asyncio.sleep(0.25)
    assert client.dropped >= 10
    assert max(ages) < 0.5

    # The synchronous wrapper, for robot loops without asyncio.
    def robot_loop() -> list[int]:
        with LatestResults(url, sid) as feed:
            seen: list[int] = []
            last = -1
            while len(seen) < 5:
                result = feed.latest(newer_than=last, timeout=10)
                assert result is not None
                seen.append(result.seq)
                last = result.seq
            feed.add_prompt(box=[10, 10, 120, 120])
            while not (result := feed.latest(newer_than=last, timeout=10)) or not result.masks:
                last = result.seq if result else last
            return seen

    seen = await asyncio.to_thread(robot_loop)
    assert seen == sorted(set(seen))

    # Deleting the stream ends a subscriber that asked for it with StreamNotFoundError
    # (by default it keeps retrying: tests/e2e/test_restart.py).
    impatient = StreamsegClient(url, missing_stream_timeout_s=0)

    async def subscriber() -> None:
        async for _ in impatient.results(sid):
            pass

    task = asyncio.ensure_future(subscriber())
    await asyncio.sleep(0.5)
    await client.delete_stream(sid)
    with pytest.raises(StreamNotFoundError):
        await asyncio.wait_for(task, 10)


async def test_file_source_loops(server: tuple[str, Runtime], tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    write_h264(str(path), 160, 120, 15)
    url, _ = server
    client = StreamsegClient(url)
    sid = (await client.create_stream(str(path), loop=True))["id"]
    await asyncio.sleep(1.5)
    info = await client.get_stream(sid)
    assert info["kind"] == "file" and info["frames_received"] > 15 and info["state"] == "streaming"
    assert info["capture_clock"] == "receive"
    await client.delete_stream(sid)


async def test_last_error_clears_once_frames_flow_again(
    server: tuple[str, Runtime], rtsp: RtspTestServer
) -> None:
    """Issue 11 item 8: an old error is reported with its time and count, not as the
    stream's current state once good frames have been processed since."""
    url, runtime = server
    client = StreamsegClient(url)
    sid = (await client.create_stream(rtsp.url))["id"]
    try:
        await _state(client, sid, "streaming", 20)
        session = runtime.cameras[sid].session
        # A frame the tracker refuses (its seq goes backwards). The camera's next frame
        # may replace it in the one-frame slot, so offer it until one is refused.
        image = np.zeros((240, 320, 3), np.uint8)
        deadline = time.time() + 10
        while (info := await client.get_stream(sid))["errors"]["pipeline"] is None:
            assert time.time() < deadline, info
            now = time.time()
            session.submit_frame(Frame(0, image, now, "receive", now))
            await asyncio.sleep(0.01)
        first = info["errors"]["pipeline"]
        assert first["reason"] == "InvalidFrameError" and "seq" in first["message"]
        assert first["count"] >= 1 and abs(first["at"] - time.time()) < 5
        processed = info["frames_processed"]
        while info["frames_processed"] < processed + 40:
            assert time.time() < deadline + 30, info
            await asyncio.sleep(0.1)
            info = await client.get_stream(sid)
        assert info["last_error"] is None and info["state"] == "streaming"
        error = info["errors"]["pipeline"]
        assert error["recovered"] is True and error["reason"] == "InvalidFrameError"
        assert error["count"] >= first["count"] and error["at"] >= first["at"]
    finally:
        await client.delete_stream(sid)
