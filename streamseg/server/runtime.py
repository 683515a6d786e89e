"""Everything the routes share: settings, the loaded model, the inference worker,
live streams and peers, metrics. Created by the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamseg.assembly import LoadedModel, load_model
from streamseg.backends.compiled import CompiledTorchGraphs
from streamseg.backends.trt_build import BankLimits
from streamseg.config import Settings
from streamseg.model.segmenter import ImageSegmenter
from streamseg.model.tracker import StreamTracker, TrackerSettings
from streamseg.pipeline.stream import StreamSession
from streamseg.pipeline.worker import InferenceWorker
from streamseg.server.embedding_cache import EmbeddingCache
from streamseg.server.memory import release_freed_memory
from streamseg.server.metrics import Metrics

log = logging.getLogger(__name__)
Closer = Callable[[], Awaitable[None]]


class LimitReachedError(RuntimeError):
    """A configured limit (peers, streams) is reached; maps to HTTP 429."""


class StreamExistsError(ValueError):
    """A user-chosen stream id that is already in use; maps to HTTP 409."""


@dataclass
class Runtime:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    model: LoadedModel | None = None
    worker: InferenceWorker | None = None
    ready: bool = False
    draining: bool = False  # shutting down: /readyz answers 503 while requests still run
    request_stop: Callable[[], None] | None = None  # as a stop signal would (set by the server)
    started_at: float = field(default_factory=time.time)
    # New for every start: lets clients tell a restarted server from a reconnect.
    boot_id: str = field(default_factory=lambda: secrets.token_hex(8))
    shutting_down: bool = False  # websocket feeds are being closed with 1012
    streams: dict[str, StreamSession] = field(default_factory=dict)
    closers: dict[str, Closer] = field(default_factory=dict)
    _media_executor: ThreadPoolExecutor | None = None
    # id -> cameras.CameraStream (typed loosely to keep this module import-free)
    cameras: dict[str, Any] = field(default_factory=dict)
    segmenter: ImageSegmenter | None = None
    embeddings: EmbeddingCache | None = None
    start_error: str | None = None
    model_step_s: float | None = None
    # Frees a slot held by an ended stream when the limit is reached (server/lifecycle.py).
    make_room: Callable[[], None] | None = None

    async def start(self) -> None:
        """Load and warm up the model off the loop, then start the worker; a failure is
        kept in `start_error` for whoever started the server in-process."""
        try:
            await self._start()
        except Exception as exc:
            self.start_error = f"{type(exc).__name__}: {exc}"
            raise

    async def _start(self) -> None:
        s = self.settings
        if s.ice_hosts:
            from streamseg.media.webrtc import restrict_ice_hosts

            restrict_ice_hosts(s.ice_hosts)
        if s.threads:
            import torch

            torch.set_num_threads(s.threads)
        device = s.resolved_device()
        self.model = await asyncio.to_thread(
            load_model,
            s.model,
            weights=s.weights,
            image_size=s.image_size or cpu_default_image_size(s.model, device),
            device=device,
            seed=s.seed,
            backend=s.backend,
            precision=s.precision,
            limits=plan_limits(s),
            compile=s.compile,
        )
        self.metrics.set_model_info(self.model.description, s.backend, str(self.model.device))
        log.info("model ready: %s", self.model.description)
        self.model_step_s = await asyncio.to_thread(self._warm_up)
        log.warning("%s", what_to_expect(self.model.description, self.model_step_s))
        self.segmenter = ImageSegmenter(self.model.graphs, s.dtype)
        self.embeddings = EmbeddingCache(
            s.image_cache_size,
            s.image_cache_bytes,
            s.image_cache_ttl_s,
            total_bytes=s.image_cache_total_bytes,
        )
        self.worker = InferenceWorker(
            self.model.graphs,
            max_batch=s.max_batch,
            on_step=self.metrics.observe_step,
            max_rest_jobs=s.rest_queue,
            rest_share=s.rest_share,
            nice=s.inference_nice if self.model.device.type == "cpu" else 0,
        )
        self.worker.start()
        self.ready = True

    def _warm_up(self) -> float:
        """Run every graph once; returns the time of one tracking step after warm-up,
        so the server can say what speed to expect. Compiled graphs are compiled here
        for every batch the worker may send, before the server reports ready."""
        assert self.model is not None
        graphs = self.model.graphs
        if isinstance(graphs, CompiledTorchGraphs):
            log.warning("torch.compile: compiling the image encoder and memory attention")
            with self.new_tracker().inference():  # the autocast the steps run under
                spent = graphs.warm_up(self.settings.max_batch)
            log.warning("torch.compile: %d graphs in %.0f s", sum(graphs.compiles.values()), spent)
        tracker = self.new_tracker()
        frame = np.zeros((64, 64, 3), np.uint8)
        tracker.step(frame, seq=0)
        tracker.add_prompt(0, points=[[32, 32]], labels=[1])
        tracker.step(frame, seq=1)
        start = time.perf_counter()
        tracker.step(frame, seq=2)
        return time.perf_counter() - start

    def new_tracker(self) -> StreamTracker:
        assert self.model is not None
        s = self.settings
        return StreamTracker(
            self.model.graphs,
            TrackerSettings(
                max_tracks=s.max_tracks,
                history=s.prompt_history,
                max_frame_side=s.max_frame_side,
                autocast_dtype=s.dtype,
            ),
        )

    def open_stream(
        self, kind: str, interval: int = 1, stream_id: str | None = None
    ) -> StreamSession:
        """A new stream on the worker; `interval` N runs the model on every Nth frame.
        `stream_id`: a user-chosen id (checked by the caller), else the next `s<N>`."""
        if self.worker is None or not self.ready:
            raise LimitReachedError("the model is still loading; retry when /readyz is 200")
        if len(self.streams) >= self.settings.max_streams and self.make_room is not None:
            self.make_room()
        if len(self.streams) >= self.settings.max_streams:
            raise LimitReachedError(f"at most {self.settings.max_streams} streams at once")
        if stream_id is not None and stream_id in self.streams:
            raise StreamExistsError(f"a stream {stream_id!r} exists already")
        stream = StreamSession(
            tracker=self.new_tracker(),
            loop=asyncio.get_running_loop(),
            kind=kind,
            on_drop=self.metrics.count_drop,
            on_receive=self.metrics.count_received,
            interval=interval,
            on_skip=self.metrics.count_skip,
            **({} if stream_id is None else {"id": stream_id}),
        )
        self.metrics.open_stream(stream.id)
        self.streams[stream.id] = stream
        self.worker.attach(stream)
        self.metrics.streams_active.labels(kind).inc()
        return stream

    def media_executor(self) -> ThreadPoolExecutor:
        """Colour conversion, overlay drawing and mask encoding, off the event loop."""
        if self._media_executor is None:
            self._media_executor = ThreadPoolExecutor(2, thread_name_prefix="streamseg-media")
        return self._media_executor

    def count_tracks(self) -> int:
        return sum(len(s.tracker.track_ids) for s in self.streams.values())

    def close_stream(self, stream_id: str) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        if self.worker is not None:
            self.worker.detach(stream_id)
        stream.close()
        self.metrics.streams_active.labels(stream.kind).dec()
        self.metrics.forget_stream(stream_id)
        self.metrics.tracks_active.set(self.count_tracks())
        release_freed_memory()

    async def stop(self) -> None:
        self.draining = True
        self.ready = False
        for name, closer in list(self.closers.items()):
            try:
                await asyncio.wait_for(closer(), 5)
            except Exception:
                log.exception("closing %s failed", name)
        self.closers.clear()
        for stream_id in list(self.streams):
            self.close_stream(stream_id)
        if self.worker is not None:
            await asyncio.to_thread(self.worker.stop)
        if self._media_executor is not None:
            self._media_executor.shutdown(wait=False, cancel_futures=True)


def plan_limits(settings: Settings) -> BankLimits:
    """The largest batches this server sends the model (TensorRT plans' profiles)."""
    return BankLimits.for_server(
        settings.max_tracks, settings.max_prompts_per_request, settings.max_batch
    )


# Without a GPU, SAM 2.1 at 1024 px takes seconds per frame here (README, benchmarks);
# 512 px keeps masks about a second old. An explicit --image-size always wins.
CPU_IMAGE_SIZE = 512


def cpu_default_image_size(model: str, device: str) -> int | None:
    """The image size to use when none was asked for: the variant's own on a GPU, at
    most CPU_IMAGE_SIZE on a CPU."""
    if device != "cpu":
        return None
    from streamseg.model.registry import get_variant

    return min(get_variant(model).image_size, CPU_IMAGE_SIZE)


def what_to_expect(description: str, step_s: float) -> str:
    """One line for the operator: how fast the model is and what viewers will see."""
    return (
        f"{description}: one model step takes about {1000 * step_s:.0f} ms "
        f"(~{1 / max(step_s, 1e-6):.1f} model fps for one stream and track). Video comes "
        f"back at the camera's rate; between model steps masks are carried forward, "
        f"so they are up to ~{1000 * step_s:.0f} ms old (see the HUD's mask age)."
    )
