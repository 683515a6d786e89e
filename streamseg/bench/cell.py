"""One benchmark cell: the real server on 127.0.0.1, `streams` camera streams reading
the same source through PyAV (paced like a live camera, looping; the model on every
`interval`-th frame), `tracks` box prompts per stream, one real websocket client per
stream taking every mask message, and one browser viewer per stream (`bench/viewer.py`:
the server's WebRTC overlay at source rate, pulled and VP8-encoded as aiortc does).

Stage times are the server's own per-frame samples (`Metrics.samples`), the figures
behind `/metrics` without the histogram buckets; rates and drops are read through the
REST API as any client would. Warm-up (model start, first results after the prompts)
is excluded; each run is a separate measured window on the same server."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import websockets

from streamseg.bench.spec import GENERATED, CellSpec
from streamseg.bench.stats import SOURCE_RATE_STAGES, STAGES, percentiles_ms, spread, thin
from streamseg.bench.viewer import Outgoing, SourceRateViewers
from streamseg.media.synthetic import shape_boxes, write_h264
from streamseg.protocol.messages import decode_frame_header
from streamseg.server.metrics import StageSamples

Progress = Callable[[float], None]  # seconds of planned work done so far
MIN_RESULTS_PER_RUN = 3
LATENCY_POINTS = 600
GENERATED_CLIP_S = 4
EGRESS_REPEAT = 60
START_TIMEOUT_S = 3600.0


class CellError(RuntimeError):
    """The cell could not be measured (server refused the source, no results, ...)."""


def prompt_boxes(count: int, width: int, height: int) -> list[list[int]]:
    """The generated scene's shapes first, then a grid of boxes over the frame."""
    boxes = [list(b) for b in shape_boxes(0, height, width)]
    side = max(2, int(count**0.5) + 1)
    for i in range(max(0, count - len(boxes))):
        col, row = i % side, (i // side) % side
        x0, y0 = col * width // side, row * height // side
        boxes.append([x0 + 2, y0 + 2, x0 + width // side - 2, y0 + height // side - 2])
    return boxes[:count]


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class _Feed:
    """A websocket client that keeps the arrival of every message."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"}
        self.arrivals: list[tuple[float, float]] = []  # (received, captured)
        self.error: str | None = None

    async def run(self) -> None:
        try:
            async with websockets.connect(
                self.url, additional_headers=self.headers, compression=None, max_size=2**26
            ) as ws:
                await ws.recv()  # hello
                async for data in ws:
                    received = time.time()
                    if isinstance(data, str):
                        continue
                    # Masks stay encoded: this client shares the server's process.
                    captured = decode_frame_header(data).times.capture_ts
                    self.arrivals.append((received, captured))
        except (OSError, websockets.ConnectionClosed) as exc:
            self.error = str(exc)

    def take(self) -> list[tuple[float, float]]:
        taken, self.arrivals = self.arrivals, []
        return taken


async def _counters(http: httpx.AsyncClient, ids: list[str]) -> dict[str, int]:
    totals = {
        "frames_received": 0,
        "frames_processed": 0,
        "frames_dropped": 0,
        "frames_skipped": 0,
        "websocket_drops": 0,
    }
    for stream_id in ids:
        described = (await http.get(f"/v1/streams/{stream_id}")).json()
        for key in totals:
            totals[key] += int(described[key])
    return totals


async def _open_streams(http: httpx.AsyncClient, spec: CellSpec, source: str) -> list[str]:
    ids = []
    for i in range(spec.streams):
        r = await http.post(
            "/v1/streams",
            json={
                "url": source,
                "name": f"bench-{i}",
                "options": {"loop": True, "realtime": True, "interval": spec.interval},
            },
        )
        if r.status_code != 201:
            raise CellError(f"the server refused the source: {r.status_code} {r.text}")
        ids.append(r.json()["id"])
    return ids


async def _prompt(http: httpx.AsyncClient, spec: CellSpec, ids: list[str]) -> None:
    deadline = time.monotonic() + 120
    for stream_id in ids:
        while True:
            described = (await http.get(f"/v1/streams/{stream_id}")).json()
            if described["frames_processed"] > 0:
                break
            if time.monotonic() > deadline:
                raise CellError(f"no frame processed in 120 s: {described['last_error']}")
            await asyncio.sleep(0.1)
        width, height = described["width"], described["height"]
        for box in prompt_boxes(spec.tracks, width, height):
            r = await http.post(
                f"/v1/streams/{stream_id}/prompts", json={"type": "prompt", "box": box}
            )
            if r.status_code != 200:
                raise CellError(f"prompt refused: {r.status_code} {r.text}")


async def _wait_for_results(feeds: list[_Feed], count: int, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while any(len(f.arrivals) < count for f in feeds):
        if time.monotonic() > deadline:
            raise CellError(f"fewer than {count} results per stream in {limit_s:.0f} s")
        await asyncio.sleep(0.05)


async def _measure(
    url: str, spec: CellSpec, source: str, runtime: Any, progress: Progress
) -> dict[str, Any]:
    from streamseg.server.background import server_token

    samples = StageSamples()
    token = server_token(runtime)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=headers) as http:
        ids = await _open_streams(http, spec, source)
        await _prompt(http, spec, ids)
        ws_base = url.replace("http://", "ws://", 1)
        feeds = [_Feed(f"{ws_base}/v1/streams/{i}/masks?encoding=rle", token) for i in ids]
        tasks = [asyncio.ensure_future(f.run()) for f in feeds]
        viewers = SourceRateViewers(runtime, [runtime.streams[i] for i in ids])
        try:
            await viewers.start()
            started = time.monotonic()
            await asyncio.sleep(spec.warmup_s)
            await _wait_for_results(feeds, 2, 300)
            warmup_s = time.monotonic() - started
            progress(spec.warmup_s)
            runtime.metrics.samples = samples
            for feed in feeds:
                feed.take()
            viewers.take()
            runs = [
                await _run_once(http, spec, ids, feeds, viewers, samples, progress, k)
                for k in range(spec.runs)
            ]
        finally:
            runtime.metrics.samples = None
            await viewers.stop()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    errors = [f.error for f in feeds if f.error]
    if errors:
        raise CellError(f"websocket client failed: {errors[0]}")
    return {
        "warmup_s": warmup_s,
        "runs": runs,
        "samples_dropped": samples.dropped + viewers.dropped_records,
    }


async def _run_once(
    http: httpx.AsyncClient,
    spec: CellSpec,
    ids: list[str],
    feeds: list[_Feed],
    viewers: SourceRateViewers,
    samples: StageSamples,
    progress: Progress,
    index: int,
) -> dict[str, Any]:
    before = await _counters(http, ids)
    samples.take()
    viewers.take()
    start = time.time()
    end_planned = start + spec.seconds
    while time.time() < end_planned:
        await asyncio.sleep(min(0.5, end_planned - time.time()))
        progress(spec.warmup_s + index * spec.seconds + (time.time() - start))
    await _wait_for_results(feeds, MIN_RESULTS_PER_RUN, 600)  # a run holds real results
    after = await _counters(http, ids)
    end = time.time()
    return {
        "start": start,
        "seconds": end - start,
        "counters": {k: after[k] - before[k] for k in after},
        "stages": samples.take(),
        "arrivals": [f.take() for f in feeds],
        "video": viewers.take(),
    }


def delivery_rate(received: list[float]) -> float:
    """Results per second one client got: intervals between arrivals, so a short run
    is not rounded to whole results per window."""
    if len(received) < 2 or received[-1] <= received[0]:
        raise CellError("fewer than two results arrived in a run")
    return (len(received) - 1) / (received[-1] - received[0])


def _source_rate(
    spec: CellSpec, runs: list[dict[str, Any]], stage_seconds: dict[str, list[float]]
) -> dict[str, Any]:
    """What the browser viewers got: video frames out per second, frame in -> overlay
    handed to the encoder, the age of the masks drawn, and the egress stages."""
    fps: list[float] = []
    in_to_out: list[float] = []
    ages_s: list[float] = []
    encode_s: list[float] = []
    frames_out = drops = 0
    for run in runs:
        fps.append(sum(delivery_rate([o.sent_ts for o in v["outgoing"]]) for v in run["video"]))
        for viewer in run["video"]:
            outgoing: list[Outgoing] = viewer["outgoing"]
            in_to_out.extend(o.sent_ts - o.recv_ts for o in outgoing)
            ages_s.extend(age / 1000 for o in outgoing for age in o.ages_ms)
            encode_s.extend(viewer["encode_s"])
            frames_out += len(outgoing)
            drops += viewer["drops"]
    stages = {s: stage_seconds[s] for s in SOURCE_RATE_STAGES if stage_seconds.get(s)}
    if encode_s:
        stages["video_encode"] = encode_s
    return {
        "video_fps": spread(fps),
        "video_fps_per_stream": spread([f / spec.streams for f in fps]),
        "in_to_out_ms": percentiles_ms(in_to_out),
        "mask_age_ms": percentiles_ms(ages_s) if ages_s else None,
        "stages_ms": {s: percentiles_ms(v) for s, v in stages.items()},
        "frames_out": frames_out,
        "drops": drops,
        "drop_rate": drops / (frames_out + drops) if frames_out + drops else 0.0,
    }


def _summarise(spec: CellSpec, measured: dict[str, Any]) -> dict[str, Any]:
    runs = measured["runs"]
    stage_seconds: dict[str, list[float]] = {}
    latency: list[tuple[float, float]] = []
    received: list[float] = []
    fps, latency_p50 = [], []
    totals = dict.fromkeys(runs[0]["counters"], 0)
    t0 = runs[0]["start"]
    for run in runs:
        for stage, points in run["stages"].items():
            stage_seconds.setdefault(stage, []).extend(v for _, v in points)
        sent = run["stages"].get("capture_to_sent:websocket", [])
        latency.extend((t - t0, v) for t, v in sent)
        received.extend(r - c for feed in run["arrivals"] for r, c in feed)
        fps.append(sum(delivery_rate([r for r, _ in feed]) for feed in run["arrivals"]))
        if sent:
            latency_p50.append(percentiles_ms([v for _, v in sent])["p50"])
        for key, value in run["counters"].items():
            totals[key] += value
    whole = [v for _, v in latency]
    if not whole:
        raise CellError("no result reached the websocket clients while measuring")
    frames_in = totals["frames_received"]
    return {
        "fps": spread(fps),
        "fps_per_stream": spread([f / spec.streams for f in fps]),
        "capture_to_sent_ms": percentiles_ms(whole),
        "capture_to_sent_p50_ms": spread(latency_p50),
        "capture_to_received_ms": percentiles_ms(received),
        "stages_ms": {s: percentiles_ms(stage_seconds[s]) for s in STAGES if stage_seconds.get(s)},
        "tracker_ms": percentiles_ms(stage_seconds["tracker"]),
        "frames": totals,
        "drop_rate": totals["frames_dropped"] / frames_in if frames_in else 0.0,
        "measured_s": sum(r["seconds"] for r in runs),
        "warmup_s": measured["warmup_s"],
        "latency_series": [
            [round(t, 3), round(v * 1000, 2)] for t, v in thin(latency, LATENCY_POINTS)
        ],
        "samples_dropped": measured["samples_dropped"],
        "source_rate": _source_rate(spec, runs, stage_seconds),
    }


def _media_root(source: str, tmp: str) -> str:
    """The folder of a file source (so the source policy lets the server read it)."""
    if "://" in source and not source.startswith("file://"):
        return tmp
    path = Path(source.removeprefix("file://")).resolve()
    return str(path.parent)


def run_cell(spec: CellSpec, progress: Progress) -> dict[str, Any]:
    import torch

    from streamseg.server.background import running_server

    if spec.threads:
        torch.set_num_threads(spec.threads)
    with tempfile.TemporaryDirectory(prefix="streamseg-bench-") as tmp:
        source = spec.source
        if source == GENERATED:
            source = str(Path(tmp) / "scene.mp4")
            write_h264(
                source,
                spec.frame_width,
                spec.frame_height,
                GENERATED_CLIP_S * spec.source_fps,
                spec.source_fps,
            )
        overrides: dict[str, object] = {
            "model": spec.model,
            "weights": spec.weights,
            "image_size": spec.image_size,
            "backend": spec.backend,
            "device": spec.device,
            "dtype": spec.dtype,
            "threads": spec.threads,
            "max_streams": max(16, spec.streams),
            "max_tracks": max(16, spec.tracks),
            # The benchmark's sources are the operator's own: a file (its folder is the
            # media root) or a URL, possibly a test camera on this host.
            "source_allow_loopback": True,
            "source_media_root": _media_root(source, tmp),
        }
        cuda = torch.cuda.is_available() and spec.device != "cpu"
        # Start-up may download weights or build TensorRT plans once: not measured.
        with running_server(START_TIMEOUT_S, **overrides) as (url, runtime):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            measured = asyncio.run(_measure(url, spec, source, runtime, progress))
            loaded = runtime.model
            assert loaded is not None  # the server is ready
            model = {"description": loaded.description, "device": str(loaded.device)}
        summary = _summarise(spec, measured)
    from streamseg.bench.server import webrtc_egress_s

    egress = webrtc_egress_s(spec.frame_width, spec.frame_height, spec.tracks, EGRESS_REPEAT)
    summary["webrtc_egress_ms"] = {k: percentiles_ms(v) for k, v in egress.items()}
    summary["peak_rss_mb"] = peak_rss_mb()
    summary["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    summary["stage_timing"] = "cuda-events" if cuda else "wall-clock"
    summary["model"] = model
    return summary
