"""Python client for robots: manage camera streams and receive masks.

    import asyncio
    import time

    from streamseg.client import StreamsegClient

    async def robot() -> None:
        client = StreamsegClient("http://127.0.0.1:8000")  # token: $STREAMSEG_TOKEN
        stream = await client.create_stream("rtsp://camera.local/live", name="dock")
        async for result in client.results(stream["id"]):
            if not result.message.tracks:
                # Prompts go over the open socket; the reply says which frame they hit.
                await client.add_prompt(stream["id"], box=[100, 80, 300, 260])
                continue
            for track in result.message.tracks:
                mask = result.masks[track.track_id]  # H x W bool numpy array
                act_on(track.track_id, track.bbox, mask, result.age_s)

    asyncio.run(robot())

`results()` reads the socket continuously in a task of its own and keeps only the
newest message, so a control loop slower than the camera gets fresh masks, never a
backlog (skipped messages are counted in `client.dropped`). `rate="model"` (default)
sends one message per frame the model processed; `rate="source"` one per camera frame,
the newest masks moved onto it (`track.source == "propagated"`, `track.model_seq` the
frame the model saw, `track.age_ms` how much older it is). It reconnects by itself
with exponential backoff and jitter, also while the stream does not exist (deleted,
not re-added yet, a server restarting): it keeps retrying, logs a warning and records
`client.missing_since[stream_id]`, and raises `StreamNotFoundError` only once
`missing_stream_timeout_s` (default None: never) has passed. For synchronous code (a
ROS callback, a plain loop) `LatestResults` runs the same thing on a background thread.

Restarts: every `hello` names the server's boot and the stream's epoch. When either
changes (a restarted server, a stream deleted and created again) `seq` starts again
from 0; the first result after it has `new_epoch` True (track ids from before mean
nothing now), and `LatestResults.latest(newer_than=...)` treats it as newer than any
seq from before. State events (`connecting`, `streaming`, `stalled`, `reconnecting`,
`stopped` with a reason) and track `lost`/`found` events go to `on_event` and the
newest state is in `client.stream_states[stream_id]`.

Authentication: pass `token=` (or set `STREAMSEG_TOKEN`); it is sent as
`Authorization: Bearer` on REST and on the websocket handshake. A refused token raises
`RequestError` with code `unauthorized` (401) or `forbidden` (403) and is not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import httpx
import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from streamseg.protocol.messages import (
    CLOSE_FORBIDDEN,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNKNOWN_STREAM,
    FrameResultMessage,
    UnknownMessageType,
    decode_frame_message,
    parse_server_text,
)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
RATES = ("model", "source")
_SECRET_HEADERS = frozenset({"authorization", "sec-websocket-protocol"})


class _RedactHandshake(logging.Filter):
    """The websockets library logs every handshake header at DEBUG; the token is one."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() in _SECRET_HEADERS:
            record.args = (args[0], "[redacted]")
        return True


log = logging.getLogger(__name__)
_ws_log = logging.getLogger("streamseg.client.websockets")
_ws_log.addFilter(_RedactHandshake())


class RequestError(RuntimeError):
    """The server refused a request; `code` is its machine-readable reason, `status`
    the HTTP status (None when the refusal came over the websocket)."""

    def __init__(self, status: int | None, code: str, message: str) -> None:
        super().__init__(
            f"{code}: {message}" if status is None else f"HTTP {status} {code}: {message}"
        )
        self.status, self.code, self.message = status, code, message


class StreamNotFoundError(RequestError, LookupError):
    pass


def _refusal(status: int | None, code: str, message: str) -> RequestError:
    cls = StreamNotFoundError if code == "unknown_stream" else RequestError
    return cls(status, code, message)


@dataclass(frozen=True, slots=True)
class Result:
    message: FrameResultMessage
    masks: dict[int, np.ndarray]  # track id -> bool mask on `message.grid` (H x W unless scaled)
    received_ts: float  # when the message arrived (not when it was taken)
    boot_id: str | None = None  # the server's boot (None: a server before revision 3)
    epoch: str | None = None  # the stream's life: new when it is created again
    new_epoch: bool = False  # first result since boot_id or epoch changed: seq restarted

    @property
    def seq(self) -> int:
        return self.message.seq

    @property
    def age_s(self) -> float:
        """Seconds since the frame was captured (by the camera's clock where the stream
        carries one, see `message.times.capture_ts_source`)."""
        return time.time() - self.message.times.capture_ts


