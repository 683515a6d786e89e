"""`streamseg bench backend`: per-graph and per-frame times of the torch reference and
ONNX Runtime on the same weights, image size and threads (TensorRT where present)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from streamseg.backends.base import SamGraphs
from streamseg.backends.export import export_graphs
from streamseg.backends.onnx_graphs import OnnxGraphs
from streamseg.backends.torch_graphs import TorchGraphs
from streamseg.bench.server import median_ms
from streamseg.media.synthetic import moving_scene, shape_boxes
from streamseg.model.build import build_sam2
from streamseg.model.registry import get_variant
from streamseg.model.tracker import StreamTracker


def graph_times(graphs: SamGraphs, repeat: int) -> dict[str, float]:
    geo = graphs.geometry
    s, h, c, cm = geo.image_size, geo.feat_size, geo.hidden_dim, geo.mem_dim
    hw, splits = h * h, c // cm
    with torch.inference_mode():
        feats = graphs.encode_image(torch.randn(1, 3, s, s))
        curr = feats.embed.flatten(2).permute(2, 0, 1)
        pos = feats.pos.flatten(2).permute(2, 0, 1)
        memory = torch.randn(7 * hw + 16 * splits, 1, cm)
        return {
            "image_encoder": median_ms(
                lambda: graphs.encode_image(torch.randn(1, 3, s, s)), repeat
            ),
            "memory_attention (7 memories, 16 pointers)": median_ms(
                lambda: graphs.attend_memory(curr, pos, memory, memory, 16 * splits), repeat
            ),
            "decoder (tracking)": median_ms(
                lambda: graphs.decode(
                    feats.embed, (feats.high_res_0, feats.high_res_1), None, None, None, True
                ),
                repeat,
            ),
            "memory_encoder": median_ms(
                lambda: graphs.encode_memory(feats.embed, torch.rand(1, 1, s, s), torch.ones(1, 1)),
                repeat,
            ),
        }


def frame_time(graphs: SamGraphs, frames: int) -> float:
    video = moving_scene(frames, 480, 640)
    tracker = StreamTracker(graphs)
    samples = []
    for t, frame in enumerate(video):
        start = time.perf_counter()
        tracker.step(frame, seq=t)
        if t == 0:
            x0, y0, x1, y1 = shape_boxes(0, 480, 640)[0]
            tracker.add_prompt(1, box=[x0, y0, x1, y1])
        samples.append(time.perf_counter() - start)
    return statistics.median(samples[3:]) * 1000


def run_backend_bench(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    variant = get_variant(args.model or "tiny")
    size = args.image_size or 512
    model = build_sam2(variant.config_path(), image_size=size, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        export_graphs(model, Path(tmp), variant.name)
        backends: dict[str, SamGraphs] = {
            "torch": TorchGraphs(model),
            "onnxruntime": OnnxGraphs(Path(tmp)),
        }
        table = {name: graph_times(g, args.repeat) for name, g in backends.items()}
        frames = {name: frame_time(g, args.frames) for name, g in backends.items()}
    print(f"backend bench: sam2.1 {variant.name} @ {size}px, random weights, "
          f"{torch.get_num_threads()} threads, CPU (ms, median)")  # fmt: skip
    print(f"{'graph':44}" + "".join(f"{n:>14}" for n in backends))
    for graph in next(iter(table.values())):
        print(f"{graph:44}" + "".join(f"{table[n][graph]:14.1f}" for n in backends))
    print(f"{'whole tracking step (640x480, 1 object)':44}"
          + "".join(f"{frames[n]:14.1f}" for n in backends))  # fmt: skip
    print("TensorRT: not measured (no GPU / tensorrt on this machine)")
    return {"mode": "backend", "model": variant.name, "image_size": size, "graphs_ms": table,
            "frame_ms": frames}  # fmt: skip
