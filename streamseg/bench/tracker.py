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

from streamseg.backends.compiled import CompiledTorchGraphs
from streamseg.backends.torch_graphs import TorchGraphs
from streamseg.bench.drift import iou
from streamseg.media.synthetic import moving_scene, shape_boxes
from streamseg.model.build import build_sam2
from streamseg.model.tracker import FrameResult, StreamTracker


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
    model: Any, frames: list[np.ndarray], objects: int, compiled: CompiledTorchGraphs | None = None
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """Step the trackers frame by frame in lockstep, so machine load affects them
    equally. The reference gets its frames preloaded (as it requires); ours pays for
    preprocessing and for copying masks to host memory on every frame. With `compiled`
    a third tracker runs on those graphs, compared with the eager one frame by frame."""
    from PIL import Image

    tracker = StreamTracker(TorchGraphs(model))
    fast = StreamTracker(compiled) if compiled is not None else None
    h, w = frames[0].shape[:2]
    checkpoints = _checkpoints(len(frames))
    ours: dict[str, Any] = {"frame_s": [], "state_mb": {}, "stages": []}
    ref: dict[str, Any] = {"frame_s": [], "state_mb": {}}
    comp: dict[str, Any] = {"frame_s": [], "state_mb": {}, "stages": [], "parity": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(Path(tmp) / f"{i:05d}.jpg")
        with torch.inference_mode():
            state = model.init_state(tmp)
        state["images"] = torch.cat([tracker.preprocess(f) for f in frames])
        state["cached_features"] = {}
        prompts = _prompts(objects, h, w)
        for t, frame in enumerate(frames):
            result = _timed_step(tracker, frame, t, prompts, ours)
            if fast is not None:
                fast_result = _timed_step(fast, frame, t, prompts, comp)
                comp["parity"].append(_parity(result, fast_result))
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
                if fast is not None:
                    comp["state_mb"][t + 1] = fast.state_nbytes() / 2**20
                outputs = _tensor_bytes(state["output_dict_per_obj"]) / 2**20
                ref["state_mb"][t + 1] = outputs
                ref["state_mb"][f"{t + 1}+frames"] = (
                    outputs + _tensor_bytes(state["images"]) / 2**20
                )
    return ours, ref, comp if fast is not None else None


def _timed_step(
    tracker: StreamTracker, frame: np.ndarray, t: int, prompts: list[Any], run: dict[str, Any]
) -> FrameResult:
    """One frame (and on the first, the prompts); the result after the prompts."""
    start = time.perf_counter()
    result = tracker.step(frame, seq=t)
    if t == 0:
        for k, point in enumerate(prompts):
            tracker.add_prompt(k + 1, points=point, labels=[1])
    run["frame_s"].append(time.perf_counter() - start)
    run["stages"].append(result.times.as_dict())
    return result


def _parity(eager: FrameResult, other: FrameResult) -> dict[str, float]:
    """Largest logit difference and smallest mask IoU over the frame's tracks."""
    worst = {"max_abs_logit": 0.0, "min_iou": 1.0}
    for a, b in zip(eager.tracks, other.tracks, strict=True):
        worst["max_abs_logit"] = max(
            worst["max_abs_logit"], float(np.abs(a.low_res_logits - b.low_res_logits).max())
        )
        worst["min_iou"] = min(worst["min_iou"], iou(a.mask, b.mask))
    return worst


def _summary(name: str, run: dict[str, Any], warmup: int) -> dict[str, Any]:
    steady = run["frame_s"][warmup:]
    summary = {
        "name": name,
        "frames": len(run["frame_s"]),
        "warmup_frames_excluded": warmup,
        "ms_p50": 1000 * statistics.median(steady),
        "ms_p95": 1000 * _percentile(steady, 95),
        "fps": 1.0 / statistics.mean(steady),
        "state_mb": {str(k): round(v, 3) for k, v in run["state_mb"].items()},
    }
    if run.get("stages"):
        stages = run["stages"][warmup:]
        summary["stage_ms_p50"] = {
            k: 1000 * statistics.median(s[k] for s in stages) for k in stages[0]
        }
    return summary


def _compile_report(
    graphs: CompiledTorchGraphs, comp: dict[str, Any], warm_up: dict[str, Any]
) -> dict[str, Any]:
    """Compile cost, compiles during the run, and drift against the eager tracker."""
    tracked = [p for p in comp["parity"] if p["min_iou"] < 1.0 or p["max_abs_logit"] > 0.0]
    return {
        "warm_up_s": round(warm_up["s"], 1),
        "graphs": dict(graphs.compiles),
        "compiled_during_run": sum(graphs.compiles.values()) - warm_up["graphs"],
        "fx_graph_cache_hits": int(torch._dynamo.utils.counters["inductor"]["fxgraph_cache_hit"]),
        "max_abs_logit": max((p["max_abs_logit"] for p in comp["parity"]), default=0.0),
        "min_mask_iou": min((p["min_iou"] for p in comp["parity"]), default=1.0),
        "frames_compared": len(comp["parity"]),
        "frames_with_any_difference": len(tracked),
    }


def feature_drift(eager: TorchGraphs, compiled: CompiledTorchGraphs, frame: np.ndarray) -> float:
    """Largest difference between the eager and compiled image features of `frame`."""
    with torch.inference_mode():
        images = StreamTracker(eager).preprocess(frame)
        a, b = eager.encode_image(images), compiled.encode_image(images)
    return max(
        float((getattr(a, n) - getattr(b, n)).abs().max())
        for n in ("high_res_0", "high_res_1", "embed")
    )


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
    load_before = os.getloadavg()
    compiled, warm_up = None, {}
    if getattr(args, "compile", False):
        compiled = CompiledTorchGraphs(model)
        warm_up = {"s": compiled.warm_up(1), "graphs": sum(compiled.compiles.values())}
    ours_run, ref_run, comp_run = bench_side_by_side(model, frames, args.objects, compiled)
    results = [_summary("streamseg StreamTracker", ours_run, warmup)]
    extra: dict[str, Any] = {}
    if compiled is not None and comp_run is not None:
        results.append(_summary("streamseg + torch.compile", comp_run, warmup))
        extra["compile"] = _compile_report(compiled, comp_run, warm_up)
        extra["compile"]["max_abs_feature"] = feature_drift(TorchGraphs(model), compiled, frames[0])
    results.append(_summary("Meta SAM2VideoPredictor", ref_run, warmup))
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
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "results": results,
        **extra,
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
    ours, ref = report["results"][0], report["results"][-1]
    print(f"speed ratio (reference ms / ours ms, p50): {ref['ms_p50'] / ours['ms_p50']:.2f}")
    staged = [r for r in report["results"] if "stage_ms_p50" in r]
    print("stage ms p50:" + "".join(f"  {r['name']}" for r in staged))
    for stage in staged[0]["stage_ms_p50"]:
        print(f"  {stage:18}" + "".join(f"{r['stage_ms_p50'][stage]:10.1f}" for r in staged))
    if "compile" in report:
        c = report["compile"]
        print(
            f"torch.compile: warm-up {c['warm_up_s']} s, graphs {c['graphs']} "
            f"({c['compiled_during_run']} compiled during the run; inductor cache hits: "
            f"{c['fx_graph_cache_hits']}); vs eager over {c['frames_compared']} frames: "
            f"max |d logit| {c['max_abs_logit']:.2e}, min mask IoU {c['min_mask_iou']:.4f}, "
            f"max |d feature| {c['max_abs_feature']:.2e}"
        )
    before, after = report["load_average"]["before"], report["load_average"]["after"]
    print(f"load average: {before[0]:.2f} before, {after[0]:.2f} after (1 min)")
