"""The websocket mask feed of a camera stream, for robots: one binary message per
processed frame (`rate=model`) or per incoming frame with the newest masks moved onto
it (`rate=source`), prompts in, latest-only per client: pushed once the previous
message has left user space (`server/feed_delivery.py`), or one per `next` request
(`?delivery=pull`); masks smaller on request (`server/mask_views.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol, cast

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from streamseg.media.frame import Frame
from streamseg.media.slot import LatestSlot, SlotClosed
from streamseg.model.errors import TrackerError
from streamseg.pipeline.stream import StreamResult
from streamseg.pipeline.wire import result_message
from streamseg.pipeline.worker import WorkerBusyError, WorkerStoppedError
from streamseg.protocol.masks import MaskEncoding
from streamseg.protocol.messages import (
    CLOSE_BAD_REQUEST,
    CLOSE_SHUTDOWN,
    CLOSE_UNKNOWN_STREAM,
    ack_message,
    encode_frame_message,
    error_message,
    hello_message,
    internal_error_message,
)
from streamseg.protocol.prompts import (
    NextResult,
    PromptError,
    SetOptions,
    parse_feed_message,
    peek_request_id,
)
from streamseg.server.auth import Principal
from streamseg.server.cameras import (
    CameraStream,
    apply_message,
    cameras_of,
    prompt_limits,
    stream_metrics,
)
from streamseg.server.errors import report_internal
from streamseg.server.feed_delivery import (
    DELIVERIES,
    ClosingSlot,
    Credits,
    Transport,
    drained,
    limit_unsent,
)
from streamseg.server.mask_views import (
    MaskView,
    ViewError,
    parse_view,
    reduced_placed,
    reduced_result,
    view_cache,
)
from streamseg.server.runtime import Runtime
from streamseg.server.security import accept_subprotocol, audit, requires
from streamseg.server.source_rate_feed import RATES, Encoded, PlacedFrames, placed_frames
from streamseg.server.stream_events import SHUTDOWN_REASON, EventQueue, events_of, parse_events

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/streams", tags=["streams"])
SEND_TIMEOUT_S = 2.0
CLOSE_TIMEOUT_S = 1.0


class _Abortable(Protocol):
    def abort(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


def _find_transport(send: Any, depth: int = 0) -> _Abortable | None:
    """The server's transport behind an ASGI `send` (uvicorn's protocol object, maybe
    wrapped in middleware closures), or None when it cannot be found. Duck-typed:
    uvloop's transports are not `asyncio.Transport` subclasses."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if callable(getattr(transport, "abort", None)):
        return cast(_Abortable, transport)
    if depth < 4:
        for cell in getattr(send, "__closure__", None) or ():
            with contextlib.suppress(ValueError):  # an empty cell
                inner = cell.cell_contents
                if callable(inner):
                    deeper = _find_transport(inner, depth + 1)
                    if deeper is not None:
                        return deeper
    return None


def _abort(transport: _Abortable | None) -> bool:
    """Drop the connection now. A peer that stopped reading keeps its socket and the
    unsent buffer alive indefinitely after a polite close, and ASGI has no abort."""
    if transport is None:
        log.warning("cannot abort a stalled websocket: transport not found")
        return False
    sock = transport.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError, ValueError):  # ValueError: closed
        # Linger 0: reset now; a plain close leaves the queued megabytes in the kernel,
        # retransmitted to a peer that does not read, for minutes.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    return True


async def _refuse(websocket: WebSocket, code: str, message: str, close_code: int) -> bool:
    """Say why in an error message, then close; False when the peer did not take it."""
    try:
        await asyncio.wait_for(websocket.send_text(error_message(code, message)), SEND_TIMEOUT_S)
        await asyncio.wait_for(websocket.close(close_code, message[:120]), CLOSE_TIMEOUT_S)
    except Exception:
        return False
    return True


@dataclass
class _Feed:
    """One websocket client of one camera."""

    websocket: WebSocket
    runtime: Runtime
    camera: CameraStream
    mailbox: LatestSlot[StreamResult] | LatestSlot[Frame]
    encoding: MaskEncoding
    principal: Principal
    placed: PlacedFrames | None = None  # set at rate=source
    masks: bool = True
    ended: str = "client_closed"
    events: EventQueue | None = None  # set with ?events=
    view: MaskView = field(default_factory=MaskView)
    credits: Credits | None = None  # set with ?delivery=pull
    transport: Transport | None = None  # to see what has not left user space


