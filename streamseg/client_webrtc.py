"""A WebRTC client for streamseg: sends video, receives overlay video and metadata.

    STREAMSEG_TOKEN=<token> python -m streamseg.client_webrtc --url http://127.0.0.1:8000

(the token `streamseg serve` printed, or one with the `control` scope) sends generated
video (moving shapes), prompts one object with a click on the frame it last received,
and prints per-second stats of what comes back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from collections import deque
from fractions import Fraction
from typing import Any

import av
import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streamseg.media.synthetic import scene_frame, shape_boxes

VIDEO_CLOCK = 90_000


class SyntheticVideoTrack(MediaStreamTrack):
    """Generated frames at a fixed rate; frame i shows the scene at index i."""

    kind = "video"

    def __init__(self, width: int = 320, height: int = 240, fps: float = 30.0) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self.sent = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self.sent / self.fps
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        image = scene_frame(self.sent, self.height, self.width)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = int(self.sent * VIDEO_CLOCK / self.fps)
        frame.time_base = Fraction(1, VIDEO_CLOCK)
        self.sent += 1
        return frame


class WebRTCClient:
    """One peer connection to a streamseg server. Keeps bounded histories only."""

    def __init__(
        self,
        url: str,
        source: MediaStreamTrack,
        options: dict[str, Any] | None = None,
        token: str | None = None,
    ):
        self.url = url.rstrip("/")
        # The offer needs the `control` scope; default from the environment.
        self.token = token if token is not None else os.environ.get("STREAMSEG_TOKEN")
        self.source = source
        self.options = options or {}
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.metadata: deque[dict[str, Any]] = deque(maxlen=2000)
        self.frames: deque[tuple[float, av.VideoFrame]] = deque(maxlen=300)
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=256)
        self.stream_id: str | None = None
        self._reader: asyncio.Task[None] | None = None
        self._request = 0

    async def connect(self, timeout: float = 20.0) -> None:
        self.pc.addTrack(self.source)
        self.channel = self.pc.createDataChannel("streamseg")
        self.channel.on("message", self._on_message)
        opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        @self.channel.on("open")
        def on_open() -> None:
            if not opened.done():
                opened.set_result(None)

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._reader = asyncio.ensure_future(self._read(track))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = {"sdp": self.pc.localDescription.sdp, "type": "offer", "options": self.options}
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with httpx.AsyncClient(timeout=timeout, headers=headers) as http:
            response = await http.post(f"{self.url}/v1/webrtc/offer", json=offer)
        response.raise_for_status()
        answer = response.json()
        self.stream_id = answer["stream_id"]
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        await asyncio.wait_for(opened, timeout)

    def _on_message(self, raw: str) -> None:
        body = json.loads(raw)
        if body.get("type") == "frame":
            body["received_at"] = time.time()
            self.metadata.append(body)
        elif not self.replies.full():
            self.replies.put_nowait(body)

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.VideoFrame)
                self.frames.append((time.time(), frame))

    async def request(self, message: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Send a data-channel message and wait for its ack or error."""
        self._request += 1
        request_id = f"r{self._request}"
        self.channel.send(json.dumps({**message, "request_id": request_id}))
        while True:
            reply = await asyncio.wait_for(self.replies.get(), timeout)
            if reply.get("request_id") == request_id:
                return reply

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.pc.close()


def latest_frame_meta(client: WebRTCClient) -> dict[str, Any] | None:
    return client.metadata[-1] if client.metadata else None


async def _main(url: str, seconds: float, token: str | None) -> None:
    if httpx.URL(url).host in ("127.0.0.1", "localhost"):
        from streamseg.media.webrtc import restrict_ice_hosts

        restrict_ice_hosts(("127.0.0.1",))
    source = SyntheticVideoTrack()
    client = WebRTCClient(url, source, token=token)
    await client.connect()
    print(f"connected: stream {client.stream_id}")
    while not client.metadata:
        await asyncio.sleep(0.05)
    seen = client.metadata[-1]["seq"]
    x0, y0, x1, y1 = shape_boxes(seen, source.height, source.width)[0]
    reply = await client.request(
        {
            "type": "prompt",
            "points": [[(x0 + x1) / 2, (y0 + y1) / 2]],
            "labels": [1],
            "frame_seq": seen,
        }
    )
    print("prompt:", reply)
    end = time.time() + seconds
    while time.time() < end:
        await asyncio.sleep(1.0)
        recent = [m for m in client.metadata if m["received_at"] > time.time() - 1.0]
        if not recent:
            print("no metadata in the last second")
            continue
        latency = [m["times"]["sent_ts"] - m["times"]["capture_ts"] for m in recent]
        tracks = recent[-1]["tracks"]
        print(
            f"seq {recent[-1]['seq']}: {len(recent)} results/s, capture->sent "
            f"{1000 * float(np.median(latency)):.0f} ms, dropped {recent[-1]['dropped_frames']}, "
            f"tracks {[(t['track_id'], t['bbox']) for t in tracks]}"
        )
    print(f"video frames received: {len(client.frames)} (last 300 kept)")
    await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--token-file",
        default=None,
        help="read the token from this file (default: $STREAMSEG_TOKEN; not a flag, "
        "command lines are visible to every local user)",
    )
    args = parser.parse_args()
    token = None
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
            token = f.read().strip()
    asyncio.run(_main(args.url, args.seconds, token))


if __name__ == "__main__":
    main()
