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
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import av
import av.error
import numpy as np

from streamseg.media.frame import Frame
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


@dataclass(frozen=True, slots=True)
class SourceOptions:
    transport: Transport = "tcp"  # rtsp only
    loop: bool = False  # files only: start again at the end
    realtime: bool = True  # files only: pace frames at their frame rate
    stall_timeout_s: float = 5.0  # no frame for this long -> stalled
    open_timeout_s: float = 3.0
    read_timeout_s: float = 3.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    # A stream clock (RTCP sender reports) further than this from ours is not trusted.
    max_clock_skew_s: float = 10.0
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

    `sink` and `on_decode` run on the reader thread: they must be thread-safe and quick.
    The URL is checked against `policy` here (text) and before every connection (DNS,
    paths); SourceError when the text alone rules it out.
    """

    def __init__(
        self,
        url: str,
        sink: Callable[[Frame], None],
        options: SourceOptions | None = None,
        on_decode: Callable[[float], None] | None = None,
        policy: SourcePolicy | None = None,
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
        self._state = SourceState.CONNECTING
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"source {self.public_url}", daemon=True
        )
        self.error: ErrorRecord | None = None
        self.last_frame_ts: float | None = None
        self.last_capture_source: str | None = None
        self.last_capture_lag_s: float | None = None  # receive time - capture time
        self.reconnects = 0
        self.frames = 0
        self.width: int | None = None
        self.height: int | None = None
        self.connected_at: float | None = None  # when the current connection's first frame came
        self._seq = 0

    @property
    def public_url(self) -> str:
        return redact(self.url)

    @property
    def last_error(self) -> str | None:
        """The error still in effect ("reason: text"), None once a frame came after it."""
        error, last = self.error, self.last_frame_ts
        if error is None or (last is not None and last >= error.at):
            return None
        return error.text

    @property
    def state(self) -> SourceState:
        """The current state; `stalled` is judged now, from the last frame's time."""
        state, last = self._state, self.last_frame_ts
        stalled = last is not None and time.time() - last > self.options.stall_timeout_s
        return SourceState.STALLED if state is SourceState.STREAMING and stalled else state

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
        backoff = self.options.backoff_initial_s
        while not self._stop.is_set():
            self._state = SourceState.CONNECTING
            self.connected_at = None
            lasting = False
            attempt = time.monotonic()
            try:
                ending = self._read_once()
            except Exception as exc:  # PyAV raises many types; all mean "no stream now"
                reason = self._reason(exc, time.monotonic() - attempt)
                self._record(reason, self._describe(exc, reason))
                lasting = reason in LASTING_REASONS
                ending = "disconnected"
            if self._stop.is_set() or ending == "ended":
                break
            if ending == "loop":
                continue
            if lasting:
                backoff = self.options.backoff_max_s
            elif self._streamed_for() >= 1.0:
                backoff = self.options.backoff_initial_s  # a real outage: retry soon
            self._state = SourceState.ERROR if lasting else SourceState.RECONNECTING
            self.reconnects += 1
            delay = min(backoff * (0.5 + random.random()), self.options.backoff_max_s)
            backoff = min(backoff * 2, self.options.backoff_max_s)
            self._stop.wait(delay)
        self._state = SourceState.STOPPED

    def _reason(self, exc: Exception, elapsed: float) -> Reason:
        reason = reason_for(exc, timed_out=self._timed_out(exc, elapsed))
        if reason is Reason.UNREACHABLE and (self.kind == "http" or self.parsed.tls):
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
        pace = self.kind == "file" and self.options.realtime
        started = time.monotonic()
        progress = time.monotonic()
        no_frames_limit = max(2 * self.options.stall_timeout_s, self.options.read_timeout_s)
        first_time: float | None = None
        for packet in container.demux(stream):  # the last, empty packet flushes
            if self._stop.is_set():
                break
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
                self._emit(av_frame, container.start_time_realtime)
                progress = time.monotonic()
            if time.monotonic() - progress > no_frames_limit:
                raise _NoFrames(f"packets but no decodable frame for {no_frames_limit:.0f} s")
        if self.kind == "file" and not self._stop.is_set():
            return "loop" if self.options.loop else "ended"
        return "disconnected"

    def _capture_ts(self, av_frame: Any, realtime: int | None, now: float) -> float | None:
        """Wall-clock capture time from the stream (RTCP sender reports give RTSP its
        `start_time_realtime`: the time of pts 0), or None when it has none we trust."""
        if not realtime or realtime <= 0 or av_frame.time is None:
            return None
        capture = float(realtime / 1e6 + av_frame.time)
        return capture if abs(now - capture) <= self.options.max_clock_skew_s else None

    def _emit(self, av_frame: Any, realtime: int | None) -> None:
        # Checked on the decoded frame's header, before converting: a 140 KB PNG can
        # declare 12000x12000, which is 432 MB as RGB.
        self._check_size(av_frame.width, av_frame.height)
        now = time.time()
        capture = self._capture_ts(av_frame, realtime, now)
        # No `source_frame`: a kept av.VideoFrame keeps its decoder and its threads alive.
        frame = Frame(
            seq=self._seq,
            image=np.ascontiguousarray(av_frame.to_ndarray(format="rgb24")),
            capture_ts=now if capture is None else capture,
            capture_ts_source="receive" if capture is None else "stream",
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