@router.websocket("/{stream_id}/masks")
async def mask_feed(
    websocket: WebSocket, stream_id: str, principal: Annotated[Principal, requires("view")]
) -> None:
    """Per processed frame one binary message (docs/PROTOCOL.md); text messages in are
    prompts, answered with ack/error. Latest-only per client: a slow reader gets fewer,
    fresh messages and never delays anyone else; one that stops reading is dropped."""
    runtime: Runtime = websocket.app.state.runtime
    metrics = stream_metrics(runtime)
    camera = cameras_of(runtime).get(stream_id)
    await websocket.accept(subprotocol=accept_subprotocol(websocket))
    if camera is None:
        metrics.feed_closed.labels("unknown_stream").inc()
        await _refuse(websocket, "unknown_stream", f"no stream {stream_id!r}", CLOSE_UNKNOWN_STREAM)
        return
    try:
        encoding = MaskEncoding(websocket.query_params.get("encoding", "rle"))
    except ValueError:
        metrics.feed_closed.labels("bad_request").inc()
        choices = ", ".join(e.value for e in MaskEncoding)
        await _refuse(
            websocket, "bad_encoding", f"encoding must be one of {choices}", CLOSE_BAD_REQUEST
        )
        return
    rate = websocket.query_params.get("rate", "model")
    if rate not in RATES:
        metrics.feed_closed.labels("bad_request").inc()
        await _refuse(
            websocket, "bad_rate", f"rate must be one of {', '.join(RATES)}", CLOSE_BAD_REQUEST
        )
        return
    try:
        kinds = parse_events(websocket.query_params.get("events"))
    except ValueError as exc:
        metrics.feed_closed.labels("bad_request").inc()
        await _refuse(websocket, "bad_events", str(exc), CLOSE_BAD_REQUEST)
        return
    delivery = websocket.query_params.get("delivery", "push")
    try:
        if delivery not in DELIVERIES:
            raise ViewError("bad_delivery", f"delivery must be one of {', '.join(DELIVERIES)}")
        view = parse_view(websocket.query_params)
    except ViewError as exc:
        metrics.feed_closed.labels("bad_request").inc()
        await _refuse(websocket, exc.code, str(exc), CLOSE_BAD_REQUEST)
        return
    credits = Credits() if delivery == "pull" else None
    session = camera.session
    where = "websocket" if rate == "model" else "websocket_source"

    def dropped(_: object) -> None:
        camera.count_websocket_drop()
        runtime.metrics.count_drop(session.id, where)

    # Bound 1, policy `latest`: a newer result (or frame) replaces an unsent one (counted).
    # Closing it (stream deleted, shutdown) also ends a wait for a pull request.
    loop, on_close = asyncio.get_running_loop(), (credits.close if credits else lambda: None)
    mailbox: LatestSlot[StreamResult] | LatestSlot[Frame]
    if rate == "source":
        placed = placed_frames(camera)  # its placer sees each frame before this feed does
        mailbox = frames = ClosingSlot[Frame](dropped, on_close, loop)
        remove_sink = session.add_frame_sink(frames.put)
    else:
        placed = None
        mailbox = results = ClosingSlot[StreamResult](dropped, on_close, loop)
        remove_sink = session.add_sink(results.put)
    feed = _Feed(websocket, runtime, camera, mailbox, encoding, principal, placed)
    feed.view, feed.credits = view, credits
    feed.transport = cast("Transport | None", _find_transport(websocket._send))
    if feed.transport is None or not limit_unsent(feed.transport):
        log.warning("websocket feed of %s: kernel buffers may hold a backlog", session.id)
    camera.feeds.add(cast("LatestSlot[Any]", mailbox))  # only ever closed from there
    try:
        hello = hello_message(
            session.id,
            encoding=encoding,
            limits=prompt_limits(runtime),
            send_timeout_s=SEND_TIMEOUT_S,
            rate=rate,
            state=camera.reader.state.value,
            width=camera.reader.width,
            height=camera.reader.height,
            boot_id=runtime.boot_id,
            epoch=camera.epoch,
            events=sorted(kinds),
            delivery=delivery,
            scale=view.scale,
            max_side=view.max_side,
            crop="bbox" if view.crop else "none",
        )
        await asyncio.wait_for(websocket.send_text(hello), SEND_TIMEOUT_S)
        if kinds:
            feed.events = events_of(camera).subscribe(kinds)
        sender = asyncio.ensure_future(_send_results(feed))
        receiver = asyncio.ensure_future(_receive_prompts(feed))
        tasks = {sender, receiver}
        if feed.events is not None:
            tasks.add(asyncio.ensure_future(_send_events(feed, feed.events)))
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("websocket feed of %s failed", session.id, exc_info=task.exception())
                feed.ended = "error"
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    except TimeoutError:
        feed.ended = "too_slow"
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        if feed.events is not None:
            events_of(camera).unsubscribe(feed.events)
        remove_sink()
        feed.mailbox.close()
        camera.feeds.discard(cast("LatestSlot[Any]", mailbox))
        metrics.feed_closed.labels(feed.ended).inc()
        await _close(feed)


