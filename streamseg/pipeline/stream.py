"""One live stream: its input slot, its tracker, and the sinks its results fan out to.

Sources (WebRTC reader, PyAV reader thread) call `submit_frame` from any thread;
the inference worker takes the newest frame and calls `deliver` with the result,
which is handed to the event loop and offered to every sink's one-slot mailbox.

Interval inference (DeepStream's `interval`): a stream with `interval` N offers the
model a frame only once N frames have arrived since its last model frame; the frames in
between are skipped by choice (counted as `skipped`, not as drops) and still reach the
frame sinks, so the source-rate outputs carry the masks forward over them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from streamseg.media.frame import Frame
from streamseg.media.slot import LatestSlot
from streamseg.model.tracker import FrameResult, StreamTracker

if TYPE_CHECKING:
    from streamseg.pipeline.egress import SourceRateMasks

ResultSink = Callable[["StreamResult"], object]
FrameSink = Callable[[Frame], object]
_ids = itertools.count(1)
# Largest inference interval a client may ask for: at 30 fps one model frame a second.
MAX_INTERVAL = 30


def _weakly(session: StreamSession) -> Callable[[Frame], None]:
    """`session._dropped` without a strong reference to the session."""
    ref = weakref.ref(session)

    def dropped(frame: Frame) -> None:
        alive = ref()
        if alive is not None:
            alive._dropped(frame)

    return dropped


@dataclass(frozen=True, slots=True)
class StreamResult:
    stream_id: str
    frame: Frame
    result: FrameResult
    infer_start: float
    infer_end: float


@dataclass(slots=True)
class StreamCounters:
    received: int = 0
    processed: int = 0
    dropped: int = 0
    skipped: int = 0  # not offered to the model because of the stream's interval
    errors: int = 0
    last_error: str | None = None
    last_error_ts: float | None = None  # so a reader can tell an old error from a current one
    last_result_ts: float | None = None


@dataclass
class StreamSession:
    tracker: StreamTracker
    loop: asyncio.AbstractEventLoop
    kind: str = "webrtc"
    id: str = field(default_factory=lambda: f"s{next(_ids)}")
    on_drop: Callable[[str], None] | None = None
    on_receive: Callable[[str], None] | None = None
    interval: int = 1  # run the model on every `interval`-th frame at most
    on_skip: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.interval, bool) or not 1 <= self.interval <= MAX_INTERVAL:
            raise ValueError(f"interval must be a whole number from 1 to {MAX_INTERVAL}")
        # Bound 1, policy `latest`: a newer frame replaces an unprocessed one (counted).
        # The slot holds the session weakly: a bound method would make a cycle (session ->
        # slot -> session) that kept a closed stream's tracker tensors and frames until
        # the cyclic garbage collector ran, growing RSS under stream churn.
        self.frames: LatestSlot[Frame] = LatestSlot(on_drop=_weakly(self))
        self.counters = StreamCounters()
        self._sinks: dict[int, ResultSink] = {}
        self._sink_ids = itertools.count()
        self._waker: Callable[[], None] = lambda: None
        self._lock = threading.Lock()
        # Replaced, never mutated, so a producer thread can iterate it without a lock.
        self._frame_sinks: tuple[tuple[int, FrameSink], ...] = ()
        self._source_rate: SourceRateMasks | None = None
        # The interval gate: frames since the last model frame (None before the first,
        # so the first frame is always due) and when the due frame started waiting.
        # Its own lock, because a put under `_lock` would deadlock in `_dropped`.
        self._gate = threading.Lock()
        self._since_model: int | None = None
        self._waiting_since: float | None = None
        self.closed = False
        # The newest frame received (model or not): prompts may name frames up to it.
        self.newest_seq: int | None = None

    # ---- producer side (any thread) -------------------------------------------------

    def bind_waker(self, waker: Callable[[], None]) -> None:
        self._waker = waker

    def submit_frame(self, frame: Frame) -> None:
        if self.closed:
            return
        with self._lock:
            self.counters.received += 1
        self.newest_seq = frame.seq  # before any sink: a frame shown is a frame known
        if self.on_receive is not None:
            self.on_receive(self.id)
        for _, sink in self._frame_sinks:
            sink(frame)
        with self._gate:
            if self._since_model is not None:
                self._since_model += 1
            due = self._since_model is None or self._since_model >= self.interval
            if due:
                if self._waiting_since is None:
                    self._waiting_since = time.monotonic()
                self.frames.put(frame)
        if not due:
            self._skipped()
            return
        self._waker()

    def _skipped(self) -> None:
        with self._lock:
            self.counters.skipped += 1
        if self.on_skip is not None:
            self.on_skip(self.id)

    def _dropped(self, frame: Frame) -> None:
        with self._lock:
            self.counters.dropped += 1
        if self.on_drop is not None:
            self.on_drop(self.id)

    # ---- worker side ----------------------------------------------------------------

    @property
    def has_frame(self) -> bool:
        return not self.closed and self.frames.has_item

    @property
    def waiting_since(self) -> float | None:
        """Monotonic time since which a frame has been due for the model (None: none
        is); the scheduler serves the stream waiting longest first."""
        return self._waiting_since

    def take_frame(self) -> Frame | None:
        """The due frame for the model, if any; it becomes the last model frame."""
        if self.closed:
            return None
        with self._gate:
            frame = self.frames.take_nowait()
            if frame is not None:
                self._since_model = 0
                self._waiting_since = None
        return frame

    def record_error(self, exc: BaseException) -> None:
        with self._lock:
            self.counters.errors += 1
            self.counters.last_error = f"{type(exc).__name__}: {exc}"
            self.counters.last_error_ts = time.time()

    def deliver(self, out: StreamResult) -> None:
        """Called on the inference thread; hands the result to the event loop."""
        with self._lock:
            self.counters.processed += 1
            self.counters.last_result_ts = time.time()
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self.loop.call_soon_threadsafe(self._publish, out)

    # ---- loop side ------------------------------------------------------------------

    def add_sink(self, sink: ResultSink) -> Callable[[], None]:
        """Register a callback run on the loop for every result; returns its remover.
        A sink must only store the result (e.g. in its own LatestSlot), never block."""
        key = next(self._sink_ids)
        self._sinks[key] = sink
        return lambda: self._sinks.pop(key, None) and None

    def add_frame_sink(self, sink: FrameSink) -> Callable[[], None]:
        """Register a callback run on the source's thread for every incoming frame (the
        source-rate path); it must be quick and must not block. Returns its remover."""
        key = next(self._sink_ids)
        with self._lock:
            self._frame_sinks = (*self._frame_sinks, (key, sink))

        def remove() -> None:
            with self._lock:
                self._frame_sinks = tuple(s for s in self._frame_sinks if s[0] != key)

        return remove

    @property
    def source_rate(self) -> SourceRateMasks | None:
        """The source-rate placer if any consumer started it."""
        return self._source_rate

    def source_rate_masks(self) -> SourceRateMasks:
        """The stream's shared placer of the newest masks on every incoming frame,
        started on first use (before it, frames cost nothing extra)."""
        if self._source_rate is None:
            from streamseg.pipeline.egress import SourceRateMasks

            placer = SourceRateMasks()
            self.add_frame_sink(placer.observe)
            self.add_sink(placer.on_result)
            self._source_rate = placer
        return self._source_rate

    def _publish(self, out: StreamResult) -> None:
        for sink in list(self._sinks.values()):
            sink(out)

    def close(self) -> None:
        self.closed = True
        self._sinks.clear()
        self._frame_sinks = ()
        self.frames.close()
