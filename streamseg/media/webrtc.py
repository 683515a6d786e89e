"""WebRTC peers: inbound video into a stream's latest-frame slot, overlay video and
per-frame metadata back out, prompts in over a data channel.

aiortc queues every decoded frame without bound; the inbound reader drains that
queue continuously so only the slot's single frame ever waits. The outbound track
is pulled by aiortc's encoder. At the default `rate="source"` each pull takes the
newest incoming frame (older ones are dropped and counted) and draws the newest model
masks moved onto it, so the video runs at the camera's rate whatever the model's
speed; at `rate="model"` each pull takes the newest result and draws its masks on the
very frame they were computed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streamseg.media.frame import Frame, frame_from_av
from streamseg.media.overlay import draw_overlay
from streamseg.media.slot import LatestSlot, SlotClosed
from streamseg.model.errors import TrackerError
from streamseg.pipeline.commands import apply_to_tracker
from streamseg.pipeline.egress import PlacedFrame, SourceRateMasks
from streamseg.pipeline.stream import StreamResult, StreamSession
from streamseg.pipeline.wire import placed_message
from streamseg.pipeline.worker import WorkerBusyError, WorkerStoppedError
from streamseg.protocol.messages import (
    ack_message,
    error_message,
    frame_message_json,
    internal_error_message,
)
from streamseg.protocol.prompts import (
    ClientMessage,
    PromptError,
    PromptLimits,
    SetOptions,
    parse_client_message,
    peek_request_id,
)
from streamseg.server.errors import report_internal
from streamseg.server.metrics import Metrics

log = logging.getLogger(__name__)
VIDEO_CLOCK = 90_000
DATA_CHANNEL_LABEL = "streamseg"
# A frame's metadata is skipped (and counted) while more than this waits in the channel
# behind messages SCTP has not finished sending: a newer frame's goes once it drained,
# so metadata never queues behind stale metadata (the websocket feed's rule, same why).
DATA_CHANNEL_LOW_WATER = 0
MAX_INFLIGHT_MESSAGES = 32
_peer_ids = itertools.count(1)


def restrict_ice_hosts(hosts: tuple[str, ...]) -> None:
    """Offer exactly `hosts` as ICE host candidates.

    aioice gathers every interface address except 127.0.0.1 and has no option to
    choose; replacing its gatherer is process-wide, which matches a server that
    has one configuration."""
    if not hosts:
        return
    import aioice.ice

    def configured(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [h for h in hosts if (":" in h and use_ipv6) or (":" not in h and use_ipv4)]

    aioice.ice.get_host_addresses = configured


def new_peer_connection(ice_servers: tuple[str, ...] = ()) -> RTCPeerConnection:
    """No STUN unless configured: aiortc would otherwise contact Google's by default."""
    from aiortc import RTCIceServer

    servers = [RTCIceServer(url) for url in ice_servers]
    return RTCPeerConnection(RTCConfiguration(iceServers=servers))


@dataclass
class PeerOptions:
    overlay: bool = True
    metadata: bool = True
    masks_in_metadata: bool = False
    # "source": every incoming frame goes back with the newest masks moved onto it;
    # "model": one outgoing frame per model result, masks on their own frame.
    rate: str = "source"
    interval: int = 1  # the model runs on every Nth incoming frame


class OverlayTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, peer: Peer) -> None:
        super().__init__()
        self._peer = peer
        self._t0: float | None = None

    async def recv(self) -> av.VideoFrame:
        try:
            item = await self._peer.outgoing.take_async()
        except SlotClosed:
            self.stop()
            raise MediaStreamError from None
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        video, placed = await loop.run_in_executor(self._peer.executor, self._peer.compose, item)
        self._peer.metrics.observe_stage("overlay", time.perf_counter() - start)
        now = time.time()
        if self._t0 is None:
            self._t0 = now
        video.pts = int((now - self._t0) * VIDEO_CLOCK)
        video.time_base = Fraction(1, VIDEO_CLOCK)
        self._peer.sent(placed, now, video.pts)
        return video


