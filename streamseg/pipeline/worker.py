"""The one inference thread: every model call in the server happens here.

It wakes when a stream has a fresh frame or a job is queued, runs queued jobs
(prompts) first so a click lands before the next frame, and a REST segmentation when
its time share allows (their own queue, so a REST flood cannot starve live streams),
then takes the newest frame of each stream whose frame is due (its inference interval
reached; longest-waiting first, up to `max_batch`), encodes those images in one
batch and steps each stream's tracker. Results go back to the event loop with
`call_soon_threadsafe`; the loop never waits on this thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from streamseg.backends.base import SamGraphs
from streamseg.model.tracker import StageClock, StageTimes
from streamseg.pipeline.stream import StreamResult, StreamSession

log = logging.getLogger(__name__)
T = TypeVar("T")
# No stream batch for this long: REST jobs run without waiting for their share.
STREAMS_IDLE_S = 0.5


class WorkerBusyError(RuntimeError):
    """The job queue is full (policy `reject`: new work is refused, never queued)."""


class RestQueueFullError(WorkerBusyError):
    """The REST inference queue is full (policy `reject`; the route answers 429)."""


class WorkerStoppedError(RuntimeError):
    pass


@dataclass(slots=True)
class _Job:
    fn: Callable[[], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def _settle(job: _Job, value: Any = None, error: BaseException | None = None) -> None:
    def apply() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(value)

    with contextlib.suppress(RuntimeError):  # the loop is closed; nobody waits any more
        job.loop.call_soon_threadsafe(apply)


class InferenceWorker:
    def __init__(
        self,
        graphs: SamGraphs,
        *,
        max_batch: int = 8,
        max_jobs: int = 64,
        on_step: Callable[[StreamResult], None] | None = None,
        max_rest_jobs: int = 8,
        nice: int = 0,
        rest_share: float = 0.25,
    ) -> None:
        self.graphs = graphs
        self.nice = nice
        self.max_batch = max_batch
        self._on_step = on_step
        self._cond = threading.Condition()
        self._streams: dict[str, StreamSession] = {}
        # Bound: max_jobs; policy `reject` (submit raises WorkerBusyError when full).
        self._jobs: deque[_Job] = deque()
        self._max_jobs = max_jobs
        # REST segmentations, apart so they cannot starve live streams: at most one runs
        # per round, within its time share. Bound max_rest_jobs, policy `reject`.
        self._rest_jobs: deque[_Job] = deque()
        self._max_rest_jobs = max_rest_jobs
        # While streams are being served, REST jobs get at most `rest_share` of this
        # thread's time: after a REST job of t s the next waits t * (1 - share) / share.
        # One job per round was not enough: a REST job costs more than a stream step, and
        # a 10 fps stream fell to 2.7 results/s under a flood.
        self.rest_share = min(max(rest_share, 0.01), 1.0)
        self._rest_not_before = 0.0
        self._last_batch = -STREAMS_IDLE_S
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0
        self.batches = 0
        self.frames_encoded = 0

    # ---- lifecycle (called from the loop) ------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run_on_device, name="streamseg-inference", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            jobs = [*self._jobs, *self._rest_jobs]
            self._jobs.clear()
            self._rest_jobs.clear()
            self._cond.notify_all()
        for job in jobs:
            _settle(job, error=WorkerStoppedError("server is shutting down"))
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- streams -------------------------------------------------------------------

    def attach(self, stream: StreamSession) -> None:
        with self._cond:
            self._streams[stream.id] = stream
        stream.bind_waker(self.wake)

    def detach(self, stream_id: str) -> None:
        with self._cond:
            self._streams.pop(stream_id, None)

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # ---- jobs ----------------------------------------------------------------------

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run `fn` on the inference thread; await the returned future on the loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._cond:
            if self._stopping:
                raise WorkerStoppedError("server is shutting down")
            if len(self._jobs) >= self._max_jobs:
                raise WorkerBusyError(f"{self._max_jobs} inference jobs already queued")
            self._jobs.append(_Job(fn, future, loop))
            self._cond.notify()
        return future

    def submit_rest(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """`submit` for REST inference: its own bounded queue, served one job per round
        so streams waiting for the model get a batch between any two REST jobs."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._cond:
            if self._stopping:
                raise WorkerStoppedError("server is shutting down")
            if len(self._rest_jobs) >= self._max_rest_jobs:
                raise RestQueueFullError(f"{self._max_rest_jobs} REST jobs already queued")
            self._rest_jobs.append(_Job(fn, future, loop))
            self._cond.notify()
        return future

    @property
    def rest_queued(self) -> int:
        return len(self._rest_jobs)

    # ---- the thread ----------------------------------------------------------------

    def _rest_ready(self, now: float) -> bool:
        """A REST job may run now: its share allows it, or no stream was served lately."""
        if not self._rest_jobs:
            return False
        return now >= self._rest_not_before or now - self._last_batch > STREAMS_IDLE_S

    def _rest_wait(self, now: float) -> float | None:
        """Seconds until a held-back REST job may run (None: none is held back)."""
        if not self._rest_jobs:
            return None
        return max(0.0, min(self._rest_not_before, self._last_batch + STREAMS_IDLE_S) - now)

    def _has_work(self) -> bool:
        if self._jobs or self._rest_ready(time.monotonic()):
            return True
        return any(s.has_frame for s in self._streams.values())

    def _run_on_device(self) -> None:
        """The thread's body: CUDA calls made here (kernels, TensorRT launches, timing
        events) go to the model's device, not device 0."""
        select_device(self.graphs.device)
        lower_priority(self.nice)
        self._run()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._has_work():
                    self._cond.wait(self._rest_wait(time.monotonic()))
                if self._stopping:
                    return
                jobs = list(self._jobs)
                self._jobs.clear()
                rest = self._rest_jobs.popleft() if self._rest_ready(time.monotonic()) else None
                streams = list(self._streams.values())
            for job in jobs:
                self._run_job(job)
            if rest is not None:
                start = time.monotonic()
                self._run_job(rest)
                spent = time.monotonic() - start
                self._rest_not_before = start + spent / self.rest_share
            taken = [(s, f) for s in self._due(streams) if (f := s.take_frame()) is not None]
            taken = [(s, f) for s, f in taken if self._acceptable(s, f)]
            if taken:
                self._step_batch(taken)
                self._last_batch = time.monotonic()

    def _due(self, streams: list[StreamSession]) -> list[StreamSession]:
        """The next batch: streams with a frame due (their interval reached), the one
        waiting longest first, so streams with different intervals share the model
        fairly; the rest are served next round, with their then newest frame."""
        due = [s for s in streams if s.has_frame]
        due.sort(key=lambda s: s.waiting_since or 0.0)
        return due[: self.max_batch]

    @staticmethod
    def _acceptable(stream: StreamSession, frame: Any) -> bool:
        """Check a frame before it joins a batch, so one bad frame cannot sink the others."""
        try:
            stream.tracker.validate_frame(frame.image, frame.seq)
        except Exception as exc:
            stream.record_error(exc)
            log.warning("stream %s: frame %s rejected: %s", stream.id, frame.seq, exc)
            return False
        return True

    def _run_job(self, job: _Job) -> None:
        if job.future.cancelled():  # its client is gone: skip the model work
            return
        try:
            value = job.fn()
        except Exception as exc:  # the job's caller decides what an error means
            _settle(job, error=exc)
        else:
            _settle(job, value)

    def _step_batch(self, taken: list[tuple[StreamSession, Any]]) -> None:
        infer_start = time.time()
        clock = StageClock(StageTimes(), self.graphs.device)
        try:
            # The trackers' own context: no autograd, and the configured CUDA autocast.
            with taken[0][0].tracker.inference():
                with clock.stage("preprocess"):
                    images = torch.cat([s.tracker.preprocess(f.image) for s, f in taken])
                with clock.stage("encoder"):
                    features = self.graphs.encode_image(images)
        except Exception:
            log.exception("image encoder failed for a batch of %d frames", len(taken))
            return
        self.batches += 1
        self.frames_encoded += len(taken)
        for i, (stream, frame) in enumerate(taken):
            try:
                result = stream.tracker.step_encoded(
                    features.select(i), frame.seq, frame.width, frame.height, clock, len(taken)
                )
            except Exception as exc:
                stream.record_error(exc)
                log.warning("stream %s: frame %s rejected: %s", stream.id, frame.seq, exc)
                continue
            self.steps += 1
            out = StreamResult(stream.id, frame, result, infer_start, time.time())
            if self._on_step is not None:
                self._on_step(out)
            stream.deliver(out)


def select_device(device: torch.device) -> None:
    """Make `device` the calling thread's current CUDA device (no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


def lower_priority(nice: int) -> None:
    """Give the calling thread, and the OpenMP threads it starts for torch, a lower CPU
    priority, so decoding and the video going back out are not starved by the model
    on a busy CPU (the model only gets slower, the video stays live). Linux only."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as exc:
        log.warning("could not lower the inference thread's priority: %s", exc)
