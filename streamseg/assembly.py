"""A SAM 2 network and the backend that runs it, put together.

The layers below stay apart: `model/` builds networks and runs the tracker over the
`SamGraphs` interface, `backends/` wraps a built network (torch, exported ONNX graphs,
TensorRT plans) without knowing how it was built. This module is the one place that
knows both; the CLI, the server and the benchmarks load models through it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from streamseg.backends.base import SamGraphs
from streamseg.backends.compiled import CompiledTorchGraphs, compile_graphs
from streamseg.backends.export import PRECISIONS, export_precisions
from streamseg.backends.select import (
    check_precision,
    ensure_export,
    export_folder,
    make_graphs,
)
from streamseg.backends.trt_build import BankLimits
from streamseg.model.build import build_network


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A built model, the graphs its backend runs, and what a user must be told."""

    variant: str
    weights_label: str
    image_size: int
    device: torch.device
    module: Any
    graphs: SamGraphs
    backend: str = "torch"
    precision: str | None = None  # the onnx backend's, when one was asked for

    @property
    def description(self) -> str:
        compiled = ", torch.compile" if isinstance(self.graphs, CompiledTorchGraphs) else ""
        precision = f" ({self.precision})" if self.precision else ""
        return (
            f"sam2.1 {self.variant} @ {self.image_size}px, weights: {self.weights_label}, "
            f"backend: {self.backend}{precision}{compiled}"
        )


def load_model(
    variant_name: str,
    *,
    weights: str = "official",
    image_size: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    backend: str = "torch",
    limits: BankLimits | None = None,
    compile: bool = False,
    precision: str | None = None,
) -> LoadedModel:
    """Build a registry variant with a weights spec ("official", "random", a path) and
    wrap it in `backend`. `limits`: the batches the caller will send (TensorRT profiles
    follow them). `compile`: the torch backend's image encoder and memory attention
    through `torch.compile` (compiled on first use or by `graphs.warm_up`). `precision`:
    the onnx backend's (fp32, fp16, int8 on the CPU), checked before anything is built."""
    if compile and backend not in ("torch", "auto"):
        raise ValueError(f"--compile applies to the torch backend, not {backend}")
    check_precision(backend, precision, device)
    net = build_network(
        variant_name,
        weights=weights,
        image_size=image_size,
        device=device,
        seed=seed,
        progress=progress,
    )
    graphs = make_graphs(backend, net.module, net.variant, precision=precision, limits=limits)
    return LoadedModel(
        variant=net.variant,
        weights_label=net.weights_label,
        image_size=net.image_size,
        device=net.device,
        module=net.module,
        graphs=compile_graphs(graphs) if compile else graphs,
        backend=backend,
        precision=precision,
    )


# --- `streamseg export` ----------------------------------------------------------------------


def add_export_args(parser: argparse.ArgumentParser) -> None:
    """Every flag `streamseg export` takes (model selection included)."""
    parser.add_argument("--model", default="tiny", help="tiny | small | base_plus | large | test")
    parser.add_argument(
        "--weights", default="official", help="official (download), random (seeded), or a path"
    )
    parser.add_argument("--image-size", type=int, default=None, help="default: the variant's")
    parser.add_argument("--seed", type=int, default=0, help="seed for --weights random")
    parser.add_argument(
        "--precision", default="both", choices=["fp32", "fp16", "int8", "both"],
        help="both: fp32 and fp16. fp16 keeps RoPE, norms, softmax, score heads and mask "
        "logits in fp32; int8 (ONNX Runtime on CPU) is quantized from the fp32 export",
    )  # fmt: skip
    parser.add_argument(
        "--out", default=None, help="root folder (default: $STREAMSEG_ENGINES or engines/)"
    )


def export_main(args: argparse.Namespace) -> int:
    """`streamseg export`: writes engines/<model>/<size>-<precision>-<weights>/."""
    from streamseg.model.weights import WeightsError

    try:
        net = build_network(args.model, weights=args.weights, image_size=args.image_size,
                            device="cpu", seed=args.seed)  # fmt: skip
    except (WeightsError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    root = Path(args.out) if args.out else None
    if args.precision == "int8":
        print(f"int8: {ensure_export(net.module, net.variant, 'int8', root)}")
        return 0
    precisions: Sequence[str] = PRECISIONS if args.precision == "both" else (args.precision,)
    folders = {p: export_folder(net.module, net.variant, p, root) for p in precisions}
    export_precisions(net.module, net.variant, folders)
    for precision, folder in folders.items():
        print(f"{precision}: {folder}")
    return 0
