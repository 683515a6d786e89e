"""Camera and file sources read with PyAV in a thread of their own.

Each source runs an explicit state machine:

    connecting -> streaming -> (stalled) -> reconnecting -> connecting -> ...
         \\-> error (the source answered, but with something unusable) -> connecting
    any state -> stopped (on request, or a non-looping file ended)

A frozen server makes PyAV's read time out and a killed one ends the demux loop quietly;
both count as a disconnect and lead to a reconnect with exponential backoff and jitter.
Errors that retrying soon will not fix (no decoder, not video, HTTP 4xx, refused by the
source policy) are retried at the longest backoff, since a camera can be reconfigured
while we wait.

What may be opened is decided by `media/source_policy.py` (pure); this module does its
I/O: resolving host names (again before every connection, so a name that starts
pointing somewhere forbidden is caught) and paths, and opening FFmpeg with the
options the policy gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import os
import random
import socket
import ssl
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import av
import av.error
import numpy as np

from streamseg.media.frame import Frame
from streamseg.media.ingest import (
    ArrivalClock,
    ClockChoice,
    ClockSwitch,
    SenderClock,
    parse_reference_time,
    parse_sender_report,
)
from streamseg.media.source_policy import (
    LASTING_REASONS,
    REASON_TEXT,
    ParsedSource,
    Reason,
    SourceError,
    SourceKind,
    SourcePolicy,
    Transport,
    check_addresses,
    check_file,
    ffmpeg_open_spec,
    parse_source,
    reason_for,
    redact,
    transport_in_url,
)

__all__ = [
    "ErrorRecord",
    "Reason",
    "SourceError",
    "SourceEvent",
    "SourceKind",
    "SourceOptions",
    "SourcePolicy",
    "SourceReader",
    "SourceState",
    "classify",
    "parse_source",
    "redact",
    "resolve_source",
    "transport_in_url",
    "vet_source",
]

log = logging.getLogger(__name__)
DNS_TIMEOUT_S = 5.0
SYSTEM_CA_FILES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
)


class SourceState(StrEnum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    ERROR = "error"
    STOPPED = "stopped"


class _NoFrames(Exception):
    """Packets keep coming but none decodes to a frame."""


# Gone rather than misbehaving: probed cheaply and opened as soon as it answers.
DOWN_REASONS = frozenset({Reason.REFUSED, Reason.UNREACHABLE, Reason.TIMEOUT, Reason.ENDED})
PROBE_FIRST_S = 0.05  # the first probe after a loss; then doubling up to probe_interval_s
EVENTS_KEPT = 32  # recent events on the reader (oldest dropped)
PENDING_KEPT = 64  # stamps of packets in the decoder whose frame has not come out
SKIP_LOG_S = 10.0  # ingest skips are logged at most this often
EDGE_WAIT_S = 0.01  # a read that waited this long found the socket empty


@dataclass(frozen=True, slots=True)
class SourceEvent:
    """A change in how frames are made that a client should hear about, not only find in
    a metric: `clock` (frames are now stamped with another clock; `data`: previous,
    current, reason, skew_s) and `ingest_skip` (the decoder fell `lag_s` behind
    arrival; packets are discarded up to the next keyframe)."""

    kind: str
    at: float
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Stamp:
    """What a packet brought besides its bytes: when it arrived (estimated, see
    `ArrivalClock`) and its capture time by the sender's clock, if it has one."""

    arrival: float
    stream: float | None


