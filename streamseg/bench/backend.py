"""`streamseg bench backend`: the torch FP32 reference against ONNX Runtime at each
`--precision`, on the same weights, frames and threads, in one run: per-graph ms, the
whole tracking step with its stages, and the candidates' drift (bench/drift.py).
Backends take turns call by call and frame by frame, so load on a shared machine
falls on all of them alike. TensorRT is not measured here (no GPU)."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamseg.backends.base import SamGraphs
from streamseg.backends.onnx_graphs import OnnxGraphs
from streamseg.backends.select import PRECISIONS, ensure_export
from streamseg.backends.torch_graphs import TorchGraphs
from streamseg.bench.drift import Drift, RecordingGraphs, replay, stepped_copy
from streamseg.bench.spec import parse_list
from streamseg.media.synthetic import moving_scene, shape_boxes
from streamseg.model.build import build_sam2
from streamseg.model.registry import get_variant
from streamseg.model.tracker import FrameResult, StreamTracker, TrackResult

REFERENCE = "torch fp32"
STEADY_FROM = 8  # the memory bank (7 frames) is full from here on
FRAME_H, FRAME_W = 480, 640


def graph_calls(graphs: SamGraphs) -> dict[str, Callable[[], Any]]:
    """One call per graph on fixed inputs, batch 1, the steady-state memory bank."""
    geo = graphs.geometry
    s, h, cm = geo.image_size, geo.feat_size, geo.mem_dim
    hw, splits = h * h, geo.hidden_dim // cm
    g = torch.Generator().manual_seed(0)
    images = torch.randn(1, 3, s, s, generator=g)
    with torch.inference_mode():
        feats = graphs.encode_image(images)
    curr = feats.embed.flatten(2).permute(2, 0, 1)
    pos = feats.pos.flatten(2).permute(2, 0, 1)
    memory = torch.randn(7 * hw + 16 * splits, 1, cm, generator=g)
    mask = torch.rand(1, 1, s, s, generator=g)
    high_res = (feats.high_res_0, feats.high_res_1)
    return {
        "image_encoder": lambda: graphs.encode_image(images),
        "memory_attention (7 memories, 16 pointers)": lambda: graphs.attend_memory(
            curr, pos, memory, memory, 16 * splits
        ),
        "decoder (tracking)": lambda: graphs.decode(feats.embed, high_res, None, None, None, True),
        "memory_encoder": lambda: graphs.encode_memory(feats.embed, mask, torch.ones(1, 1)),
    }


def graph_times(backends: dict[str, SamGraphs], repeat: int) -> dict[str, dict[str, float]]:
    """Median ms per graph and backend, the backends taking turns call by call."""
    calls = {name: graph_calls(g) for name, g in backends.items()}
    table: dict[str, dict[str, float]] = {name: {} for name in backends}
    with torch.inference_mode():
        for graph in next(iter(calls.values())):
            samples: dict[str, list[float]] = {name: [] for name in backends}
            for name in backends:
                calls[name][graph]()  # warm-up
            for _ in range(repeat):
                for name in backends:
                    start = time.perf_counter()
                    calls[name][graph]()
                    samples[name].append(time.perf_counter() - start)
            for name in backends:
                table[name][graph] = statistics.median(samples[name]) * 1000
    return table


def _tracks(result: FrameResult) -> dict[int, TrackResult]:
    return {t.track_id: t for t in result.tracks}


def track_in_lockstep(
    backends: dict[str, SamGraphs], frames: list[np.ndarray], objects: int
) -> tuple[dict[str, dict[str, Any]], dict[str, Drift]]:
    """Every backend tracks the same frames (objects prompted with boxes on frame 0),
    one frame each in turn. Returns per backend the step times (ms, frames from
    STEADY_FROM: wall, and process CPU time, which load on a shared machine moves
    less) with their stages, and per candidate its drift from the reference."""
    recorder = RecordingGraphs(backends[REFERENCE])
    trackers = {
        name: StreamTracker(recorder.as_graphs() if name == REFERENCE else g)
        for name, g in backends.items()
    }
    candidates = {name: g for name, g in backends.items() if name != REFERENCE}
    drift = {name: Drift() for name in candidates}
    steps: dict[str, list[float]] = {name: [] for name in backends}
    cpu: dict[str, list[float]] = {name: [] for name in backends}
    stages: dict[str, list[dict[str, float]]] = {name: [] for name in backends}
    boxes = shape_boxes(0, *frames[0].shape[:2])[:objects]
    for t, frame in enumerate(frames):
        copies = {}
        if t > 0:
            copies = {
                n: stepped_copy(trackers[REFERENCE], recorder, g) for n, g in candidates.items()
            }
        recorder.calls.clear()
        results: dict[str, dict[int, TrackResult]] = {}
        for name, tracker in trackers.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            result = tracker.step(frame, seq=t)
            elapsed, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
            results[name] = _tracks(result)
            if t == 0:  # the prompts' own results
                for k, box in enumerate(boxes):
                    results[name][k + 1] = tracker.add_prompt(k + 1, box=list(box)).result
            elif t >= STEADY_FROM:
                steps[name].append(elapsed * 1000)
                cpu[name].append(cpu_s * 1000)
                stages[name].append({k: v * 1000 for k, v in result.times.as_dict().items()})
        for name, graphs in candidates.items():
            drift[name].free.add_tracks(results[REFERENCE], results[name])
            drift[name].add_graph_errors(replay(recorder.calls, graphs))
            if name in copies:
                one = _tracks(copies[name].step(frame, seq=t))
                drift[name].one_step.add_tracks(results[REFERENCE], one)
    timing = {
        name: {
            "step_ms_median": statistics.median(steps[name]),
            "step_ms_p90": float(np.percentile(steps[name], 90)),
            "step_cpu_ms_median": statistics.median(cpu[name]),
            "frames": len(steps[name]),
            "stages_ms_median": {
                k: statistics.median(s[k] for s in stages[name]) for k in stages[name][0]
            },
        }
        for name in backends
    }
    return timing, drift


def candidate_graphs(
    model: Any, model_name: str, precisions: list[str], root: Path, threads: int
) -> dict[str, SamGraphs]:
    """ONNX Runtime on each precision's export (made, or quantized, under `root`)."""
    return {
        f"onnx {p}": OnnxGraphs(ensure_export(model, model_name, p, root), threads=threads)
        for p in precisions
    }


