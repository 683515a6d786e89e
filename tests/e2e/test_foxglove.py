"""The Foxglove bridge with real components: the real server started on a streams file
whose RTSP test camera (loopback) starts a track from its first frame, and a plain
`websockets` client speaking the Foxglove protocol. Its masks are decoded with the
protobuf schema the server advertises and checked pixel by pixel against the same
frames' masks from streamseg's own websocket feed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
import websockets
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from websockets.exceptions import InvalidStatus

from streamseg.client import Result, StreamsegClient
from streamseg.media.synthetic import shape_boxes
from streamseg.server.background import free_port, running_server
from streamseg.server.runtime import Runtime
from tests.auth_helpers import AUTH
from tests.e2e.rtsp_server import RtspTestServer

pytest.importorskip("foxglove")
pytestmark = pytest.mark.e2e
# The SDK's server (foxglove-sdk 0.30) accepts only this name for the protocol; the
# older `foxglove.websocket.v1` is refused with 400 (tested below).
SUBPROTOCOL = "foxglove.sdk.v1"
FRAME_ID = "dock_optical"
OP_MESSAGE_DATA = 0x01


@pytest.fixture
async def camera() -> AsyncIterator[RtspTestServer]:
    rtsp = RtspTestServer(free_port())
    await rtsp.start()
    yield rtsp
    await rtsp.stop()


@contextlib.asynccontextmanager
async def _serving(**settings: Any) -> AsyncIterator[tuple[str, Runtime]]:
    """`running_server` entered and left off the loop, which serves the test camera."""
    running = running_server(**settings)
    url, runtime = await asyncio.to_thread(running.__enter__)
    try:
        yield url, runtime
    finally:
        await asyncio.to_thread(running.__exit__, None, None, None)


def _streams_file(path: Path, port: int) -> None:
    box = list(shape_boxes(0, 240, 320)[1])
    path.write_text(
        "streams:\n"
        "  - id: dock\n"
        f"    url: rtsp://127.0.0.1:{port}/live\n"
        f"    prompts: [{{box: {box}}}]\n"
        f"    frame_id: {FRAME_ID}\n"
    )


class FoxgloveClient:
    """The protocol by hand: JSON control messages, binary `messageData` frames
    (opcode 1, subscription id u32, log time u64 ns, then the message), decoded with
    the FileDescriptorSet each channel advertises."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.channels: dict[str, dict[str, Any]] = {}  # topic -> advertised channel
        self.server_info: dict[str, Any] | None = None
        self._pools: dict[int, Any] = {}
        self._subscriptions: dict[int, dict[str, Any]] = {}
        self._next_sub = 1

    async def next(self, timeout: float = 20) -> tuple[dict[str, Any], int, Any] | None:
        """Handle control messages; the next data message as (channel, log time,
        decoded protobuf), or None after a control message."""
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        if isinstance(raw, str):
            body = json.loads(raw)
            if body["op"] == "serverInfo":
                self.server_info = body
            elif body["op"] == "advertise":
                for channel in body["channels"]:
                    self.channels[channel["topic"]] = channel
            elif body["op"] == "unadvertise":
                gone = set(body["channelIds"])
                self.channels = {t: c for t, c in self.channels.items() if c["id"] not in gone}
            return None
        opcode, sub_id, log_time = struct.unpack_from("<BIQ", raw, 0)
        assert opcode == OP_MESSAGE_DATA
        channel = self._subscriptions[sub_id]
        return channel, log_time, self.decode(channel, raw[13:])

    async def wait_for_topic(self, topic: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while topic not in self.channels:
            assert time.monotonic() < deadline, f"{topic} never advertised: {list(self.channels)}"
            await self.next(deadline - time.monotonic())
        return self.channels[topic]

    async def subscribe(self, topic: str) -> None:
        channel = self.channels[topic]
        sub_id, self._next_sub = self._next_sub, self._next_sub + 1
        self._subscriptions[sub_id] = channel
        subscription = {"id": sub_id, "channelId": channel["id"]}
        await self.ws.send(json.dumps({"op": "subscribe", "subscriptions": [subscription]}))

    def decode(self, channel: dict[str, Any], data: bytes) -> Any:
        assert channel["encoding"] == "protobuf" and channel["schemaEncoding"] == "protobuf"
        pool = self._pools.get(channel["id"])
        if pool is None:
            files = descriptor_pb2.FileDescriptorSet.FromString(base64.b64decode(channel["schema"]))
            pool = descriptor_pool.DescriptorPool()
            for proto in files.file:
                pool.Add(proto)
            self._pools[channel["id"]] = pool
        cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(channel["schemaName"]))
        return cls.FromString(data)


def _ns(seconds: float) -> int:
    """Nanoseconds as the SDK's `Timestamp.from_epoch_secs` makes them."""
    from foxglove.messages import Timestamp

    stamp = Timestamp.from_epoch_secs(seconds)
    return stamp.sec * 1_000_000_000 + stamp.nsec


