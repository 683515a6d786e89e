"""What a browser viewer of a stream gets, measured inside a benchmark cell.

A browser sees the server's WebRTC overlay track at `rate=source`: every incoming frame
goes into the peer's one-frame mailbox, aiortc's sender pulls the newest one, the newest
model masks are moved onto it (`propagate`) and drawn (`overlay`), and the frame is
VP8-encoded in a thread. This runs exactly that code (`media/webrtc.py`: `Peer`,
`OverlayTrack`) on the server's own event loop against a cell's camera stream, and
pulls it the way aiortc's sender does; only RTP and the network are left out, so no
second model pipeline runs and nothing is simulated.

Per outgoing frame it keeps when the frame was received and when its composed overlay
was handed to the encoder, and the age of each mask on it. Bounded: `maxlen` records
per viewer, drop-oldest, counted in `dropped_records`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from streamseg.bench.server import vp8_encoder
from streamseg.media.webrtc import OverlayTrack, Peer, PeerOptions
from streamseg.pipeline.egress import PlacedFrame
from streamseg.pipeline.stream import StreamSession

MAX_RECORDS = 100_000


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One frame handed to the encoder."""

    recv_ts: float  # the frame reached the server (decoded from the source)
    sent_ts: float  # its composed overlay was handed to the encoder
    ages_ms: tuple[float, ...]  # per track: how old the mask drawn on it is


class _ViewerPeer(Peer):
    """The server's peer, noting each frame it hands to the encoder (`sent`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.records: deque[Outgoing] = deque(maxlen=MAX_RECORDS)
        self.encode_s: deque[float] = deque(maxlen=MAX_RECORDS)
        self.dropped_records = 0

    def sent(self, placed: PlacedFrame, sent_ts: float, video_pts: int) -> None:
        super().sent(placed, sent_ts, video_pts)
        if len(self.records) == MAX_RECORDS:
            self.dropped_records += 1
        ages = tuple(t.age_ms for t in placed.tracks)
        self.records.append(Outgoing(placed.frame.recv_ts, sent_ts, ages))

    def detach(self) -> None:
        """Stop taking frames; unlike `Peer.close`, the camera stream stays open."""
        self._remove_sink()
        self.outgoing.close()


async def _pull(peer: _ViewerPeer) -> None:
    """aiortc's sender loop: take the next frame from the track, encode it in a thread."""
    loop = asyncio.get_running_loop()
    track = OverlayTrack(peer)
    encoder = vp8_encoder()
    with contextlib.suppress(MediaStreamError):
        while True:
            video = await track.recv()
            start = time.perf_counter()
            await loop.run_in_executor(None, encoder.encode, video, False)
            peer.encode_s.append(time.perf_counter() - start)


class SourceRateViewers:
    """One viewer per stream of a running in-process server. `start`, `take` and `stop`
    are called from the benchmark's own loop; the viewers live on the server's loop."""

    def __init__(self, runtime: Any, sessions: list[StreamSession]) -> None:
        self.runtime = runtime
        self.sessions = sessions
        self.peers: list[_ViewerPeer] = []
        self._pulls: list[Future[None]] = []
        self._drops_seen: list[int] = []

    async def start(self) -> None:
        for session in self.sessions:
            peer = await _on(session, self._open(session))
            self.peers.append(peer)
            self._drops_seen.append(0)
            self._pulls.append(asyncio.run_coroutine_threadsafe(_pull(peer), session.loop))

    async def _open(self, session: StreamSession) -> _ViewerPeer:
        options = PeerOptions(overlay=True, metadata=False, rate="source")
        pc = RTCPeerConnection()
        return _ViewerPeer(pc, session, self.runtime, self.runtime.media_executor(), options)

    def take(self) -> list[dict[str, Any]]:
        """Per stream, everything since the last call: outgoing frames, encode times,
        and the frames the viewer's mailbox replaced before the encoder took them."""
        taken = []
        for k, peer in enumerate(self.peers):
            records = [peer.records.popleft() for _ in range(len(peer.records))]
            encode = [peer.encode_s.popleft() for _ in range(len(peer.encode_s))]
            total = peer.outgoing.drops
            drops, self._drops_seen[k] = total - self._drops_seen[k], total
            taken.append({"outgoing": records, "encode_s": encode, "drops": drops})
        return taken

    @property
    def dropped_records(self) -> int:
        return sum(p.dropped_records for p in self.peers)

    async def stop(self) -> None:
        for peer in self.peers:
            await _on(peer.stream, self._close(peer))
        for pull in self._pulls:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.wrap_future(pull), 10)

    @staticmethod
    async def _close(peer: _ViewerPeer) -> None:
        peer.detach()
        await peer.pc.close()


async def _on(session: StreamSession, coro: Any) -> Any:
    """Run `coro` on the stream's (the server's) loop and wait for it from this one."""
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, session.loop))
