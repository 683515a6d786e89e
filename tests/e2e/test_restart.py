"""Issue 14, findings 2, 3 and 6, with real components: the real server restarted twice
on one streams file (same ids back, clients resume at once), a client that outlives
its stream, a plain `websockets` client that sees state events through a camera
outage, and the 1012 close with a reason at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
import yaml
from websockets.exceptions import ConnectionClosed

from streamseg.client import LatestResults, Result, StreamsegClient
from streamseg.media.synthetic import shape_boxes
from streamseg.protocol.messages import SCHEMA_REVISION
from streamseg.server.background import ServerStartError, free_port, running_server
from streamseg.server.runtime import Runtime
from streamseg.server.streams_file import StreamsFileError
from tests.auth_helpers import AUTH
from tests.e2e.rtsp_server import RtspTestServer

pytestmark = pytest.mark.e2e
SECRET = "dock-secret-2041"


@pytest.fixture
async def camera() -> AsyncIterator[RtspTestServer]:
    rtsp = RtspTestServer(free_port())
    await rtsp.start()
    yield rtsp
    await rtsp.stop()


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Runtime]]:
    # The test cameras live on loopback, which the source policy refuses by default.
    with running_server(max_streams=8, source_allow_loopback=True) as running:
        yield running


def _streams_file(path: Path, port: int) -> None:
    box = list(shape_boxes(0, 240, 320)[1])
    path.write_text(
        "# the dock camera; its password comes from the environment\n"
        "streams:\n"
        "  - id: dock\n"
        f"    url: rtsp://viewer:${{DOCK_PASSWORD}}@127.0.0.1:{port}/live\n"
        "    name: Dock\n"
        "    options: {stall_timeout_s: 2}\n"
        f"    prompts: [{{box: {box}}}]\n"
    )


def _get(url: str, path: str) -> Any:
    r = httpx.get(f"{url}{path}", headers=AUTH, timeout=10)
    r.raise_for_status()
    return r.json()


def _wait_streaming(url: str, stream_id: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info: dict[str, Any] = _get(url, f"/v1/streams/{stream_id}")
        if info["state"] == "streaming":
            return info
        time.sleep(0.05)
    raise AssertionError(f"{stream_id} never streamed")


@contextlib.asynccontextmanager
async def _serving(**settings: Any) -> AsyncIterator[tuple[str, Runtime]]:
    """`running_server` entered and left off the loop, which serves the test camera."""
    running = running_server(**settings)
    url, runtime = await asyncio.to_thread(running.__enter__)
    try:
        yield url, runtime
    finally:
        await asyncio.to_thread(running.__exit__, None, None, None)


def _tracked_from(feed: LatestResults, seq: int) -> Result:
    """The first result at `seq` or later that has a track (blocking)."""
    last = -1
    while True:
        result = feed.latest(newer_than=last, timeout=20)
        assert result is not None, "no results"
        if result.seq >= seq and result.message.tracks:
            return result
        last = result.seq


async def test_restarts_keep_streams_and_clients_resume_at_once(
    camera: RtspTestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real server started three times on one streams file and one port: the
    declared stream and a persisted one come back under their ids (an ad-hoc one does
    not), the file's box starts a track each time, and a `LatestResults` living through
    both restarts gets a fresh result at once although seq starts again from 0."""
    monkeypatch.setenv("DOCK_PASSWORD", SECRET)
    path = tmp_path / "streams.yaml"
    _streams_file(path, camera.port)
    settings = {"streams_file": str(path), "source_allow_loopback": True, "port": free_port()}
    feed = LatestResults(
        f"http://127.0.0.1:{settings['port']}", "dock", backoff_initial_s=0.05, backoff_max_s=0.25
    )
    feed.start()  # no server yet: it keeps retrying
    boots, epochs, resumes = [], [], []
    last: Result | None = None
    try:
        for life in range(3):
            async with _serving(**settings) as (url, runtime):
                ready = time.time()
                info = await asyncio.to_thread(_wait_streaming, url, "dock")
                assert info["persisted"] and info["name"] == "Dock"
                assert SECRET not in json.dumps(info) and "viewer:***@" in info["url"]
                listed = {s["id"]: s for s in await asyncio.to_thread(_get, url, "/v1/streams")}
                if life == 0:
                    assert set(listed) == {"dock"}
                    async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
                        body = {"url": camera.url, "id": "yard"}
                        r = await http.post("/v1/streams?persist=true", json=body)
                        assert r.status_code == 201 and r.json()["persisted"], r.text
                        r = await http.post("/v1/streams", json={"url": camera.url})
                        assert r.status_code == 201 and r.json()["id"].startswith("s")
                else:  # the persisted stream is back, the ad-hoc one is not
                    assert set(listed) == {"dock", "yard"}
                    assert all(s["persisted"] for s in listed.values())
                boots.append(runtime.boot_id)
                epochs.append(info["epoch"])
                # The robot's loop: newer_than the last seq it saw, which came from the
                # server before; this server's seq started again from 0.
                watermark = -1 if last is None else last.seq
                result = await asyncio.to_thread(feed.latest, watermark, 20.0)
                # The old server may have sent a few more results before it stopped.
                while result is not None and last is not None and result.boot_id == last.boot_id:
                    result = await asyncio.to_thread(feed.latest, result.seq, 20.0)
                assert result is not None and result.boot_id == runtime.boot_id
                assert result.epoch == info["epoch"]
                if last is not None:
                    assert result.seq < last.seq and last.boot_id == boots[-2]
                resumes.append(time.time() - ready)
                assert result.message.times.capture_ts > ready - 1  # fresh, not stale
                tracked = await asyncio.to_thread(_tracked_from, feed, 0)
                assert [t.track_id for t in tracked.message.tracks] == [1]  # the file's box
                last = await asyncio.to_thread(_tracked_from, feed, 40)  # past the next's seq
    finally:
        await asyncio.to_thread(feed.stop)
    assert len(set(boots)) == 3 and len(set(epochs)) == 3
    written = path.read_text()
    assert SECRET not in written and "${DOCK_PASSWORD}" in written
    assert [s["id"] for s in yaml.safe_load(written)["streams"]] == ["dock", "yard"]
    print(f"\nrestart: first fresh result {', '.join(f'{s:.2f}' for s in resumes)} s after ready")
    assert max(resumes) < 5