def run_backend_bench(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    precisions = parse_list(args.precision, "precision")
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        raise ValueError(f"--precision: unknown {unknown}; choose from {', '.join(PRECISIONS)}")
    variant = get_variant(args.model or "tiny")
    size = args.image_size or 512
    model = build_sam2(variant.config_path(), image_size=size, seed=0)
    frames = moving_scene(args.frames, FRAME_H, FRAME_W)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        candidates = candidate_graphs(model, variant.name, precisions, Path(tmp), threads)
        export_s = time.perf_counter() - start
        backends: dict[str, SamGraphs] = {REFERENCE: TorchGraphs(model), **candidates}
        graphs_ms = graph_times(backends, args.repeat)
        timing, drift = track_in_lockstep(backends, frames, args.objects)
    report = {
        "mode": "backend",
        "model": variant.name,
        "image_size": size,
        "threads": threads,
        "frames": len(frames),
        "objects": args.objects,
        "export_and_quantize_s": export_s,
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "graphs_ms": graphs_ms,
        "tracking": timing,
        "drift": {name: d.summary() for name, d in drift.items()},
    }
    print_report(report)
    return report


def _row(label: str, values: list[float], fmt: str = "{:14.1f}") -> str:
    return f"{label:46}" + "".join(fmt.format(v) for v in values)


def print_report(report: dict[str, Any]) -> None:
    names = list(report["tracking"])
    ref = report["tracking"][REFERENCE]["step_ms_median"]
    load = report["load_average"]
    print(f"backend bench: sam2.1 {report['model']} @ {report['image_size']}px, random weights, "
          f"{report['threads']} threads, CPU; load average {load['before'][0]:.2f} before, "
          f"{load['after'][0]:.2f} after")  # fmt: skip
    print(f"{'per graph, batch 1 (ms, median)':46}" + "".join(f"{n:>14}" for n in names))
    for graph in report["graphs_ms"][REFERENCE]:
        print(_row(graph, [report["graphs_ms"][n][graph] for n in names]))
    print(f"tracking step, {FRAME_W}x{FRAME_H}, {report['objects']} objects, "
          f"frames {STEADY_FROM}-{report['frames'] - 1} (ms, median)")  # fmt: skip
    for stage in report["tracking"][REFERENCE]["stages_ms_median"]:
        values = [report["tracking"][n]["stages_ms_median"][stage] for n in names]
        print(_row(f"  {stage}", values))
    print(_row("  whole step", [report["tracking"][n]["step_ms_median"] for n in names]))
    print(_row("  whole step p90", [report["tracking"][n]["step_ms_p90"] for n in names]))
    cpu = [report["tracking"][n]["step_cpu_ms_median"] for n in names]
    print(_row("  whole step, CPU time of all threads", cpu))
    speedups = [ref / report["tracking"][n]["step_ms_median"] for n in names]
    print(_row("  speed-up vs torch fp32", speedups, "{:13.2f}x"))
    print(f"drift vs {REFERENCE} over {report['frames']} frames x {report['objects']} objects")
    for name, d in report["drift"].items():
        free, one = d["free_running"], d["one_step"]
        print(f"  {name}: free-running mask IoU mean {free['iou_mean']:.4f} min "
              f"{free['iou_min']:.4f}, logit corr mean {free['corr_mean']:.4f} min "
              f"{free['corr_min']:.4f}, max |dlogit| {free['max_abs_logit']:.3g}")  # fmt: skip
        print(f"  {name}: one step from the reference's state: IoU mean {one['iou_mean']:.4f} "
              f"min {one['iou_min']:.4f}, logit corr mean {one['corr_mean']:.4f} min "
              f"{one['corr_min']:.4f}, max |dlogit| {one['max_abs_logit']:.3g}")  # fmt: skip
        errors = ", ".join(f"{g} {e['mean']:.2%} (max {e['max']:.2%})"
                           for g, e in d["graph_relative_error"].items())  # fmt: skip
        print(f"  {name}: per graph, same inputs, mean relative error: {errors}")
    print("TensorRT: not measured (no GPU / tensorrt on this machine)")
