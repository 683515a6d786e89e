"""The websocket mask feed at the camera's rate (`?rate=source`) against the model's
(`?rate=model`): a real RTSP camera on 127.0.0.1, the real server with a model several
times slower than the camera, plain `websockets` clients and the robot client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from streamseg.client import StreamNotFoundError, StreamsegClient
from streamseg.protocol.masks import mask_bbox
from streamseg.protocol.messages import FrameResultMessage, decode_frame_message
from streamseg.server.background import free_port, running_server
from streamseg.server.runtime import Runtime
from tests.auth_helpers import AUTH
from tests.e2e.rtsp_server import RtspTestServer

pytestmark = pytest.mark.e2e
SECONDS = 5.0


@pytest.fixture(scope="module")
def slow_server() -> Iterator[tuple[str, Runtime]]:
    """SAM 2.1 tiny at 256 px, random weights: a few steps a second on this CPU, against
    a 30 fps camera, so most camera frames lie between model steps."""
    with running_server(
        model="tiny", image_size=256, max_streams=2, source_allow_loopback=True
    ) as running:
        yield running


@pytest.fixture
async def camera(slow_server: tuple[str, Runtime]) -> AsyncIterator[tuple[StreamsegClient, str]]:
    rtsp = RtspTestServer(free_port())
    await rtsp.start()
    client = StreamsegClient(slow_server[0])
    sid = (await client.create_stream(rtsp.url))["id"]
    try:
        deadline = time.time() + 20
        while (await client.get_stream(sid))["state"] != "streaming":
            assert time.time() < deadline, "the camera never streamed"
            await asyncio.sleep(0.05)
        yield client, sid
    finally:
        with contextlib.suppress(StreamNotFoundError):  # a test deleted it
            await client.delete_stream(sid)
        await rtsp.stop()


async def _collect(
    url: str, seconds: float
) -> tuple[dict[str, Any], list[tuple[float, FrameResultMessage, list[np.ndarray]]]]:
    """The hello, then every frame message (arrival time, header, masks) for `seconds`."""
    got: list[tuple[float, FrameResultMessage, list[np.ndarray]]] = []
    async with websockets.connect(url, additional_headers=AUTH, compression=None) as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
        end = time.time() + seconds
        while (left := end - time.time()) > 0:
            try:
                data = await asyncio.wait_for(ws.recv(), left)
            except TimeoutError:
                break
            if isinstance(data, bytes):
                msg, masks = decode_frame_message(data)
                got.append((time.time(), msg, masks or []))
    return hello, got


async def test_source_rate_sends_every_camera_frame_with_moved_masks(
    camera: tuple[StreamsegClient, str],
) -> None:
    client, sid = camera
    reply = await client.add_prompt(sid, box=[40, 40, 160, 140])
    track_id = reply["track_id"]
    # A model step after the prompt: from then on every result carries the track.
    processed = (await client.get_stream(sid))["frames_processed"]
    deadline = time.time() + 60
    while (await client.get_stream(sid))["frames_processed"] <= processed:
        assert time.time() < deadline
        await asyncio.sleep(0.1)

    (model_hello, by_model), (source_hello, by_source) = await asyncio.gather(
        _collect(client.ws_url(sid, "rle", "model"), SECONDS),
        _collect(client.ws_url(sid, "bitpack", "source"), SECONDS),
    )
    assert model_hello["rate"] == "model" and source_hello["rate"] == "source"
    model_rate, source_rate = len(by_model) / SECONDS, len(by_source) / SECONDS
    info = await client.get_stream(sid)
    print(
        f"\nwebsocket feed: rate=model {model_rate:.1f} msg/s, rate=source "
        f"{source_rate:.1f} msg/s (camera fps_in {info['fps_in']:.1f}, model fps_out "
        f"{info['fps_out']:.1f})"
    )
    assert source_rate >= 15 and source_rate >= 3 * model_rate > 0, (source_rate, model_rate)

    seqs = [m.seq for _, m, _ in by_source]
    assert seqs == sorted(set(seqs))
    model_seqs = {m.seq for _, m, _ in by_model}
    carried_from: list[int] = []
    propagated = 0
    for _, msg, masks in by_source:
        assert [t.track_id for t in msg.tracks] == [track_id]
        track, mask = msg.tracks[0], masks[0]
        assert mask.shape == (240, 320) and mask.dtype == bool
        assert int(mask.sum()) == track.area and mask_bbox(mask) == track.bbox
        t = msg.times
        assert t.capture_ts <= t.recv_ts <= (t.sent_ts or 0)
        assert t.infer_start <= t.infer_end <= (t.sent_ts or 0)
        if track.source == "propagated":
            propagated += 1
            assert track.model_seq is not None and track.model_seq < msg.seq
            assert track.age_ms > 0
            if not carried_from or carried_from[-1] != track.model_seq:
                carried_from.append(track.model_seq)
        else:
            assert track.model_seq is None and track.age_ms == 0
    assert propagated >= 0.8 * len(by_source)
    # The masks come from the model's own results, newest first: the frames they were
    # computed on are frames the model-rate feed reported (bar the one before it opened).
    assert carried_from == sorted(carried_from)
    assert set(carried_from[1:]) <= model_seqs, (carried_from, sorted(model_seqs))

    for _, msg, masks in by_model:
        assert [t.source for t in msg.tracks] == ["model"] and msg.stages_ms
        assert masks[0].shape == (240, 320)


async def test_robot_client_at_source_rate_and_bad_rates(
    slow_server: tuple[str, Runtime], camera: tuple[StreamsegClient, str]
) -> None:
    client, sid = camera
    seen: list[int] = []
    start = time.time()
    async for result in client.results(sid, rate="source"):
        seen.append(result.seq)
        if len(seen) == 30:
            break
    elapsed = time.time() - start
    assert seen == sorted(set(seen)) and elapsed < 5, elapsed
    with pytest.raises(ValueError, match="rate"):
        await anext(client.results(sid, rate="fast"))

    async with websockets.connect(client.ws_url(sid, rate="fast"), additional_headers=AUTH) as ws:
        error = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert error["type"] == "error" and error["code"] == "bad_rate", error
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4422
        assert "rate must be one of model, source" in closed.value.rcvd.reason

    # Deleting the stream ends a source-rate feed like a model-rate one.
    async with websockets.connect(
        client.ws_url(sid, rate="source"), additional_headers=AUTH, compression=None
    ) as ws:
        await asyncio.wait_for(ws.recv(), 10)  # hello
        await client.delete_stream(sid)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404