async def _close(feed: _Feed) -> None:
    """Close politely within CLOSE_TIMEOUT_S, else abort (a close can hang for as long
    as the peer does not read)."""
    websocket, closed = feed.websocket, False
    if feed.ended in ("stream_deleted", "shutdown") and feed.events is not None:
        # The last event says why the feed ends; sent best-effort before the close.
        reason = "deleted" if feed.ended == "stream_deleted" else "shutdown"
        message = "the stream was deleted" if reason == "deleted" else SHUTDOWN_REASON
        with contextlib.suppress(Exception):
            last = events_of(feed.camera).stopped(reason, message)
            await asyncio.wait_for(websocket.send_text(last), CLOSE_TIMEOUT_S)
    if feed.ended == "stream_deleted":
        message = "the stream was deleted"
        closed = await _refuse(websocket, "unknown_stream", message, CLOSE_UNKNOWN_STREAM)
    elif feed.ended == "shutdown":
        try:  # 1012 with a reason: reconnect later (uvicorn's own close has none)
            await asyncio.wait_for(
                websocket.close(CLOSE_SHUTDOWN, SHUTDOWN_REASON), CLOSE_TIMEOUT_S
            )
            closed = True
        except Exception:
            closed = False
    elif feed.ended != "too_slow":
        try:
            await asyncio.wait_for(websocket.close(), CLOSE_TIMEOUT_S)
            closed = True
        except Exception:
            closed = False
    if not closed:
        _abort(cast("_Abortable | None", feed.transport))


def _encode(camera: CameraStream, out: StreamResult, encoding: MaskEncoding | None) -> bytes:
    """Runs in the media executor; masks are encoded once per result and encoding."""
    blobs = camera.encoded_masks(out, encoding) if encoding is not None else None
    msg = result_message(out, time.time(), camera.session.counters.dropped, encoding)
    return encode_frame_message(msg, encoded=blobs)


def _encode_result(
    camera: CameraStream, out: StreamResult, encoding: MaskEncoding | None
) -> Encoded:
    start = time.perf_counter()
    data = _encode(camera, out, encoding)
    return Encoded(data, out.frame.capture_ts, 0.0, time.perf_counter() - start)


