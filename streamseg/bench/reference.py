"""The reference column: Meta's `SAM2VideoPredictor` on the same weights, image size,
frames, box prompts and threads as a cell.

It is offline by design: every frame is loaded before tracking starts and nothing is
decoded, encoded or sent while it runs, so its figure is the model alone on preloaded
frames — an upper bound for what it would do on live video. It tracks one video at a
time; several streams share its one figure (frames per second over all streams)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamseg.bench.cell import Progress, peak_rss_mb, prompt_boxes
from streamseg.bench.spec import GENERATED, CellSpec
from streamseg.bench.stats import percentiles_ms, spread
from streamseg.media.synthetic import moving_scene

WARMUP_FRAMES = 3
MAX_FRAMES = 150  # the predictor holds every frame in memory at the model's size


def _source_frames(spec: CellSpec, count: int) -> list[np.ndarray]:
    if spec.source == GENERATED:
        return moving_scene(count, spec.frame_height, spec.frame_width)
    import av

    frames: list[np.ndarray] = []
    with av.open(spec.source) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    if len(frames) <= WARMUP_FRAMES:
        raise ValueError(f"{spec.source} has only {len(frames)} frames")
    return frames


def _frame_count(spec: CellSpec, seconds_per_frame: float) -> int:
    wanted = WARMUP_FRAMES + int(spec.runs * spec.seconds / max(seconds_per_frame, 1e-3))
    return max(WARMUP_FRAMES + 2 * spec.runs, min(MAX_FRAMES, wanted))


def _checkpoint(spec: CellSpec) -> Path | None:
    from streamseg.model.registry import get_variant
    from streamseg.model.weights import ensure_checkpoint, resolve_weights

    variant = get_variant(spec.model)
    choice = resolve_weights(spec.weights, variant)
    if choice.kind == "official":
        return ensure_checkpoint(variant)
    return choice.path


def run_reference(spec: CellSpec, progress: Progress) -> dict[str, Any]:
    """Per-frame times of `propagate_in_video` after box prompts on frame 0."""
    import torch

    from streamseg.model.build import build_sam2
    from streamseg.model.registry import get_variant

    if spec.threads:
        torch.set_num_threads(spec.threads)
    device = "cuda" if spec.device != "cpu" and torch.cuda.is_available() else "cpu"
    variant = get_variant(spec.model)
    model = build_sam2(
        variant.config_path(),
        image_size=spec.image_size,
        device=device,
        checkpoint=_checkpoint(spec),
        reference_predictor=True,
    )
    # A first short pass sizes the measured one to about runs x seconds.
    probe = _propagate(model, _source_frames(spec, WARMUP_FRAMES + 2), spec, device)
    frames = _source_frames(spec, _frame_count(spec, float(np.median(probe[WARMUP_FRAMES:]))))
    progress(spec.warmup_s)
    times = _propagate(model, frames, spec, device, progress)[WARMUP_FRAMES:]
    chunks = [c for c in np.array_split(np.asarray(times), spec.runs) if len(c)]
    return {
        "fps": spread([len(c) / float(c.sum()) for c in chunks]),
        "frame_ms": percentiles_ms(times),
        "frames_measured": len(times),
        "warmup_frames": WARMUP_FRAMES,
        "peak_rss_mb": peak_rss_mb(),
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
        "note": "model only, frames preloaded (offline predictor)",
    }


def _propagate(
    model: Any,
    frames: list[np.ndarray],
    spec: CellSpec,
    device: str,
    progress: Progress | None = None,
) -> list[float]:
    import torch
    from PIL import Image

    height, width = frames[0].shape[:2]
    boxes = prompt_boxes(spec.tracks, width, height)
    with tempfile.TemporaryDirectory(prefix="streamseg-ref-") as tmp:
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(Path(tmp) / f"{i:05d}.jpg", quality=95)
        times: list[float] = []
        autocast = torch.autocast("cuda", dtype=getattr(torch, spec.dtype or "float32"),
                                  enabled=device == "cuda" and spec.dtype is not None)  # fmt: skip
        with torch.inference_mode(), autocast:
            state = model.init_state(tmp)
            start = time.perf_counter()
            for k, box in enumerate(boxes):
                model.add_new_points_or_box(state, 0, k + 1, box=box)
            for _ in model.propagate_in_video(state):
                if device == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                times.append(now - start)
                start = now
                if progress is not None and len(times) > WARMUP_FRAMES:
                    done = (len(times) - WARMUP_FRAMES) / max(1, len(frames) - WARMUP_FRAMES)
                    progress(spec.warmup_s + done * spec.runs * spec.seconds)
    return times
