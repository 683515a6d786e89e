"""`streamseg bench`: benchmarks that print measured numbers.

`tracker` mode runs the streaming tracker and Meta's `SAM2VideoPredictor` on the
same weights, image size, frames, prompts and CPU threads, and prints per-frame
time and state size side by side.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamseg.backends.torch_graphs import TorchGraphs
from streamseg.media.synthetic import moving_scene, shape_boxes
from streamseg.model.build import build_sam2
from streamseg.model.tracker import StreamTracker


def _tensor_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of every distinct tensor reachable through dicts/lists/tuples."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        key = obj.untyped_storage().data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v, seen) for v in obj)
    return 0


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _prompts(objects: int, height: int, width: int) -> list[list[list[float]]]:
    boxes = shape_boxes(0, height, width)
    return [[[(x0 + x1) / 2, (y0 + y1) / 2]] for x0, y0, x1, y1 in boxes[:objects]]


def _checkpoints(frames: int) -> list[int]:
    return sorted({max(1, frames // 4), max(1, frames // 2), frames})


def bench_side_by_side(
    model: Any, frames: list[np.ndarray], objects: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Step both trackers frame by frame in lockstep, so machine load affects both
    equally. The reference gets its frames preloaded (as it requires); ours pays for
    preprocessing and for copying masks to host memory on every frame."""
    from PIL import Image

    tracker = StreamTracker(TorchGraphs(model))
    h, w = frames[0].shape[:2]
    checkpoints = _checkpoints(len(frames))
    ours: dict[str, Any] = {"frame_s": [], "state_mb": {}}
    ref: dict[str, Any] = {"frame_s": [], "state_mb": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(Path(tmp) / f"{i:05d}.jpg")
        with torch.inference_mode():
            state = model.init_state(tmp)
        state["images"] = torch.cat([tracker.preprocess(f) for f in frames])
        state["cached_features"] = {}
        prompts = _prompts(objects, h, w)
        for t, frame in enumerate(frames):
            start = time.perf_counter()
            tracker.step(frame, seq=t)
            if t == 0:
                for k, point in enumerate(prompts):
                    tracker.add_prompt(k + 1, points=point, labels=[1])
            ours["frame_s"].append(time.perf_counter() - start)
            start = time.perf_counter()
            with torch.inference_mode():
                if t == 0:
                    for k, point in enumerate(prompts):
                        model.add_new_points_or_box(state, 0, k + 1, points=point, labels=[1])
                    frames_out = model.propagate_in_video(state)
                next(frames_out)
            ref["frame_s"].append(time.perf_counter() - start)
            if t + 1 in checkpoints:
                ours["state_mb"][t + 1] = tracker.state_nbytes() / 2**20
                outputs = _tensor_bytes(state["output_dict_per_obj"]) / 2**20
                ref["state_mb"][t + 1] = outputs
                ref["state_mb"][f"{t + 1}+frames"] = (
                    outputs + _tensor_bytes(state["images"]) / 2**20
                )
    return ours, ref


def _summary(name: str, run: dict[str, Any], warmup: int) -> dict[str, Any]:
    steady = run["frame_s"][warmup:]
    return {
        "name": name,
        "frames": len(run["frame_s"]),
        "warmup_frames_excluded": warmup,
        "ms_p50": 1000 * statistics.median(steady),
        "ms_p95": 1000 * _percentile(steady, 95),
        "fps": 1.0 / statistics.mean(steady),
        "state_mb": {str(k): round(v, 3) for k, v in run["state_mb"].items()},
    }


def run_tracker_bench(args: argparse.Namespace) -> dict[str, Any]:
    from streamseg.model.registry import get_variant

    if args.threads:
        torch.set_num_threads(args.threads)
    variant = get_variant(args.model or "tiny")
    if args.weights not in (None, "random"):
        raise SystemExit(
            "bench tracker uses seeded random weights (timing does not depend on them)"
        )
    width, height = (int(v) for v in args.frame_size.lower().split("x"))
    image_size = args.image_size or variant.image_size
    model = build_sam2(
        variant.config_path(), image_size=image_size, reference_predictor=True, seed=0
    )
    frames = moving_scene(args.frames, height, width)
    warmup = min(3, args.frames // 4)
    ours_run, ref_run = bench_side_by_side(model, frames, args.objects)
    ours = _summary("streamseg StreamTracker", ours_run, warmup)
    ref = _summary("Meta SAM2VideoPredictor", ref_run, warmup)
    return {
        "mode": "tracker",
        "model": variant.name,
        "weights": "random (seed 0)",
        "image_size": image_size,
        "frame_size": f"{width}x{height}",
        "objects": args.objects,
        "threads": torch.get_num_threads(),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "results": [ours, ref],
    }


def print_tracker_table(report: dict[str, Any]) -> None:
    print(
        f"tracker bench: sam2.1 {report['model']} @ {report['image_size']}px, "
        f"weights {report['weights']}, {report['frame_size']} frames, "
        f"{report['objects']} object(s), {report['threads']} threads"
    )
    header = f"{'':26} {'ms p50':>8} {'ms p95':>8} {'fps':>7}  state MB by frame"
    print(header)
    for r in report["results"]:
        sizes = ", ".join(f"{k}: {v}" for k, v in r["state_mb"].items())
        print(f"{r['name']:26} {r['ms_p50']:8.1f} {r['ms_p95']:8.1f} {r['fps']:7.2f}  {sizes}")
    ours, ref = report["results"]
    print(f"speed ratio (reference ms / ours ms, p50): {ref['ms_p50'] / ours['ms_p50']:.2f}")