@dataclass(eq=False)
class _Socket:
    """One open websocket: a pump task reads everything; the newest frame message waits
    in a one-slot mailbox (policy latest), replies resolve their request's future."""

    ws: ClientConnection
    on_drop: Callable[[], None]
    on_event: Callable[[dict[str, Any]], None] = lambda _: None
    latest: tuple[bytes, float] | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    pending: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    ended: BaseException | None = None
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    async def pump(self) -> None:
        try:
            async for data in self.ws:
                if isinstance(data, bytes):
                    if self.latest is not None:
                        self.on_drop()
                    self.latest = (data, time.time())
                    self.ready.set()
                else:
                    try:
                        body = parse_server_text(data)
                    except UnknownMessageType:
                        continue  # a newer server's addition
                    if body["type"] == "event":
                        self.on_event(body)
                    else:
                        self._reply(body)
            self.ended = ConnectionClosed(self.ws.protocol.close_rcvd, self.ws.protocol.close_sent)
        except Exception as exc:
            self.ended = exc
        finally:
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("the websocket closed before a reply"))
            self.ready.set()

    def _reply(self, body: dict[str, Any]) -> None:
        future = self.pending.pop(str(body.get("request_id")), None)
        if future is None or future.done():
            return
        if body["type"] == "ack":
            future.set_result(body.get("result") or {})
        else:
            code, message = str(body.get("code")), str(body.get("message"))
            future.set_exception(_refusal(None, code, message))

    async def next(self) -> tuple[bytes, float]:
        """The newest frame message and when it arrived."""
        while self.latest is None:
            if self.ended is not None:
                raise self.ended
            self.ready.clear()
            await self.ready.wait()
        newest, self.latest = self.latest, None
        return newest

    async def request(self, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        request_id = f"c{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        try:
            await self.ws.send(json.dumps({**body, "request_id": request_id}))
            return await asyncio.wait_for(future, timeout)
        finally:
            self.pending.pop(request_id, None)


def _prompt_body(
    track_id: int | None,
    points: Sequence[Sequence[float]] | None,
    labels: Sequence[int] | None,
    box: Sequence[float] | None,
    frame_seq: int | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "prompt"}
    if track_id is not None:
        body["track_id"] = track_id
    if points is not None:
        body["points"] = [[float(v) for v in p] for p in points]
        body["labels"] = [int(v) for v in labels] if labels is not None else [1] * len(points)
    if box is not None:
        body["box"] = [float(v) for v in box]
    if frame_seq is not None:
        body["frame_seq"] = frame_seq
    return body


class StreamsegClient:
    """REST helpers for streams plus websocket mask feeds; safe to share in one loop."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        backoff_initial_s: float = 0.25,
        backoff_max_s: float = 10.0,
        token: str | None = None,
        missing_stream_timeout_s: float | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # Default from the environment, so a robot's code carries no secret.
        self.token = token if token is not None else os.environ.get("STREAMSEG_TOKEN")
        self.timeout = timeout
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.reconnects = 0
        self.dropped = 0  # results replaced by newer ones before the consumer took them
        # A missing stream is retried (it may be re-added) until this long, None: forever.
        self.missing_stream_timeout_s = missing_stream_timeout_s
        self.missing_since: dict[str, float] = {}  # stream id -> since when (epoch s)
        self.stream_states: dict[str, dict[str, Any]] = {}  # newest state event per stream
        self.on_event = on_event
        self._sockets: dict[str, list[_Socket]] = {}
        self._epochs: dict[str, tuple[str | None, str | None]] = {}

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    # ---- REST --------------------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=self.timeout, headers=self.auth_headers()
        ) as http:
            response = await http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            fallback = "unknown_stream" if response.status_code == 404 else "http_error"
            if isinstance(detail, dict):
                code = str(detail.get("code") or fallback)
                message = str(detail.get("message"))
            else:
                code, message = fallback, json.dumps(detail)
            raise _refusal(response.status_code, code, message)
        if response.headers.get("content-type", "").startswith("image/"):
            return response.content
        return response.json() if response.content else None

    async def create_stream(
        self,
        url: str,
        name: str | None = None,
        *,
        stream_id: str | None = None,
        persist: bool = False,
        **options: Any,
    ) -> Any:
        """Options: transport ("tcp"/"udp"), loop, realtime, stall_timeout_s, ...
        `stream_id`: an id of your choosing (default: the server's s<N>); `persist`:
        also write it to the server's streams file (needs `stream_id`)."""
        body: dict[str, Any] = {"url": url, "name": name, "options": options}
        if stream_id is not None:
            body["id"] = stream_id
        path = "/v1/streams?persist=true" if persist else "/v1/streams"
        return await self._request("POST", path, json=body)

    async def list_streams(self) -> Any:
        return await self._request("GET", "/v1/streams")

    async def get_stream(self, stream_id: str) -> Any:
        return await self._request("GET", f"/v1/streams/{stream_id}")

    async def delete_stream(self, stream_id: str) -> None:
        await self._request("DELETE", f"/v1/streams/{stream_id}")

    async def frame_jpeg(self, stream_id: str) -> bytes:
        """The newest processed frame with overlays (to pick where to prompt)."""
        data: bytes = await self._request("GET", f"/v1/streams/{stream_id}/frame.jpg")
        return data

    # ---- prompts: over an open results() socket when there is one, else REST -----------

    async def _command(self, stream_id: str, body: dict[str, Any]) -> dict[str, Any]:
        sockets = [s for s in self._sockets.get(stream_id, ()) if s.ended is None]
        if sockets:
            return await sockets[-1].request(body, self.timeout)
        result: dict[str, Any] = await self._request(
            "POST", f"/v1/streams/{stream_id}/prompts", json=body
        )
        return result

    async def add_prompt(
        self,
        stream_id: str,
        *,
        track_id: int | None = None,
        points: Sequence[Sequence[float]] | None = None,
        labels: Sequence[int] | None = None,
        box: Sequence[float] | None = None,
        frame_seq: int | None = None,
    ) -> dict[str, Any]:
        """Add (no `track_id`) or refine a track with points (labels default to
        positive) and/or a box, on frame `frame_seq` (default: the newest). Returns
        track_id, applied_seq and whether it landed on the exact frame."""
        return await self._command(
            stream_id, _prompt_body(track_id, points, labels, box, frame_seq)
        )

    prompt = add_prompt

    async def remove_track(self, stream_id: str, track_id: int) -> dict[str, Any]:
        return await self._command(stream_id, {"type": "remove", "track_id": track_id})

    async def reset_tracks(self, stream_id: str) -> dict[str, Any]:
        return await self._command(stream_id, {"type": "reset"})

    # ---- websocket ---------------------------------------------------------------------

    def ws_url(
        self,
        stream_id: str,
        encoding: str = "rle",
        rate: str = "model",
        *,
        scale: float | None = None,
        max_side: int | None = None,
        crop: bool = False,
    ) -> str:
        """The mask feed's URL; `scale`/`max_side`/`crop` ask for smaller masks."""
        base = self.base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        url = f"{base}/v1/streams/{stream_id}/masks?encoding={encoding}&rate={rate}"
        if scale is not None:
            url += f"&scale={scale:g}"
        if max_side is not None:
            url += f"&max_side={max_side}"
        return url + ("&crop=bbox" if crop else "")

    def _count_drop(self) -> None:
        self.dropped += 1

    async def results(
        self,
        stream_id: str,
        encoding: str = "rle",
        include_masks: bool = True,
        rate: str = "model",
        *,
        scale: float | None = None,
        max_side: int | None = None,
        crop: bool = False,
    ) -> AsyncIterator[Result]:
        """Decoded results, newest first-come, forever: reconnects after any drop,
        raises StreamNotFoundError when the stream does not exist (or was deleted).
        `rate`: "model" (one per processed frame) or "source" (one per camera frame).
        Smaller masks: `scale` (0.5: half the frame's size), `max_side` (pixels of the
        longer side), `crop` (each mask sent as its box only; decoded back onto the
        whole grid). Masks are on `result.message.grid` then, not the frame's size."""
        if rate not in RATES:
            raise ValueError(f"rate must be one of {', '.join(RATES)}, not {rate!r}")
        backoff = self.backoff_initial_s
        last_seq: int | None = None  # the watermark: seq only grows within one epoch
        while True:
            try:
                async with websockets.connect(
                    self.ws_url(
                        stream_id, encoding, rate, scale=scale, max_side=max_side, crop=crop
                    )
                    + "&events=all",
                    additional_headers=self.auth_headers(),
                    logger=_ws_log,
                    compression=None,
                    max_size=MAX_MESSAGE_BYTES,
                    open_timeout=self.timeout,
                    close_timeout=1,
                ) as ws:
                    hello = parse_server_text(await asyncio.wait_for(ws.recv(), self.timeout))
                    if hello["type"] == "error":
                        raise _refusal(None, str(hello.get("code")), str(hello.get("message")))
                    self._found(stream_id)
                    key = (hello.get("boot_id"), hello.get("epoch"))
                    new_epoch = self._epochs.setdefault(stream_id, key) != key
                    if new_epoch:  # a restarted server or a re-created stream
                        log.info("stream %s: new server boot or stream epoch", stream_id)
                        self._epochs[stream_id], last_seq = key, None
                    sock = _Socket(ws, self._count_drop, lambda e: self._event(stream_id, e))
                    pump = asyncio.ensure_future(sock.pump())
                    self._sockets.setdefault(stream_id, []).append(sock)
                    try:
                        if not include_masks:
                            await sock.request({"type": "options", "include_masks": False}, 10)
                        backoff = self.backoff_initial_s
                        while True:
                            data, received = await sock.next()
                            result = self._decode(data, received, key, new_epoch)
                            if last_seq is not None and result.seq <= last_seq:
                                continue  # not newer than what was already given
                            last_seq, new_epoch = result.seq, False
                            yield result
                    finally:
                        self._sockets[stream_id].remove(sock)
                        pump.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await pump
            except StreamNotFoundError as exc:
                self._missing(stream_id, exc)
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code == CLOSE_UNKNOWN_STREAM:
                    gone = StreamNotFoundError(None, "unknown_stream", exc.rcvd.reason)
                    self._missing(stream_id, gone)
                if exc.rcvd is not None and exc.rcvd.code in (CLOSE_UNAUTHORIZED, CLOSE_FORBIDDEN):
                    raise RequestError(None, exc.rcvd.reason or "unauthorized", "refused") from None
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in (401, 403, 421):  # no retry: it would be refused again
                    body = (exc.response.body or b"").decode(errors="replace")
                    raise RequestError(status, "refused", body) from None
            except (OSError, InvalidHandshake, TimeoutError):
                pass
            self.reconnects += 1
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self.backoff_max_s)

    @staticmethod
    def _decode(
        data: bytes,
        received_ts: float,
        key: tuple[str | None, str | None] = (None, None),
        new_epoch: bool = False,
    ) -> Result:
        message, masks = decode_frame_message(data)
        with_masks = zip(message.tracks, masks or [], strict=False)
        found = {t.track_id: m for t, m in with_masks}
        return Result(message, found, received_ts, key[0], key[1], new_epoch)

    def _missing(self, stream_id: str, exc: StreamNotFoundError) -> None:
        """The server says the stream does not exist: keep retrying (an operator or a
        restart may bring it back) unless it has been missing for too long."""
        now = time.time()
        since = self.missing_since.setdefault(stream_id, now)
        limit = self.missing_stream_timeout_s
        if limit is not None and now - since >= limit:
            self.missing_since.pop(stream_id, None)
            raise exc
        if since == now:
            log.warning(
                "stream %s is not on %s (%s); retrying until it is back",
                stream_id,
                self.base_url,
                exc.message,
            )

    def _found(self, stream_id: str) -> None:
        since = self.missing_since.pop(stream_id, None)
        if since is not None:
            log.warning("stream %s is back after %.1f s", stream_id, time.time() - since)

    def _event(self, stream_id: str, body: dict[str, Any]) -> None:
        if body.get("event") == "state":
            self.stream_states[stream_id] = body
        if self.on_event is not None:
            try:
                self.on_event(body)
            except Exception:
                log.exception("on_event failed")


class LatestResults:
    """`results()` on a background thread, for synchronous robot loops:

    with LatestResults("http://server:8000", "s1") as feed:
        while running:
            result = feed.latest(newer_than=last_seq, timeout=1.0)
    """

    def __init__(
        self,
        base_url: str,
        stream_id: str,
        encoding: str = "rle",
        token: str | None = None,
        rate: str = "model",
        *,
        scale: float | None = None,
        max_side: int | None = None,
        crop: bool = False,
        **client_options: Any,
    ) -> None:
        """`client_options` go to `StreamsegClient` (e.g. `missing_stream_timeout_s`,
        `backoff_max_s`, `on_event`, which then runs on the feed's thread);
        `scale`/`max_side`/`crop` ask for smaller masks (`StreamsegClient.results`)."""
        if rate not in RATES:
            raise ValueError(f"rate must be one of {', '.join(RATES)}, not {rate!r}")
        self.client = StreamsegClient(base_url, token=token, **client_options)
        self.stream_id, self.encoding, self.rate = stream_id, encoding, rate
        self._view: dict[str, Any] = {"scale": scale, "max_side": max_side, "crop": crop}
        self._cond = threading.Condition()
        self._result: Result | None = None
        # Epoch generations: a result of a later one is newer than any seq of an
        # earlier one, whatever the numbers (seq restarts with the server or stream).
        self._generation = 0
        self._result_generation = 0
        self._given_generation = 0
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="streamseg results", daemon=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        self._thread.start()
        return self

    def latest(self, newer_than: int | None = None, timeout: float | None = None) -> Result | None:
        """The newest result (with seq > `newer_than`), waiting up to `timeout`; None if
        there is none yet. `newer_than` is a seq of the results this feed gave; after
        a server restart or a re-created stream (seq starts again) every result is
        newer than it. Re-raises what ended the feed (e.g. StreamNotFoundError)."""

        def newer(r: Result | None) -> bool:
            return r is not None and (
                newer_than is None
                or self._result_generation > self._given_generation
                or r.seq > newer_than
            )

        with self._cond:
            self._cond.wait_for(lambda: self._error is not None or newer(self._result), timeout)
            if self._error is not None:
                raise self._error
            r = self._result
            if not newer(r):
                return None
            self._given_generation = self._result_generation
            return r

    @property
    def state(self) -> dict[str, Any] | None:
        """The stream's newest state event (`state`, `reason`, `message`, `ts`)."""
        return self.client.stream_states.get(self.stream_id)

    @property
    def missing_since(self) -> float | None:
        """Since when (epoch seconds) the server says the stream does not exist."""
        return self.client.missing_since.get(self.stream_id)

    def add_prompt(self, **prompt: Any) -> dict[str, Any]:
        """`StreamsegClient.add_prompt` for this stream, from the calling thread."""
        return self._call(self.client.add_prompt(self.stream_id, **prompt))

    def remove_track(self, track_id: int) -> dict[str, Any]:
        return self._call(self.client.remove_track(self.stream_id, track_id))

    def _call(self, coro: Any) -> dict[str, Any]:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the feed is not running")
        result: dict[str, Any] = asyncio.run_coroutine_threadsafe(coro, self._loop).result()
        return result

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)
        self._thread.join(timeout)

    def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        if self._stopping.is_set():  # stop() came before the task existed
            return
        try:
            view, rate = self._view, self.rate
            results = self.client.results(self.stream_id, self.encoding, rate=rate, **view)
            async for result in results:
                with self._cond:
                    if result.new_epoch:
                        self._generation += 1
                    self._result = result
                    self._result_generation = self._generation
                    self._cond.notify_all()
        except Exception as exc:
            with self._cond:
                self._error = exc
                self._cond.notify_all()