@dataclass(frozen=True, slots=True)
class SourceOptions:
    transport: Transport = "tcp"  # rtsp only
    loop: bool = False  # files only: start again at the end
    realtime: bool = True  # files only: pace frames at their frame rate
    stall_timeout_s: float = 5.0  # no packet arrived (or no frame) for this long -> stalled
    open_timeout_s: float = 3.0
    read_timeout_s: float = 3.0
    # Waits between connection attempts to a source that answers but fails (or drops
    # right after connecting); doubled per failure, with jitter.
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    # A source that is gone (refused, unreachable, timed out, closed after streaming)
    # is probed with a TCP connect at most this far apart and opened once it answers.
    probe_interval_s: float = 0.25
    # A stream clock (RTCP sender reports) further than this from arrival is not trusted.
    max_clock_skew_s: float = 10.0
    # Live sources: a decoder further behind packet arrival than this skips to the
    # next keyframe, discarding packets undecoded (counted as ingest drops).
    max_lag_s: float = 1.0
    # https/rtsps: verify the certificate and host name (an explicit per-stream opt-out).
    tls_verify: bool = True


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """The latest error of a source or a pipeline, kept after recovery so an operator
    can see what happened and when; `recovered` is judged against the last success."""

    reason: str
    message: str
    at: float  # time of the latest occurrence
    count: int  # occurrences since the stream was created

    def then(self, reason: str, message: str, at: float) -> ErrorRecord:
        return ErrorRecord(reason, message, at, self.count + 1)

    @property
    def text(self) -> str:
        return f"{self.reason}: {self.message}"

    def describe(self, last_success: float | None) -> dict[str, Any]:
        recovered = last_success is not None and last_success >= self.at
        return {
            "reason": self.reason,
            "message": self.message,
            "at": self.at,
            "count": self.count,
            "recovered": recovered,
        }


def record_error(
    previous: ErrorRecord | None, reason: str, message: str, at: float | None = None
) -> ErrorRecord:
    at = time.time() if at is None else at
    if previous is None:
        return ErrorRecord(reason, message, at, 1)
    return previous.then(reason, message, at)


def classify(url: str, policy: SourcePolicy | None = None) -> SourceKind:
    """The source kind for a URL, or SourceError with the reason (text only, no I/O)."""
    return parse_source(url, policy or SourcePolicy()).kind


def default_ca_file(policy: SourcePolicy) -> str | None:
    """The configured CA file, else the system's bundle: FFmpeg's bundled TLS library
    may look for one where this system has none, and then would trust nothing."""
    if policy.ca_file:
        return policy.ca_file
    candidates = (ssl.get_default_verify_paths().cafile, *SYSTEM_CA_FILES)
    return next((c for c in candidates if c and os.path.isfile(c)), None)