async def test_a_bad_streams_file_refuses_start_up(tmp_path: Path) -> None:
    path = tmp_path / "streams.yaml"
    path.write_text("streams:\n  - id: dock\n    url: rtsp://127.0.0.1:1/live\n    bogus: 1\n")
    with pytest.raises(StreamsFileError, match=r"streams\.yaml:4: unknown key 'bogus'"):
        running_server(streams_file=str(path)).__enter__()
    # A name resolving to loopback is refused by the policy once resolved, at start-up.
    path.write_text("streams:\n  - id: dock\n    url: rtsp://localhost:1/live\n")
    with pytest.raises(
        ServerStartError, match=r"streams\.yaml:2: stream 'dock' refused \(forbidden\)"
    ):
        await asyncio.to_thread(lambda: running_server(streams_file=str(path)).__enter__())


async def test_persist_refusals_and_delete(
    camera: RtspTestServer, tmp_path: Path, server: tuple[str, Runtime]
) -> None:
    url, _ = server
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
        r = await http.post("/v1/streams?persist=true", json={"url": camera.url, "id": "x1"})
        assert r.status_code == 409 and r.json()["detail"]["code"] == "no_streams_file"
        r = await http.post("/v1/streams", json={"url": camera.url, "id": "s7"})
        assert r.status_code == 422 and "reserved" in r.text
        r = await http.post("/v1/streams", json={"url": camera.url, "id": "../x"})
        assert r.status_code == 422
        r = await http.post("/v1/streams", json={"url": camera.url, "id": "cam-1"})
        assert r.status_code == 201 and r.json()["id"] == "cam-1"
        r = await http.post("/v1/streams", json={"url": camera.url, "id": "cam-1"})
        assert r.status_code == 409 and r.json()["detail"]["code"] == "stream_exists"
        assert (await http.delete("/v1/streams/cam-1?persist=true")).status_code == 409
        assert (await http.delete("/v1/streams/cam-1")).status_code == 204

    path = tmp_path / "streams.yaml"  # no file yet: persist creates it
    settings = {"streams_file": str(path), "source_allow_loopback": True}
    async with (
        _serving(**settings) as (url2, _),
        httpx.AsyncClient(base_url=url2, headers=AUTH) as http,
    ):
        body: dict[str, Any] = {"url": camera.url}
        r = await http.post("/v1/streams?persist=true", json=body)
        assert r.status_code == 422 and r.json()["detail"]["code"] == "id_required"
        secret = camera.url.replace("rtsp://", f"rtsp://u:{SECRET}@")
        r = await http.post("/v1/streams?persist=true", json={"url": secret, "id": "a"})
        assert r.status_code == 422 and r.json()["detail"]["code"] == "secret_in_url"
        assert SECRET not in r.text and not path.exists()
        body = {"url": camera.url, "id": "gate", "options": {"stall_timeout_s": 4}}
        assert (await http.post("/v1/streams?persist=true", json=body)).status_code == 201
        saved = yaml.safe_load(path.read_text())["streams"]
        assert saved == [{"id": "gate", "url": camera.url, "options": {"stall_timeout_s": 4}}]
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        assert (await http.delete("/v1/streams/gate?persist=true")).status_code == 204
        assert yaml.safe_load(path.read_text())["streams"] == []
        assert not list(tmp_path.glob(".streams-*"))  # no temporary file left