@dataclass(eq=False)
class Peer:
    pc: RTCPeerConnection
    stream: StreamSession
    runtime: Any  # streamseg.server.runtime.Runtime (avoids an import cycle)
    executor: ThreadPoolExecutor
    options: PeerOptions
    id: str = field(default_factory=lambda: f"p{next(_peer_ids)}")

    def __post_init__(self) -> None:
        self.metrics: Metrics = self.runtime.metrics
        # Bound 1, policy `latest`: the encoder takes the newest outgoing item.
        self.outgoing: LatestSlot[Frame | StreamResult] = LatestSlot(
            on_drop=lambda _: self.metrics.count_drop(self.stream.id, "overlay")
        )
        self.placer: SourceRateMasks | None = None
        if self.options.rate == "source":
            self.placer = self.stream.source_rate_masks()
            self._remove_sink = self.stream.add_frame_sink(self.outgoing.put)
        else:
            self._remove_sink = self.stream.add_sink(self.outgoing.put)
        self.channel: RTCDataChannel | None = None
        self.reader: asyncio.Task[None] | None = None
        self.closed = False
        # Bound MAX_INFLIGHT_MESSAGES, policy `reject` (an error reply); applied in order.
        self._inflight: set[asyncio.Task[None]] = set()
        self._order = asyncio.Lock()
        self.limits = PromptLimits(max_points=self.runtime.settings.max_prompts_per_request)
        self._setup_timer: asyncio.TimerHandle | None = None
        self._expiry: asyncio.Task[None] | None = None

    # ---- inbound -------------------------------------------------------------------

    async def read(self, track: MediaStreamTrack) -> None:
        """Drain aiortc's queue continuously; RGB conversion and handing the frame to
        the stream (whose frame sinks, e.g. the source-rate placer, do per-frame image
        work) run in the executor, never on the loop."""
        loop = asyncio.get_running_loop()
        max_side = self.runtime.settings.max_frame_side
        seq = 0
        while not self.closed:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            if not isinstance(frame, av.VideoFrame):
                continue
            recv_ts = time.time()
            if max(frame.width, frame.height) > max_side:
                self.metrics.count_drop(self.stream.id, "too_large")
                continue
            await loop.run_in_executor(self.executor, self._submit, frame, seq, recv_ts)
            seq += 1
        await self.close()

    def _submit(self, frame: av.VideoFrame, seq: int, recv_ts: float) -> None:
        start = time.perf_counter()
        converted = frame_from_av(frame, seq, recv_ts)
        self.metrics.observe_stage("rgb_convert", time.perf_counter() - start)
        self.stream.submit_frame(converted)

    # ---- outbound ------------------------------------------------------------------

    def compose(self, item: Frame | StreamResult) -> tuple[av.VideoFrame, PlacedFrame]:
        """Runs in the executor: the newest masks placed on an incoming frame (source
        rate), or a result's masks on their own frame (model rate), drawn."""
        if isinstance(item, Frame):
            assert self.placer is not None
            start = time.perf_counter()
            placed = self.placer.place(item)
            self.metrics.observe_stage("propagate", time.perf_counter() - start)
        else:
            placed = PlacedFrame.from_result(item)
        image = placed.frame.image
        if self.options.overlay and placed.tracks:
            image = draw_overlay(image, [(t.model.track_id, t.mask) for t in placed.tracks])
        return av.VideoFrame.from_ndarray(image, format="rgb24"), placed

    def sent(self, placed: PlacedFrame, sent_ts: float, video_pts: int) -> None:
        self.metrics.observe_sent("webrtc", placed.frame.capture_ts, sent_ts)
        channel = self.channel
        if not self.options.metadata or channel is None or channel.readyState != "open":
            return
        if channel.bufferedAmount > DATA_CHANNEL_LOW_WATER:
            self.metrics.count_drop(self.stream.id, "data_channel")
            return
        masks = None
        if self.options.masks_in_metadata:
            masks = [t.mask for t in placed.tracks]
        msg = placed_message(placed, self.stream.id, sent_ts, self.stream.counters.dropped)
        channel.send(frame_message_json(msg, masks, {"video_pts": video_pts}))

    # ---- data channel ----------------------------------------------------------------

    def attach_channel(self, channel: RTCDataChannel) -> None:
        if channel.label != DATA_CHANNEL_LABEL:
            return
        self.channel = channel

        @channel.on("message")
        def on_message(raw: str | bytes) -> None:
            if len(self._inflight) >= MAX_INFLIGHT_MESSAGES:
                self._reply(error_message("busy", "too many prompts in flight; slow down"))
                return
            task = asyncio.ensure_future(self.handle_message(raw))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    def _reply(self, text: str) -> None:
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(text)

    async def handle_message(self, raw: str | bytes) -> None:
        request_id = peek_request_id(raw)
        try:
            msg = parse_client_message(raw, self.limits)
            async with self._order:
                result = await self.apply(msg)
        except (PromptError, TrackerError) as exc:
            self._reply(error_message(exc.code, str(exc), request_id, getattr(exc, "field", None)))
        except WorkerBusyError as exc:
            self._reply(error_message("busy", str(exc), request_id))
        except WorkerStoppedError as exc:
            self._reply(error_message("shutting_down", str(exc), request_id))
        except Exception as exc:
            error_id = report_internal(
                self.metrics, "data_channel", exc, stream=self.stream.id, request_id=request_id
            )
            self._reply(internal_error_message(error_id, request_id))
        else:
            self._reply(ack_message(request_id, result))

    async def apply(self, msg: ClientMessage) -> dict[str, Any]:
        if isinstance(msg, SetOptions):
            if msg.include_masks is not None:
                self.options.masks_in_metadata = msg.include_masks
            return {"masks_in_metadata": self.options.masks_in_metadata}
        result = await apply_to_tracker(self.runtime.worker, self.stream, msg)
        self.metrics.tracks_active.set(self.runtime.count_tracks())
        return result

    # ---- lifecycle -------------------------------------------------------------------

    def expect_connection(self, timeout_s: float) -> None:
        """Close the peer unless its connection (ICE and DTLS) completes within
        `timeout_s`: an offer whose answer is never applied, or whose ICE never
        succeeds, would otherwise hold its peer and stream slots indefinitely."""
        if timeout_s > 0:
            loop = asyncio.get_running_loop()
            self._setup_timer = loop.call_later(timeout_s, self._setup_expired)

    def _setup_expired(self) -> None:
        self._setup_timer = None
        if self.closed or self.pc.connectionState == "connected":
            return
        log.info("peer %s: not connected in time (%s); closed", self.id, self.pc.connectionState)
        self.metrics.streams_reaped.labels("webrtc", "setup_timeout").inc()
        self._expiry = asyncio.ensure_future(self.close())

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._setup_timer is not None:
            self._setup_timer.cancel()
        self._remove_sink()
        self.outgoing.close()
        if self.reader is not None and self.reader is not asyncio.current_task():
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader
        with contextlib.suppress(Exception):
            await self.pc.close()
        self.runtime.close_stream(self.stream.id)
        self.runtime.closers.pop(self.id, None)
        self.metrics.peers_active.dec()
        self.metrics.tracks_active.set(self.runtime.count_tracks())