async def test_foxglove_client_sees_the_streams_own_masks(
    camera: RtspTestServer, tmp_path: Path
) -> None:
    path = tmp_path / "streams.yaml"
    _streams_file(path, camera.port)
    fox_port = free_port()
    settings = {"streams_file": str(path), "source_allow_loopback": True, "foxglove_port": fox_port}
    async with _serving(**settings) as (url, _):
        # streamseg's own feed of the same results, kept by capture time
        own: dict[int, Result] = {}
        client = StreamsegClient(url)

        async def record() -> None:
            async for result in client.results("dock", encoding="rle"):
                own[_ns(result.message.times.capture_ts)] = result

        recorder = asyncio.ensure_future(record())
        try:
            async with websockets.connect(
                f"ws://127.0.0.1:{fox_port}",
                subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                compression=None,
                max_size=None,
            ) as ws:
                assert ws.subprotocol == SUBPROTOCOL
                fox = FoxgloveClient(ws)
                mask_topic = "/streamseg/dock/tracks/1/mask"
                boxes_topic = "/streamseg/dock/tracks/1/annotations"
                mask_channel = await fox.wait_for_topic(mask_topic)
                await fox.wait_for_topic(boxes_topic)  # each channel is advertised alone
                assert fox.server_info is not None and fox.server_info["name"] == "streamseg"
                assert mask_channel["schemaName"] == "foxglove.RawImage"
                assert fox.channels[boxes_topic]["schemaName"] == "foxglove.ImageAnnotations"
                for kind in ("camera", "overlay"):
                    channel = fox.channels[f"/streamseg/dock/{kind}"]
                    assert channel["schemaName"] == "foxglove.CompressedImage"
                for topic in (mask_topic, boxes_topic, "/streamseg/dock/camera"):
                    await fox.subscribe(topic)
                checked = 0
                areas: list[int] = []
                boxes_checked = 0
                images = 0
                deadline = time.monotonic() + 60
                while checked < 5 or boxes_checked < 3 or images < 2:
                    assert time.monotonic() < deadline, (checked, boxes_checked, images)
                    got = await fox.next()
                    if got is None:
                        continue
                    channel, log_time, msg = got
                    stamp = msg.timestamp.seconds * 1_000_000_000 + msg.timestamp.nanos
                    assert log_time == stamp  # log time = capture time
                    if channel["topic"] != boxes_topic:  # annotations have no frame id
                        assert msg.frame_id == FRAME_ID
                    if channel["topic"] == "/streamseg/dock/camera":
                        assert msg.format == "jpeg"
                        image = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)
                        assert image.shape == (240, 320, 3)
                        images += 1
                        continue
                    await asyncio.sleep(0.05)  # let the recorder take this frame's result
                    result = own.get(stamp)
                    if result is None:
                        continue  # the robot client skipped that frame (latest-only)
                    (track,) = result.message.tracks
                    assert track.track_id == 1
                    if channel["topic"] == mask_topic:
                        assert (msg.width, msg.height, msg.encoding) == (320, 240, "mono8")
                        assert msg.step == 320
                        pixels = np.frombuffer(msg.data, np.uint8).reshape(240, 320)
                        assert set(np.unique(pixels)) <= {0, 255}
                        np.testing.assert_array_equal(pixels == 255, result.masks[1])
                        assert int((pixels == 255).sum()) == track.area
                        areas.append(track.area)
                        checked += 1
                    else:
                        scores = {kv.key: kv.value for kv in msg.metadata}
                        assert scores["track_id"] == "1"
                        assert float(scores["score"]) == pytest.approx(track.score, abs=1e-4)
                        if track.bbox is not None and track.present:
                            (loop,) = msg.points
                            x0, y0, x1, y1 = track.bbox
                            corners = [(p.x, p.y) for p in loop.points]
                            assert corners == [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
                            assert msg.texts[0].text.startswith("1 ")
                        else:
                            assert not msg.points
                        boxes_checked += 1
        finally:
            recorder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recorder
        metrics = httpx.get(f"{url}/metrics", headers=AUTH).text
        sent = [
            line
            for line in metrics.splitlines()
            if line.startswith('streamseg_foxglove_messages_total{kind="mask"}')
        ]
        assert sent and float(sent[0].rsplit(" ", 1)[1]) >= checked
        # nobody subscribed to the overlay: it was never encoded
        assert 'streamseg_foxglove_messages_total{kind="overlay"}' not in metrics
    print(f"\nfoxglove: {checked} masks equal to the websocket feed's (areas {areas})")
    assert any(0 < a < 320 * 240 for a in areas), "uniform masks would prove nothing"


async def test_old_subprotocol_name_is_refused_and_deleted_streams_unadvertise(
    camera: RtspTestServer,
) -> None:
    """`foxglove.websocket.v1` gets 400 from this SDK (old Foxglove/Lichtblick apps
    cannot connect); a stream added over REST is advertised, and deleting it takes its
    channels away."""
    fox_port = free_port()
    async with _serving(source_allow_loopback=True, foxglove_port=fox_port) as (url, _):
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(
                f"ws://127.0.0.1:{fox_port}",
                subprotocols=["foxglove.websocket.v1"],  # type: ignore[list-item]
            ):
                pass
        assert refused.value.response.status_code == 400
        async with websockets.connect(
            f"ws://127.0.0.1:{fox_port}",
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            compression=None,
            max_size=None,
        ) as ws:
            fox = FoxgloveClient(ws)
            async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
                r = await http.post("/v1/streams", json={"url": camera.url, "id": "yard"})
                assert r.status_code == 201, r.text
                channel = await fox.wait_for_topic("/streamseg/yard/camera")
                assert channel["metadata"]["frame_id"] == "yard"  # default: the stream id
                r = await http.delete("/v1/streams/yard")
                assert r.status_code == 204
            deadline = time.monotonic() + 10
            while "/streamseg/yard/camera" in fox.channels:
                assert time.monotonic() < deadline, "channels still advertised"
                await fox.next(deadline - time.monotonic())
