"""Python client for robots: manage camera streams and receive masks.

    import asyncio
    from streamseg.client import StreamsegClient

    async def robot() -> None:
        client = StreamsegClient("http://127.0.0.1:8000")
        stream = await client.create_stream("rtsp://camera.local/live")
        await client.prompt(stream["id"], box=[100, 80, 300, 260])
        async for result in client.results(stream["id"]):
            for track in result.message.tracks:
                mask = result.masks[track.track_id]        # H x W bool numpy array
                age = time.time() - result.message.times.capture_ts
                act_on(track.track_id, track.bbox, mask, age)

    asyncio.run(robot())

`results()` reconnects by itself (exponential backoff) and only ever holds the newest
message: a robot that falls behind gets fresh masks, never a backlog.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from streamseg.protocol.messages import FrameResultMessage, decode_frame_message


class StreamNotFoundError(LookupError):
    pass


class RequestError(RuntimeError):
    def __init__(self, status: int, detail: Any) -> None:
        message = detail.get("message") if isinstance(detail, dict) else detail
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.detail = status, detail


@dataclass(frozen=True, slots=True)
class Result:
    message: FrameResultMessage
    masks: dict[int, np.ndarray]


class StreamsegClient:
    def __init__(
        self, base_url: str, *, timeout: float = 30.0, backoff_max_s: float = 10.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.backoff_max_s = backoff_max_s
        self.reconnects = 0

    # ---- REST --------------------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout) as http:
            response = await http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            if response.status_code == 404:
                raise StreamNotFoundError(str(detail))
            raise RequestError(response.status_code, detail)
        return response.json() if response.content else None

    async def create_stream(self, url: str, name: str | None = None, **options: Any) -> Any:
        return await self._request(
            "POST", "/v1/streams", json={"url": url, "name": name, "options": options}
        )

    async def list_streams(self) -> Any:
        return await self._request("GET", "/v1/streams")

    async def get_stream(self, stream_id: str) -> Any:
        return await self._request("GET", f"/v1/streams/{stream_id}")

    async def delete_stream(self, stream_id: str) -> None:
        await self._request("DELETE", f"/v1/streams/{stream_id}")

    async def prompt(
        self,
        stream_id: str,
        *,
        track_id: int | None = None,
        points: Sequence[Sequence[float]] | None = None,
        labels: Sequence[int] | None = None,
        box: Sequence[float] | None = None,
        frame_seq: int | None = None,
    ) -> Any:
        """Add or refine a track; returns track_id, applied_seq and whether it was exact."""
        body: dict[str, Any] = {"type": "prompt"}
        if track_id is not None:
            body["track_id"] = track_id
        if points is not None:
            body["points"] = [list(p) for p in points]
            body["labels"] = list(labels or [])
        if box is not None:
            body["box"] = list(box)
        if frame_seq is not None:
            body["frame_seq"] = frame_seq
        return await self._request("POST", f"/v1/streams/{stream_id}/prompts", json=body)

    async def remove_track(self, stream_id: str, track_id: int) -> Any:
        return await self._request(
            "POST",
            f"/v1/streams/{stream_id}/prompts",
            json={"type": "remove", "track_id": track_id},
        )

    # ---- websocket ---------------------------------------------------------------------

    def _ws_url(self, stream_id: str, encoding: str) -> str:
        base = self.base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        return f"{base}/v1/streams/{stream_id}/masks?encoding={encoding}"

    async def results(self, stream_id: str, encoding: str = "rle") -> AsyncIterator[Result]:
        """Decoded results, forever; reconnects after drops, raises StreamNotFoundError
        when the server says the stream does not exist."""
        backoff = 0.25
        while True:
            try:
                async with websockets.connect(
                    self._ws_url(stream_id, encoding), compression=None, max_queue=2
                ) as ws:
                    hello = json.loads(await ws.recv())
                    if hello.get("type") == "error":
                        raise StreamNotFoundError(hello.get("message"))
                    backoff = 0.25
                    async for data in ws:
                        if isinstance(data, str):
                            continue  # acks and errors for socket prompts
                        message, masks = decode_frame_message(data)
                        by_id = {
                            t.track_id: m for t, m in zip(message.tracks, masks or [], strict=False)
                        }
                        yield Result(message, by_id)
            except (TimeoutError, ConnectionClosed, OSError, InvalidStatus):
                pass
            self.reconnects += 1
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self.backoff_max_s)