class OfferError(ValueError):
    """The offer cannot be answered (bad SDP, no video); maps to HTTP 400."""


async def answer_offer(
    runtime: Any, executor: ThreadPoolExecutor, sdp: str, options: PeerOptions
) -> tuple[RTCSessionDescription, Peer]:
    """Create a peer for a browser's (or client's) offer and return the answer."""
    settings = runtime.settings
    pc = new_peer_connection(settings.ice_servers)
    incoming: list[MediaStreamTrack] = []
    pc.on("track", incoming.append)
    try:
        offer = RTCSessionDescription(sdp=sdp, type="offer")
        await pc.setRemoteDescription(offer)
    except Exception as exc:
        await pc.close()
        raise OfferError(f"the SDP offer could not be parsed: {exc}") from None
    videos = [t for t in pc.getTransceivers() if t.kind == "video"]
    if not videos or not any(t.kind == "video" for t in incoming):
        await pc.close()
        raise OfferError("the offer has no video track to segment")
    try:
        stream = runtime.open_stream("webrtc", options.interval)
    except Exception:
        await pc.close()
        raise
    peer = Peer(pc, stream, runtime, executor, options)
    runtime.metrics.peers_active.inc()
    runtime.closers[peer.id] = peer.close
    peer.expect_connection(settings.webrtc_setup_timeout_s)

    video_in = next(t for t in incoming if t.kind == "video")
    peer.reader = asyncio.ensure_future(peer.read(video_in))

    @pc.on("datachannel")
    def on_datachannel(channel: RTCDataChannel) -> None:
        peer.attach_channel(channel)

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            await peer.close()

    pc.addTrack(OverlayTrack(peer))
    _prefer_vp8(videos[0])
    try:
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:
        await peer.close()
        raise OfferError(f"no answer could be negotiated: {exc}") from None
    return pc.localDescription, peer


def _prefer_vp8(transceiver: Any) -> None:
    from aiortc import RTCRtpSender

    codecs = RTCRtpSender.getCapabilities("video").codecs
    vp8 = [c for c in codecs if c.mimeType == "video/VP8"]
    rest = [c for c in codecs if c.mimeType != "video/VP8"]
    with contextlib.suppress(Exception):
        transceiver.setCodecPreferences(vp8 + rest)
