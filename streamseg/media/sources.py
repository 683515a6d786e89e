"""Camera and file sources read with PyAV in a thread of their own.

Each source runs an explicit state machine:

    connecting -> streaming -> (stalled) -> reconnecting -> connecting -> ...
                                                   \\-> stopped (on request, or a file ended)

A frozen server makes PyAV's read time out, a killed one ends the demux loop quietly;
both count as a disconnect and lead to a reconnect with exponential backoff and jitter.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import av

from streamseg.media.frame import Frame, frame_from_av

log = logging.getLogger(__name__)
SUPPORTED_SCHEMES = ("rtsp", "rtsps", "http", "https", "file")


class SourceState(StrEnum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    STOPPED = "stopped"


class SourceError(ValueError):
    """A source URL that can never work (scheme, missing file)."""


@dataclass(frozen=True, slots=True)
class SourceOptions:
    transport: str = "tcp"  # rtsp only: tcp | udp
    loop: bool = False  # files only: start again at the end
    realtime: bool = True  # files only: pace frames at their frame rate
    stall_timeout_s: float = 5.0  # no frame for this long -> stalled
    open_timeout_s: float = 3.0
    read_timeout_s: float = 3.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0


def classify(url: str) -> str:
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
            f"unsupported URL scheme {scheme!r}; use rtsp://, http(s)://, a file path "
            "or /dev/videoN"
        )
    if not parts.hostname:
        raise SourceError(f"URL {url!r} has no host")
    return "rtsp" if scheme.startswith("rtsp") else "http"


class SourceReader:
    """Reads one source in a daemon thread and hands each decoded frame to `sink`."""

    def __init__(
        self,
        url: str,
        sink: Callable[[Frame], None],
        options: SourceOptions | None = None,
        on_decode: Callable[[float], None] | None = None,
    ) -> None:
        self.url = url
        self.kind = classify(url)
        self.options = options or SourceOptions()
        self._sink = sink
        self._on_decode = on_decode
        self._state = SourceState.CONNECTING
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"source {url}", daemon=True)
        self.last_error: str | None = None
        self.last_frame_ts: float | None = None
        self.reconnects = 0
        self.frames = 0
        self.width: int | None = None
        self.height: int | None = None
        self._seq = 0

    @property
    def state(self) -> SourceState:
        state, last = self._state, self.last_frame_ts
        stalled = last is not None and time.time() - last > self.options.stall_timeout_s
        return SourceState.STALLED if state is SourceState.STREAMING and stalled else state

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Blocks until the reader thread ends (call it off the event loop)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._state = SourceState.STOPPED

    # ---- the thread ------------------------------------------------------------------

    def _open(self) -> Any:
        o = self.options
        kwargs: dict[str, Any] = {"timeout": (o.open_timeout_s, o.read_timeout_s)}
        if self.kind == "rtsp":
            kwargs["options"] = {"rtsp_transport": o.transport}
        elif self.kind == "v4l2":
            kwargs["format"] = "v4l2"
        return av.open(self.url, **kwargs)

    def _run(self) -> None:
        backoff = self.options.backoff_initial_s
        while not self._stop.is_set():
            self._state = SourceState.CONNECTING
            try:
                ending = self._read_once()
            except Exception as exc:  # PyAV raises many types; all mean "no stream now"
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("source %s: %s", self.url, self.last_error)
                ending = "disconnected"
            if self._stop.is_set() or ending == "ended":
                break
            if ending == "loop":
                continue
            if self.last_frame_ts is not None and time.time() - self.last_frame_ts < 2 * backoff:
                backoff = self.options.backoff_initial_s  # it was streaming: retry soon
            self._state = SourceState.RECONNECTING
            self.reconnects += 1
            delay = backoff * (0.5 + random.random())
            backoff = min(backoff * 2, self.options.backoff_max_s)
            self._stop.wait(delay)
        self._state = SourceState.STOPPED

    def _read_once(self) -> str:
        """One connection's life: "ended" (a file, done), "loop" (a file, again) or
        "disconnected"."""
        with self._open() as container:
            if not container.streams.video:
                raise SourceError("the source has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            realtime = container.start_time_realtime  # microseconds, when the stream has one
            pace = self.kind == "file" and self.options.realtime
            started = time.monotonic()
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
                    self._emit(av_frame, realtime)
            if self.kind == "file" and not self._stop.is_set():
                return "loop" if self.options.loop else "ended"
        if not self._stop.is_set():
            self.last_error = "the stream ended (server closed the connection)"
        return "disconnected"

    def _emit(self, av_frame: Any, realtime: int | None) -> None:
        now = time.time()
        capture = None
        if realtime and realtime > 0 and av_frame.time is not None:
            capture = realtime / 1e6 + av_frame.time
        frame = frame_from_av(av_frame, self._seq, now, capture)
        self._seq += 1
        self.frames += 1
        self.width, self.height = frame.width, frame.height
        self.last_frame_ts = now
        self._state = SourceState.STREAMING
        self.last_error = None
        self._sink(frame)