async def test_a_client_outlives_its_stream(
    server: tuple[str, Runtime], camera: RtspTestServer
) -> None:
    """Deleted and re-added later under the same id: the robot loop keeps going (no
    StreamNotFoundError), and the re-created stream's results start a new epoch."""
    url, _ = server
    admin = StreamsegClient(url)
    await admin.create_stream(camera.url, stream_id="porch")
    client = StreamsegClient(url, backoff_initial_s=0.05, backoff_max_s=0.25)
    got: list[Result] = []

    async def robot() -> None:
        async for result in client.results("porch"):
            got.append(result)

    task = asyncio.ensure_future(robot())
    try:
        await _until(lambda: len(got) >= 3)
        await admin.delete_stream("porch")
        await _until(lambda: "porch" in client.missing_since)
        await asyncio.sleep(1.0)  # several refused reconnects
        assert not task.done()
        before = len(got)
        await admin.create_stream(camera.url, stream_id="porch")
        await _until(lambda: len(got) > before)
        fresh = got[before]
        assert fresh.new_epoch and fresh.epoch != got[0].epoch
        assert fresh.boot_id == got[0].boot_id and not got[before - 1].new_epoch
        assert "porch" not in client.missing_since
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(Exception):
            await admin.delete_stream("porch")


async def _until(condition: Any, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


class _Texts:
    """Every text message of a plain websocket client, read in the background."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.items: list[dict[str, Any]] = []
        self.closed: ConnectionClosed | None = None
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if isinstance(message, str):
                    self.items.append(json.loads(message))
        except ConnectionClosed as exc:
            self.closed = exc
        else:
            self.closed = ConnectionClosed(self.ws.close_rcvd, self.ws.close_sent)

    async def state(self, state: str, timeout: float = 20) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next(
                (e for e in self.items if e.get("event") == "state" and e["state"] == state),
                None,
            )

        await _until(lambda: found() is not None, timeout)
        event = found()
        assert event is not None
        self.items = self.items[self.items.index(event) + 1 :]
        return event


async def test_events_through_a_camera_outage(server: tuple[str, Runtime]) -> None:
    url, _ = server
    port = free_port()
    camera = RtspTestServer(port)
    await camera.start()
    client = StreamsegClient(url)
    info = await client.create_stream(
        camera.url, stall_timeout_s=1.0, read_timeout_s=1.5, backoff_max_s=1.0
    )
    sid = info["id"]
    ws_url = client.ws_url(sid) + "&events=all"
    try:
        _ = await asyncio.to_thread(_wait_streaming, url, sid)
        async with websockets.connect(ws_url, additional_headers=AUTH, compression=None) as ws:
            hello = json.loads(await ws.recv())
            assert hello["rev"] == SCHEMA_REVISION and hello["events"] == ["state", "tracks"]
            assert hello["epoch"] == info["epoch"] and len(hello["boot_id"]) == 16
            texts = _Texts(ws)
            first = await texts.state("streaming")
            assert first["previous"] is None and first["reason"] == "frames"
            await client.add_prompt(sid, box=list(shape_boxes(0, 240, 320)[1]))

            killed = time.time()
            await camera.stop()
            lost = await texts.state("reconnecting")
            assert lost["previous"] in ("streaming", "stalled") and lost["reason"]
            assert lost["message"] and time.time() - killed < 5
            camera = RtspTestServer(port)
            await camera.start()
            back = await texts.state("streaming")
            assert back["reason"] == "frames"

            frozen = time.time()
            camera.freeze()
            stalled = await texts.state("stalled")
            assert stalled["reason"] == "no_frames" and "1 s" in stalled["message"]
            assert time.time() - frozen < 3
            print(
                f"\nevents: reconnecting {lost['ts'] - killed:.2f} s after the kill, "
                f"stalled {stalled['ts'] - frozen:.2f} s after the freeze"
            )
            await client.delete_stream(sid)
            stopped = await texts.state("stopped")
            assert stopped["reason"] == "deleted"
            await _until(lambda: texts.closed is not None)
            assert texts.closed is not None and texts.closed.rcvd is not None
            assert texts.closed.rcvd.code == 4404
    finally:
        with contextlib.suppress(Exception):
            await client.delete_stream(sid)
        await camera.stop()


async def test_events_are_opt_in_and_checked(
    server: tuple[str, Runtime], camera: RtspTestServer
) -> None:
    url, _ = server
    client = StreamsegClient(url)
    sid = (await client.create_stream(camera.url))["id"]
    try:
        async with websockets.connect(client.ws_url(sid), additional_headers=AUTH) as ws:
            hello = json.loads(await ws.recv())
            assert hello["events"] == []
            for _ in range(5):  # frames only: a client from before revision 3 is unaffected
                assert isinstance(await asyncio.wait_for(ws.recv(), 20), bytes)
        bad = client.ws_url(sid) + "&events=gossip"
        async with websockets.connect(bad, additional_headers=AUTH) as ws:
            error = json.loads(await ws.recv())
            assert error["code"] == "bad_events" and "state, tracks" in error["message"]
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4422
    finally:
        await client.delete_stream(sid)


async def test_shutdown_closes_feeds_with_1012_and_a_reason(camera: RtspTestServer) -> None:
    running = running_server(source_allow_loopback=True)
    url, _ = await asyncio.to_thread(running.__enter__)
    stopped = False
    try:
        client = StreamsegClient(url)
        sid = (await client.create_stream(camera.url))["id"]
        ws_url = client.ws_url(sid) + "&events=state"
        async with websockets.connect(ws_url, additional_headers=AUTH, compression=None) as ws:
            json.loads(await ws.recv())
            texts = _Texts(ws)
            await texts.state("streaming")
            await asyncio.to_thread(running.__exit__, None, None, None)
            stopped = True
            last = await texts.state("stopped")
            assert last["reason"] == "shutdown" and last["message"] == "server shutting down"
            await _until(lambda: texts.closed is not None)
            assert texts.closed is not None and texts.closed.rcvd is not None
            assert texts.closed.rcvd.code == 1012
            assert texts.closed.rcvd.reason == "server shutting down"
    finally:
        if not stopped:
            await asyncio.to_thread(running.__exit__, None, None, None)
