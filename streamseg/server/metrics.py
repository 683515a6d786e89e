"""Prometheus metrics. Each server gets its own registry so several apps (tests)
never collide; every drop anywhere in the pipeline is counted here."""

from __future__ import annotations

import contextlib
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
TRACKER_STAGES = ("encoder", "memory_attention", "decoder", "memory_encoder", "postprocess")


class Metrics:
    def __init__(self) -> None:
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
        self.peers_active = Gauge("streamseg_peers_active", "Open WebRTC peers", registry=r)
        self.streams_active = Gauge(
            "streamseg_streams_active", "Live streams", ["kind"], registry=r
        )
        self.tracks_active = Gauge("streamseg_tracks_active", "Tracked objects", registry=r)
        self.requests_rejected = Counter(
            "streamseg_requests_rejected", "Requests refused with a 4xx", ["reason"], registry=r
        )
        self.model_info = Info("streamseg_model", "Model and backend in use", registry=r)
        self.batch_size = Histogram(
            "streamseg_inference_batch_size",
            "Frames encoded together",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16),
            registry=r,
        )

    def set_model_info(self, description: str, backend: str, device: str) -> None:
        self.model_info.info({"model": description, "backend": backend, "device": device})

    def count_received(self, stream_id: str) -> None:
        self.frames_received.labels(stream_id).inc()

    def count_drop(self, stream_id: str, where: str = "input_slot") -> None:
        self.frames_dropped.labels(stream_id, where).inc()

    def observe_step(self, out: StreamResult) -> None:
        """Called on the inference thread for every processed frame."""
        times = out.result.times.as_dict()
        for stage in TRACKER_STAGES:
            self.stage_seconds.labels(stage).observe(times[stage])
        self.stage_seconds.labels("slot_wait").observe(
            max(0.0, out.infer_start - out.frame.recv_ts)
        )
        self.stage_seconds.labels("tracker").observe(out.infer_end - out.infer_start)
        self.frames_processed.labels(out.stream_id).inc()

    def forget_stream(self, stream_id: str) -> None:
        """Drop a closed stream's labelled series so churn cannot grow /metrics."""
        for counter in (self.frames_received, self.frames_processed):
            with contextlib.suppress(KeyError):
                counter.remove(stream_id)
        for where in ("input_slot", "overlay", "data_channel", "websocket"):
            with contextlib.suppress(KeyError):
                self.frames_dropped.remove(stream_id, where)

    def render(self) -> bytes:
        return generate_latest(self.registry)