async def _send_results(feed: _Feed) -> None:
    camera, websocket = feed.camera, feed.websocket
    loop = asyncio.get_running_loop()
    executor = feed.runtime.media_executor()
    metrics = feed.runtime.metrics
    sink = "websocket" if feed.placed is None else "websocket_source"
    cache = view_cache(camera, "model" if feed.placed is None else "source")
    while True:
        if feed.credits is not None and not await feed.credits.take():
            feed.ended = "shutdown" if feed.runtime.shutting_down else "stream_deleted"
            return
        # The newest item is taken only once the last message has left user space: what
        # waits meanwhile is replaced by newer ones (counted), not queued in buffers.
        if not await drained(feed.transport, SEND_TIMEOUT_S):
            feed.ended = "too_slow"
            return
        try:
            item = await feed.mailbox.take_async()
        except SlotClosed:
            feed.ended = "shutdown" if feed.runtime.shutting_down else "stream_deleted"
            return

        encoding = feed.encoding if feed.masks else None
        if isinstance(item, Frame):
            assert feed.placed is not None
            # Moving masks costs milliseconds per frame: never on the event loop.
            if encoding is not None and not feed.view.full:
                out = await loop.run_in_executor(
                    executor, reduced_placed, cache, camera, feed.placed, item, encoding, feed.view
                )
            else:
                out = await loop.run_in_executor(executor, feed.placed.message, item, encoding)
        elif encoding is not None and not feed.view.full:
            out = await loop.run_in_executor(
                executor, reduced_result, cache, camera, item, encoding, feed.view
            )
        else:
            out = await loop.run_in_executor(executor, _encode_result, camera, item, encoding)
        encoded = time.perf_counter()
        data = out.data
        try:
            await asyncio.wait_for(websocket.send_bytes(data), SEND_TIMEOUT_S)
        except TimeoutError:
            feed.ended = "too_slow"
            return
        except (WebSocketDisconnect, RuntimeError):
            return
        if feed.placed is not None:
            metrics.observe_stage("propagate", out.place_s)
        metrics.observe_stage("mask_encode", out.encode_s)
        metrics.observe_stage("send", time.perf_counter() - encoded)
        metrics.observe_sent(sink, out.capture_ts, time.time())


async def _send_events(feed: _Feed, events: EventQueue) -> None:
    """State and track events, as they happen; ends with the feed."""
    while (text := await events.take()) is not None:
        try:
            await asyncio.wait_for(feed.websocket.send_text(text), SEND_TIMEOUT_S)
        except TimeoutError:
            feed.ended = "too_slow"
            return
        except (WebSocketDisconnect, RuntimeError):
            return


def _options(feed: _Feed, msg: SetOptions) -> dict[str, Any]:
    if msg.encoding is not None:
        feed.encoding = msg.encoding
    if msg.include_masks is not None:
        feed.masks = msg.include_masks
    return {"encoding": feed.encoding.value, "include_masks": feed.masks}


async def _receive_prompts(feed: _Feed) -> None:
    websocket, runtime = feed.websocket, feed.runtime
    limits = prompt_limits(runtime)
    while True:
        try:
            message = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return
        if message["type"] == "websocket.disconnect":
            return
        raw: str | bytes = message.get("text") or message.get("bytes") or b""
        request_id = peek_request_id(raw, limits)
        action: str | None = None  # set for messages that change state: audited
        outcome = 200
        try:
            msg = parse_feed_message(raw, limits)
            if isinstance(msg, NextResult):
                if feed.credits is None:
                    raise PromptError("bad_delivery", "'next' is for feeds with ?delivery=pull")
                if not feed.credits.grant():
                    limit = feed.credits.limit
                    raise WorkerBusyError(f"at most {limit} 'next' requests may wait")
                continue  # answered by the frame message itself
            if isinstance(msg, SetOptions):
                result = _options(feed, msg)
            else:
                action = type(msg).__name__
                if not feed.principal.allows("control"):
                    raise _Forbidden("this token lacks the 'control' scope")
                result = await apply_message(runtime, feed.camera.session, msg)
        except (PromptError, TrackerError, _Forbidden) as exc:
            outcome = 403 if isinstance(exc, _Forbidden) else 422
            reply = error_message(exc.code, str(exc), request_id, getattr(exc, "field", None))
        except (WorkerBusyError, WorkerStoppedError) as exc:
            outcome = 503
            reply = error_message("busy", str(exc), request_id)
        except Exception as exc:
            outcome = 500
            error_id = report_internal(
                runtime.metrics,
                "websocket",
                exc,
                stream=feed.camera.session.id,
                request_id=request_id,
            )
            reply = internal_error_message(error_id, request_id)
        else:
            reply = ack_message(request_id, result)
        if action is not None:
            audit(f"websocket {action}", websocket.scope, outcome, token_id=feed.principal.token_id)
        try:
            await asyncio.wait_for(websocket.send_text(reply), SEND_TIMEOUT_S)
        except TimeoutError:
            feed.ended = "too_slow"
            return
        except (WebSocketDisconnect, RuntimeError):
            return


class _Forbidden(Exception):
    """A prompt, remove or reset from a token without the `control` scope."""

    code = "forbidden"


def feed_count(runtime: Runtime) -> int:
    """Open websocket feeds over all cameras (for tests and diagnostics)."""
    return sum(len(c.feeds) for c in cameras_of(runtime).values())
