"""Camera and file sources read with PyAV in a thread of their own.

Each source runs an explicit state machine:

    connecting -> streaming -> (stalled) -> reconnecting -> connecting -> ...
         \\-> error (the source answered, but with something unusable) -> connecting
    any state -> stopped (on request, or a non-looping file ended)

A frozen server makes PyAV's read time out and a killed one ends the demux loop quietly;
both count as a disconnect and lead to a reconnect with exponential backoff and jitter.
Errors that retrying soon will not fix (no decoder, not video, HTTP 4xx) are retried
at the longest backoff, since a camera can be reconfigured while we wait.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import av
import av.error

from streamseg.media.frame import Frame, frame_from_av

log = logging.getLogger(__name__)
SUPPORTED_SCHEMES = ("rtsp", "rtsps", "http", "https", "file")
SourceKind = Literal["rtsp", "http", "file", "v4l2"]
Transport = Literal["tcp", "udp"]


class SourceState(StrEnum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    ERROR = "error"
    STOPPED = "stopped"


class SourceError(ValueError):
    """A source that cannot work as given (URL, missing file, no usable video)."""


class _NoFrames(Exception):
    """Packets keep coming but none decodes to a frame."""


# The source answered but what it gave cannot be used; retrying fast will not help.
_LASTING_ERRORS: tuple[type[BaseException], ...] = (
    SourceError,
    av.error.LookupError,  # decoder, demuxer or protocol not found
    av.error.InvalidDataError,
    av.error.HTTPClientError,
    av.error.PermissionError,
    av.error.NotImplementedError,
    av.error.PatchWelcomeError,
)


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


def redact(url: str) -> str:
    """The URL without its password, for logs and API responses."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def classify(url: str) -> SourceKind:
    """The source kind for a URL, or SourceError with the reason."""
    if url.startswith("/dev/video"):
        return "v4l2"
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("", "file"):
        path = Path(parts.path if scheme == "file" else url)
        if not path.is_file():
            raise SourceError(f"no such file: {path}")
        return "file"
    if scheme not in SUPPORTED_SCHEMES:
        raise SourceError(
            f"unsupported URL scheme {scheme!r}; use rtsp://, rtsps://, http(s)://, a file "
            "path or /dev/videoN"
        )
    try:
        host, _port = parts.hostname, parts.port
    except ValueError as exc:
        raise SourceError(f"bad URL {redact(url)!r}: {exc}") from None
    if not host:
        raise SourceError(f"URL {redact(url)!r} has no host")
    if scheme.startswith("rtsp"):
        transport_in_url(url)
        return "rtsp"
    return "http"


def transport_in_url(url: str) -> tuple[str, Transport | None]:
    """Split `?transport=tcp|udp` off an RTSP URL: it is ours, not the camera's."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = [v for k, v in query if k == "transport"]
    if not ours:
        return url, None
    if ours[-1] not in ("tcp", "udp"):
        raise SourceError(f"transport must be tcp or udp, got {ours[-1]!r}")
    rest = urlencode([(k, v) for k, v in query if k != "transport"])
    transport: Transport = "udp" if ours[-1] == "udp" else "tcp"
    return urlunsplit(parts._replace(query=rest)), transport


class SourceReader:
    """Reads one source in a daemon thread and hands each decoded frame to `sink`.

    `sink` and `on_decode` run on the reader thread: they must be thread-safe and quick.
    """

    def __init__(
        self,
        url: str,
        sink: Callable[[Frame], None],
        options: SourceOptions | None = None,
        on_decode: Callable[[float], None] | None = None,
    ) -> None:
        self.url = url
        self.kind = classify(url)
        options = options or SourceOptions()
        self._open_url = url
        if self.kind == "rtsp":
            self._open_url, transport = transport_in_url(url)
            if transport is not None:
                options = replace(options, transport=transport)
        self.options = options
        self._sink = sink
        self._on_decode = on_decode
        self._state = SourceState.CONNECTING
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"source {redact(url)}", daemon=True)
        self.last_error: str | None = None
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

    def _open(self) -> Any:
        o = self.options
        kwargs: dict[str, Any] = {"timeout": (o.open_timeout_s, o.read_timeout_s)}
        options: dict[str, str] = {}
        if self.kind in ("rtsp", "http"):
            options["fpsprobesize"] = "0"  # the rate is not needed: opens 0.9 s -> 0.3 s
        if self.kind == "rtsp":
            options["rtsp_transport"] = o.transport
        elif self.kind == "v4l2":
            kwargs["format"] = "v4l2"
        if options:
            kwargs["options"] = options
        return av.open(self._open_url, **kwargs)

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
                timed_out = self._timed_out(exc, time.monotonic() - attempt)
                self.last_error = self._describe(exc, timed_out)
                lasting = isinstance(exc, _LASTING_ERRORS) and not timed_out
                log.warning("source %s: %s", self.public_url, self.last_error)
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

    def _describe(self, exc: Exception, timed_out: bool) -> str:
        if timed_out:
            o = self.options
            return (
                f"timed out: nothing from the source within {o.open_timeout_s:g} s (open) "
                f"or {o.read_timeout_s:g} s (read)"
            )
        return f"{type(exc).__name__}: {exc}"

    def _streamed_for(self) -> float:
        """How long the connection that just ended delivered frames (a flapping camera
        that drops right after connecting keeps backing off)."""
        if self.connected_at is None or self.last_frame_ts is None:
            return 0.0
        return self.last_frame_ts - self.connected_at

    def _read_once(self) -> str:
        """One connection's life: "ended" (a file, done), "loop" (a file, again) or
        "disconnected"."""
        with self._open() as container:
            if not container.streams.video:
                raise SourceError("the source has no video stream")
            stream = container.streams.video[0]
            if stream.codec_context is None:
                raise SourceError("no decoder for the source's video codec")
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
                decoded = packet.decode()
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
        if not self._stop.is_set():
            self.last_error = "the stream ended (server closed the connection)"
        return "disconnected"

    def _capture_ts(self, av_frame: Any, realtime: int | None, now: float) -> float | None:
        """Wall-clock capture time from the stream (RTCP sender reports give RTSP its
        `start_time_realtime`: the time of pts 0), or None when it has none we trust."""
        if not realtime or realtime <= 0 or av_frame.time is None:
            return None
        capture = float(realtime / 1e6 + av_frame.time)
        return capture if abs(now - capture) <= self.options.max_clock_skew_s else None

    def _emit(self, av_frame: Any, realtime: int | None) -> None:
        now = time.time()
        capture = self._capture_ts(av_frame, realtime, now)
        frame = frame_from_av(av_frame, self._seq, now, capture)
        self._seq += 1
        self.frames += 1
        self.width, self.height = frame.width, frame.height
        if self._state is not SourceState.STREAMING:
            self.connected_at = now
        self.last_frame_ts = now
        self.last_capture_source = frame.capture_ts_source
        self.last_capture_lag_s = now - frame.capture_ts
        self._state = SourceState.STREAMING
        self.last_error = None
        self._sink(frame)
