"""Prometheus metrics. Each server gets its own registry so several apps (tests)
never collide; every drop anywhere in the pipeline is counted here."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from streamseg.pipeline.stream import StreamResult

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.033,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
TRACKER_STAGES = (
    "preprocess",
    "encoder",
    "memory_attention",
    "decoder",
    "memory_encoder",
    "postprocess",
)


class StageSamples:
    """Every stage time as `(wall time, seconds)`, for the benchmark: histograms keep
    only buckets, percentiles need the samples. Off unless a benchmark attaches one.

    Bound: `maxlen` samples per stage; policy: drop-oldest, counted in `dropped`."""

    def __init__(self, maxlen: int = 100_000) -> None:
        self.maxlen = maxlen
        self.dropped = 0
        self._by_stage: dict[str, deque[tuple[float, float]]] = {}

    def add(self, stage: str, seconds: float) -> None:
        samples = self._by_stage.get(stage)
        if samples is None:
            samples = self._by_stage.setdefault(stage, deque(maxlen=self.maxlen))
        if len(samples) == self.maxlen:
            self.dropped += 1
        samples.append((time.time(), seconds))

    def take(self) -> dict[str, list[tuple[float, float]]]:
        """Everything recorded since the last call (then forgotten)."""
        taken = {}
        for stage, samples in list(self._by_stage.items()):
            taken[stage] = [samples.popleft() for _ in range(len(samples))]
        return taken


class Metrics:
    def __init__(self) -> None:
        self.samples: StageSamples | None = None
        self.registry = CollectorRegistry()
        r = self.registry
        self.stage_seconds = Histogram(
            "streamseg_stage_seconds",
            "Time per frame in each pipeline stage",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.capture_to_sent = Histogram(
            "streamseg_capture_to_sent_seconds",
            "From frame capture (or receipt) to its result leaving the server",
            ["sink"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.frames_received = Counter(
            "streamseg_frames_received", "Frames taken in from sources", ["stream"], registry=r
        )
        self.frames_processed = Counter(
            "streamseg_frames_processed", "Frames run through the tracker", ["stream"], registry=r
        )
        self.frames_dropped = Counter(
            "streamseg_frames_dropped",
            "Frames or results replaced before use (latest-wins mailboxes)",
            ["stream", "where"],
            registry=r,
        )
        self.frames_skipped = Counter(
            "streamseg_frames_skipped",
            "Frames not offered to the model by choice (reason `interval`: the stream's "
            "inference interval); unlike drops they are expected, and still go out at "
            "source rate with masks carried forward",
            ["stream", "reason"],
            registry=r,
        )
        self.peers_active = Gauge("streamseg_peers_active", "Open WebRTC peers", registry=r)
        self.streams_active = Gauge(
            "streamseg_streams_active", "Live streams", ["kind"], registry=r
        )
        self.tracks_active = Gauge("streamseg_tracks_active", "Tracked objects", registry=r)
        self.requests_rejected = Counter(
            "streamseg_requests_rejected", "Requests refused with a 4xx", ["reason"], registry=r
        )
        self.model_info = Info("streamseg_model", "Model and backend in use", registry=r)
        self.streams_reaped = Counter(
            "streamseg_streams_reaped",
            "Streams the server closed on its own, by reason: `ended` (a camera whose "
            "source ended, after its retention time or to make room), `setup_timeout` (a "
            "WebRTC peer that never connected)",
            ["kind", "reason"],
            registry=r,
        )
        self.internal_errors = Counter(
            "streamseg_internal_errors",
            "Requests that failed unexpectedly (answered with code `internal`), by surface",
            ["surface"],
            registry=r,
        )
        # Streams whose labelled series may exist; guarded so a frame in flight on another
        # thread cannot re-create a series after `forget_stream`.
        self._series_lock = threading.Lock()
        self._live: dict[str, set[str]] = {}
        self.batch_size = Histogram(
            "streamseg_inference_batch_size",
            "Frames encoded together",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16),
            registry=r,
        )

    def set_model_info(self, description: str, backend: str, device: str) -> None:
        self.model_info.info({"model": description, "backend": backend, "device": device})

    def open_stream(self, stream_id: str) -> None:
        """Allow per-stream series for `stream_id` until `forget_stream`."""
        with self._series_lock:
            self._live.setdefault(stream_id, set())

    def count_received(self, stream_id: str) -> None:
        with self._series_lock:
            if stream_id in self._live:
                self.frames_received.labels(stream_id).inc()

    def count_drop(self, stream_id: str, where: str = "input_slot") -> None:
        with self._series_lock:
            wheres = self._live.get(stream_id)
            if wheres is not None:
                wheres.add(where)
                self.frames_dropped.labels(stream_id, where).inc()

    def count_skip(self, stream_id: str, reason: str = "interval") -> None:
        with self._series_lock:
            if stream_id in self._live:
                self.frames_skipped.labels(stream_id, reason).inc()

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Safe from any thread."""
        self.stage_seconds.labels(stage).observe(seconds)
        if self.samples is not None:
            self.samples.add(stage, seconds)

    def observe_sent(self, sink: str, capture_ts: float, sent_ts: float) -> None:
        self.capture_to_sent.labels(sink).observe(sent_ts - capture_ts)
        if self.samples is not None:
            self.samples.add(f"capture_to_sent:{sink}", sent_ts - capture_ts)

    def observe_step(self, out: StreamResult) -> None:
        """Called on the inference thread for every processed frame."""
        times = out.result.times.as_dict()
        for stage in TRACKER_STAGES:
            self.observe_stage(stage, times[stage])
        self.observe_stage("slot_wait", max(0.0, out.infer_start - out.frame.recv_ts))
        tracker = out.infer_end - out.infer_start
        # While the worker runs the other streams' frames of the same batch.
        own = sum(times[stage] for stage in TRACKER_STAGES)
        self.observe_stage("batch_wait", max(0.0, tracker - own))
        self.observe_stage("tracker", tracker)
        with self._series_lock:
            if out.stream_id in self._live:
                self.frames_processed.labels(out.stream_id).inc()

    def forget_stream(self, stream_id: str) -> None:
        """Drop a closed stream's labelled series so churn cannot grow /metrics; later
        counts for it (a step or frame already in flight) are ignored."""
        with self._series_lock:
            wheres = self._live.pop(stream_id, set())
            for counter in (self.frames_received, self.frames_processed):
                with contextlib.suppress(KeyError):
                    counter.remove(stream_id)
            for where in wheres:
                with contextlib.suppress(KeyError):
                    self.frames_dropped.remove(stream_id, where)
            with contextlib.suppress(KeyError):
                self.frames_skipped.remove(stream_id, "interval")

    def render(self) -> bytes:
        return generate_latest(self.registry)