def resolve_source(
    parsed: ParsedSource, policy: SourcePolicy, *, dns_failure_ok: bool = False
) -> str:
    """Blocking (DNS, file system): the target FFmpeg may open, checked against the
    policy with what the host name and path resolve to now. Call it off the loop."""
    if parsed.kind == "v4l2":
        return parsed.target
    if parsed.kind == "file":
        root = os.path.realpath(policy.media_root or "/nonexistent")
        real: str | None
        try:
            real = os.path.realpath(parsed.target)
            usable = os.path.isfile(real) and os.access(real, os.R_OK)
        except (OSError, ValueError):  # a name too long, a loop of links
            real, usable = None, False
        return check_file(root, real, usable)
    assert parsed.host is not None
    try:
        infos = socket.getaddrinfo(parsed.host, parsed.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        if dns_failure_ok:
            return parsed.target  # the reader checks again before it connects
        raise SourceError("the host name does not resolve", Reason.UNREACHABLE) from None
    check_addresses(parsed.host, [str(info[4][0]) for info in infos], policy)
    return parsed.target


async def vet_source(url: str, policy: SourcePolicy) -> ParsedSource:
    """Check a client's URL before a stream is created: the text, then (in a thread)
    its resolved addresses or path. A name that does not resolve yet is accepted; the
    reader checks it before every connection."""
    parsed = parse_source(url, policy)
    with contextlib.suppress(TimeoutError):  # a slow resolver: the reader checks later
        await asyncio.wait_for(
            asyncio.to_thread(resolve_source, parsed, policy, dns_failure_ok=True),
            DNS_TIMEOUT_S,
        )
    return parsed


def diagnose(
    parsed: ParsedSource, ca_file: str | None, verify: bool, timeout: float
) -> Reason | None:
    """After FFmpeg failed with a bare I/O error: is it the certificate, or a redirect?
    FFmpeg's error says neither (its log would, but also carries the URL). Blocking."""
    assert parsed.host is not None and parsed.port is not None
    context: ssl.SSLContext | None = None
    if parsed.tls:
        context = ssl.create_default_context(cafile=ca_file)
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        try:
            with (
                socket.create_connection((parsed.host, parsed.port), timeout) as sock,
                context.wrap_socket(sock, server_hostname=parsed.host),
            ):
                pass
        except ssl.SSLCertVerificationError:
            return Reason.TLS
        except (OSError, ValueError):
            return None
    if parsed.kind != "http":
        return None
    parts = urlsplit(parsed.target)
    conn = (
        http.client.HTTPSConnection(parsed.host, parsed.port, timeout=timeout, context=context)
        if context is not None
        else http.client.HTTPConnection(parsed.host, parsed.port, timeout=timeout)
    )
    try:
        conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()
    return Reason.REDIRECT if 300 <= status < 400 else None


class SourceReader:
    """Reads one source in a daemon thread and hands each decoded frame to `sink`.

    `sink`, `on_decode`, `on_drop` and `on_event` run on the reader thread: they must
    be thread-safe and quick. The URL is checked against `policy` here (text) and
    before every connection (DNS, paths); SourceError when the text alone rules it out.

    Live sources (all but files) never run behind: each packet's lag against arrival is
    measured (`media/ingest.py: ArrivalClock`) and a decoder more than `max_lag_s`
    behind discards packets undecoded up to the next keyframe that is within the bound
    (`on_drop("ingest_skip")` per packet). `stalled` is judged from packet arrival, so
    a backlog being decoded cannot hide a frozen camera.
    """

    def __init__(
        self,
        url: str,
        sink: Callable[[Frame], None],
        options: SourceOptions | None = None,
        on_decode: Callable[[float], None] | None = None,
        policy: SourcePolicy | None = None,
        on_drop: Callable[[str], None] | None = None,
        on_event: Callable[[SourceEvent], None] | None = None,
    ) -> None:
        self.url = url
        self.policy = policy or SourcePolicy()
        self.parsed = parse_source(url, self.policy)
        self.kind: SourceKind = self.parsed.kind
        options = options or SourceOptions()
        if self.parsed.transport is not None:
            options = replace(options, transport=self.parsed.transport)
        self.options = options
        self._sink = sink
        self._on_decode = on_decode
        self._on_drop = on_drop
        self._on_event = on_event
        self._state = SourceState.CONNECTING
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"source {self.public_url}", daemon=True
        )
        self.error: ErrorRecord | None = None
        self.last_frame_ts: float | None = None
        self.last_packet_ts: float | None = None  # when the newest packet arrived (estimated)
        self.last_capture_source: str | None = None
        self.last_capture_lag_s: float | None = None  # receive time - capture time
        self.ingest_lag_s: float | None = None  # the newest packet: read time - arrival
        self.ingest_drops = 0  # packets discarded undecoded to catch up
        self.ingest_skips = 0  # times the decoder fell behind and skipped
        self.probes = 0  # reachability probes while the source was down
        self.reconnects = 0
        self.frames = 0
        self.width: int | None = None
        self.height: int | None = None
        self.connected_at: float | None = None  # when the current connection's first frame came
        # Recent events (bounded, oldest dropped); `on_event` sees every one.
        self.events: deque[SourceEvent] = deque(maxlen=EVENTS_KEPT)
        self._clock = ClockChoice(options.max_clock_skew_s)
        self._seq = 0
        self._skipping = False
        self._skip_logged = 0.0
        self._skips_unlogged = 0

    @property
    def public_url(self) -> str:
        return redact(self.url)

    @property
    def clock_switches(self) -> int:
        """Times frames changed capture clock (each also an event and a log line)."""
        return self._clock.switches

    @property
    def last_error(self) -> str | None:
        """The error still in effect ("reason: text"), None once a frame came after it."""
        error, last = self.error, self.last_frame_ts
        if error is None or (last is not None and last >= error.at):
            return None
        return error.text

    @property
    def state(self) -> SourceState:
        """The current state; `stalled` is judged now: no packet has arrived (by the
        wall clock, see `last_packet_ts`) or no frame came for `stall_timeout_s`."""
        state = self._state
        if state is not SourceState.STREAMING:
            return state
        packet, frame = self.last_packet_ts, self.last_frame_ts
        oldest = min(packet if packet is not None else 0.0, frame if frame is not None else 0.0)
        stalled = time.time() - oldest > self.options.stall_timeout_s
        return SourceState.STALLED if stalled else state

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to end; it does within one packet, or one read timeout when
        blocked on a frozen server (PyAV reads cannot be interrupted sooner)."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Blocks (call it off the event loop); True when the thread has ended."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> bool:
        self.request_stop()
        ended = self.join(timeout)
        self._state = SourceState.STOPPED
        return ended

    # ---- the thread ------------------------------------------------------------------

    def _record(self, reason: Reason, message: str) -> None:
        self.error = record_error(self.error, reason.value, message)
        log.warning("source %s: %s", self.public_url, self.error.text)

    def _event(self, kind: str, **data: Any) -> None:
        event = SourceEvent(kind, time.time(), data)
        self.events.append(event)
        if self._on_event is not None:
            self._on_event(event)

    def _open(self) -> Any:
        o = self.options
        target = resolve_source(self.parsed, self.policy)  # again: DNS may have changed
        spec = ffmpeg_open_spec(
            self.parsed,
            target,
            self.policy,
            transport=o.transport,
            tls_verify=o.tls_verify,
            ca_file=default_ca_file(self.policy),
        )
        kwargs: dict[str, Any] = {
            "timeout": (o.open_timeout_s, o.read_timeout_s),
            "options": spec.options,
        }
        if spec.format is not None:
            kwargs["format"] = spec.format
        return av.open(spec.url, **kwargs)

    def _run(self) -> None:
        o = self.options
        backoff = o.backoff_initial_s
        while not self._stop.is_set():
            self.connected_at = None
            attempt = time.monotonic()
            reason: Reason | None
            try:
                ending = self._read_once()
                reason = Reason.ENDED if ending == "disconnected" else None
            except Exception as exc:  # PyAV raises many types; all mean "no stream now"
                reason = self._reason(exc, time.monotonic() - attempt)
                self._record(reason, self._describe(exc, reason))
                ending = "disconnected"
            if self._stop.is_set() or ending == "ended":
                break
            if ending == "loop":
                continue
            self.reconnects += 1
            streamed = self._streamed_for() >= 1.0
            if reason in LASTING_REASONS:
                # Retrying soon will not help, but a camera can be reconfigured.
                self._state = SourceState.ERROR
                backoff = o.backoff_max_s
            elif reason in DOWN_REASONS and (reason is not Reason.ENDED or streamed):
                # Gone rather than misbehaving: probe, and connect the moment it is back.
                self._state = SourceState.RECONNECTING
                backoff = o.backoff_initial_s
                self._probe_until_up()
                continue
            else:
                # It answered, but badly, or dropped right after connecting: back off.
                self._state = SourceState.RECONNECTING
                if streamed:
                    backoff = o.backoff_initial_s
            delay = min(backoff * (0.5 + random.random()), o.backoff_max_s)
            backoff = min(backoff * 2, o.backoff_max_s)
            self._stop.wait(delay)
        self._state = SourceState.STOPPED

    def _probe_until_up(self) -> None:
        """Wait until the source would accept a connection: a TCP connect (network
        sources) or the device node (V4L2), first after 50 ms, then doubling up to
        `probe_interval_s`. However long the outage, the camera is opened within one
        interval of its return; a dead one costs one SYN per interval."""
        interval = min(PROBE_FIRST_S, self.options.probe_interval_s)
        while not self._stop.wait(interval * (0.8 + 0.4 * random.random())):
            self.probes += 1
            if self._reachable():
                return
            interval = min(interval * 2, self.options.probe_interval_s)

    def _reachable(self) -> bool:
        """Blocking, at most one probe interval per address (DNS aside). A name that
        now resolves somewhere forbidden counts as reachable: opening it reports why."""
        p = self.parsed
        if p.kind == "v4l2":
            return os.path.exists(p.target)
        if p.host is None or p.port is None:
            return True
        try:
            infos = socket.getaddrinfo(p.host, p.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return False
        try:
            check_addresses(p.host, [str(info[4][0]) for info in infos], self.policy)
        except SourceError:
            return True
        timeout = max(0.05, min(self.options.probe_interval_s, self.options.open_timeout_s))
        for family, kind, proto, _, address in infos:
            with socket.socket(family, kind, proto) as probe:
                probe.settimeout(timeout)
                try:
                    probe.connect(address)
                except OSError:
                    continue
                return True
        return False

    def _reason(self, exc: Exception, elapsed: float) -> Reason:
        reason = reason_for(exc, timed_out=self._timed_out(exc, elapsed))
        if (
            reason is Reason.UNREACHABLE
            and (self.kind == "http" or self.parsed.tls)
            and not isinstance(exc, SourceError)  # the policy refused it: never connect
        ):
            # A bare I/O error from FFmpeg: find out whether TLS or a redirect caused it.
            o = self.options
            ca_file = default_ca_file(self.policy)
            reason = diagnose(self.parsed, ca_file, o.tls_verify, o.open_timeout_s) or reason
        return reason

    def _timed_out(self, exc: Exception, elapsed: float) -> bool:
        """PyAV's timeouts interrupt FFmpeg, which reports AVERROR_EXIT or, from inside
        the RTSP handshake, "invalid data": a silent server, not a broken stream."""
        if isinstance(exc, av.error.ExitError):
            return True
        quickest = min(self.options.open_timeout_s, self.options.read_timeout_s)
        return (
            isinstance(exc, av.error.InvalidDataError)
            and self.kind != "file"
            and self.connected_at is None
            and elapsed >= quickest * 0.9
        )

    def _describe(self, exc: Exception, reason: Reason) -> str:
        """Our own words only: FFmpeg's message carries the URL and its credentials."""
        if isinstance(exc, SourceError | _NoFrames):
            return str(exc)
        if reason is Reason.TIMEOUT:
            o = self.options
            return (
                f"nothing from the source within {o.open_timeout_s:g} s (open) "
                f"or {o.read_timeout_s:g} s (read)"
            )
        return REASON_TEXT[reason]

    def _streamed_for(self) -> float:
        """How long the connection that just ended delivered frames (a flapping camera
        that drops right after connecting keeps backing off)."""
        if self.connected_at is None or self.last_frame_ts is None:
            return 0.0
        return self.last_frame_ts - self.connected_at

    def _check_size(self, width: int, height: int) -> None:
        side = self.policy.max_frame_side
        if width > side or height > side:
            raise SourceError(
                f"frames of {width}x{height} exceed the {side} px limit", Reason.TOO_LARGE
            )

    def _read_once(self) -> str:
        """One connection's life: "ended" (a file, done), "loop" (a file, again) or
        "disconnected". The container and its decoder are closed before returning, so
        their threads end now rather than at the next full garbage collection."""
        container = self._open()
        try:
            ending = self._demux(container)
        finally:
            container.close()
            del container
        if ending == "disconnected" and not self._stop.is_set():
            self._record(Reason.ENDED, REASON_TEXT[Reason.ENDED])
        return ending

    def _demux(self, container: Any) -> str:
        if not container.streams.video:
            raise SourceError("the source has no video stream", Reason.UNSUPPORTED)
        stream = container.streams.video[0]
        codec = stream.codec_context
        if codec is None:
            raise SourceError("no decoder for the source's video codec", Reason.UNSUPPORTED)
        self._check_size(codec.width, codec.height)  # the header's size, when it has one
        side = self.policy.max_frame_side
        codec.options = {**codec.options, "max_pixels": str(side * side)}
        # Frame threading would add two frames of latency; slice threading adds none.
        stream.thread_type = "SLICE"
        live = self.kind != "file"
        pace = self.kind == "file" and self.options.realtime
        # Per connection: a new connection is a new RTP timeline and sender clock.
        arrivals = ArrivalClock()
        senders = SenderClock(float(1 / stream.time_base)) if stream.time_base else None
        stamps: OrderedDict[int | None, _Stamp] = OrderedDict()  # by pts, oldest first
        self._skipping = False
        started = time.monotonic()
        progress = time.monotonic()
        no_frames_limit = max(2 * self.options.stall_timeout_s, self.options.read_timeout_s)
        first_time: float | None = None
        packets = container.demux(stream)  # the last, empty packet flushes
        while not self._stop.is_set():
            before = time.monotonic()
            packet = next(packets, None)
            if packet is None:
                break
            at_edge = time.monotonic() - before >= EDGE_WAIT_S  # the socket was empty
            if packet.size:
                stamp, lag = self._stamp(packet, arrivals, senders)
                if live and self._skip(packet, lag, at_edge, codec, stamps):
                    progress = time.monotonic()  # skipping by choice, not a broken stream
                    continue
                stamps[packet.pts] = stamp
                while len(stamps) > PENDING_KEPT:
                    stamps.popitem(last=False)
            start = time.perf_counter()
            try:
                decoded = packet.decode()
            except av.error.ArgumentError:
                # max_pixels: the decoder refused to allocate a frame that large
                raise SourceError(
                    f"the decoder refused a frame larger than {side}x{side} pixels",
                    Reason.TOO_LARGE,
                ) from None
            if decoded and self._on_decode is not None:
                self._on_decode(time.perf_counter() - start)
            for av_frame in decoded:
                if pace and av_frame.time is not None:
                    first_time = av_frame.time if first_time is None else first_time
                    due = started + av_frame.time - first_time
                    self._stop.wait(max(0.0, due - time.monotonic()))
                self._emit(av_frame, stamps.pop(av_frame.pts, None))
                progress = time.monotonic()
            if time.monotonic() - progress > no_frames_limit:
                raise _NoFrames(f"packets but no decodable frame for {no_frames_limit:.0f} s")
        if self.kind == "file" and not self._stop.is_set():
            return "loop" if self.options.loop else "ended"
        return "disconnected"

    def _stamp(
        self, packet: Any, arrivals: ArrivalClock, senders: SenderClock | None
    ) -> tuple[_Stamp, float]:
        """The packet's arrival (read time less its lag) and sender capture time, and
        its lag. Sender reports come as `rtcp_sr` side data on the first packet after
        each report; `prft` is FFmpeg's wall-clock time of the packet from the latest."""
        now = time.time()
        media = packet.dts if packet.dts is not None else packet.pts
        lag = 0.0
        if media is not None and packet.time_base is not None:
            lag = arrivals.observe(float(media * packet.time_base), now)
        arrival = now - lag
        stream_time = None
        if senders is not None:
            if packet.has_sidedata("rtcp_sr"):
                report = parse_sender_report(bytes(packet.get_sidedata("rtcp_sr")))
                if report is not None:
                    senders.report(*report)
            if packet.has_sidedata("prft"):
                reference = parse_reference_time(bytes(packet.get_sidedata("prft")))
                if reference is not None:
                    stream_time = senders.capture(reference)
        self.ingest_lag_s = lag
        if self.last_packet_ts is None or arrival > self.last_packet_ts:
            self.last_packet_ts = arrival
        return _Stamp(arrival, stream_time), lag

    def _skip(
        self,
        packet: Any,
        lag: float,
        at_edge: bool,
        codec: Any,
        stamps: OrderedDict[int | None, _Stamp],
    ) -> bool:
        """True when the packet is discarded undecoded: the decoder fell more than
        `max_lag_s` behind arrival, and this is not yet a keyframe within the bound.
        Demuxing alone is cheap, so the backlog drains at once and the next keyframe
        is usually fresh; a backlog longer than a GOP skips to a later keyframe. A
        keyframe read from an empty socket (`at_edge`) resumes even if it looks late:
        the sender is late then, not us, and skipping more cannot help."""
        bound = self.options.max_lag_s
        if not self._skipping and lag <= bound:
            return False
        if self._skipping and packet.is_keyframe and (lag <= bound or at_edge):
            self._skipping = False
            codec.flush_buffers()  # frames held from before the gap are stale
            stamps.clear()
            return False
        if not self._skipping:
            self._skipping = True
            self.ingest_skips += 1
            self._skipped(lag)
        self.ingest_drops += 1
        if self._on_drop is not None:
            self._on_drop("ingest_skip")
        return True

    def _skipped(self, lag: float) -> None:
        self._event("ingest_skip", lag_s=round(lag, 3), max_lag_s=self.options.max_lag_s)
        self._skips_unlogged += 1
        now = time.monotonic()
        if now - self._skip_logged >= SKIP_LOG_S:
            log.info(
                "source %s: decoder %.2f s behind arrival (bound %g s): skipping to the "
                "next keyframe (%d time(s) since the last note, %d packets dropped in all)",
                self.public_url,
                lag,
                self.options.max_lag_s,
                self._skips_unlogged,
                self.ingest_drops,
            )
            self._skip_logged, self._skips_unlogged = now, 0

    def _switched(self, switch: ClockSwitch) -> None:
        skew = None if switch.skew_s is None else round(switch.skew_s, 3)
        self._event(
            "clock",
            previous=switch.previous,
            current=switch.current,
            reason=switch.reason,
            skew_s=skew,
        )
        level = logging.WARNING if switch.previous == "stream" else logging.INFO
        log.log(
            level,
            "source %s: capture clock %s -> %s (%s, skew %s s)",
            self.public_url,
            switch.previous,
            switch.current,
            switch.reason,
            skew,
        )

    def _emit(self, av_frame: Any, stamp: _Stamp | None) -> None:
        # Checked on the decoded frame's header, before converting: a 140 KB PNG can
        # declare 12000x12000, which is 432 MB as RGB.
        self._check_size(av_frame.width, av_frame.height)
        image = np.ascontiguousarray(av_frame.to_ndarray(format="rgb24"))
        now = time.time()
        if stamp is None:  # a frame whose packet we lost track of: it is here now
            stamp = _Stamp(now, None)
        capture, source, switch = self._clock.choose(stamp.stream, stamp.arrival)
        if switch is not None:
            self._switched(switch)
        # No `source_frame`: a kept av.VideoFrame keeps its decoder and its threads alive.
        frame = Frame(
            seq=self._seq,
            image=image,
            capture_ts=capture,
            capture_ts_source=source,
            recv_ts=now,
            pts=av_frame.pts,
            time_base=av_frame.time_base,
        )
        self._seq += 1
        self.frames += 1
        self.width, self.height = frame.width, frame.height
        if self._state is not SourceState.STREAMING:
            self.connected_at = now
        self.last_frame_ts = now
        self.last_capture_source = frame.capture_ts_source
        self.last_capture_lag_s = now - frame.capture_ts
        self._state = SourceState.STREAMING
        self._sink(frame)
