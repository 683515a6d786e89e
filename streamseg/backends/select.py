"""Choosing a backend: `torch` (reference), `onnx` (ONNX Runtime over exported graphs,
exported on first use into the engines folder), `tensorrt`, or `auto`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from streamseg.backends.base import SamGraphs
from streamseg.backends.torch_graphs import TorchGraphs

BACKENDS = ("auto", "torch", "onnx", "tensorrt")


def engines_dir() -> Path:
    """`$STREAMSEG_ENGINES`, else the repository's engines/ folder."""
    default = Path(__file__).resolve().parents[2] / "engines"
    return Path(os.environ.get("STREAMSEG_ENGINES", default))


def weights_fingerprint(model: Any) -> str:
    """Identifies the weights, so exported graphs are never reused for other weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes()[:4096])
    return digest.hexdigest()[:16]


def onnx_folder(model: Any, model_name: str, root: Path | None = None) -> Path:
    return (
        root or engines_dir()
    ) / f"{model_name}-{int(model.image_size)}-fp32-{weights_fingerprint(model)}"


def make_graphs(kind: str, model: Any, model_name: str, engines: Path | None = None) -> SamGraphs:
    if kind not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {kind!r}")
    if kind == "auto":
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            kind = "torch"
        else:
            kind = "tensorrt" if torch.cuda.is_available() else "torch"
    if kind == "torch":
        return TorchGraphs(model)
    from streamseg.backends.export import export_graphs
    from streamseg.backends.onnx_graphs import OnnxGraphs

    folder = onnx_folder(model, model_name, engines)
    if not (folder / "manifest.json").is_file():
        export_graphs(model.cpu(), folder, model_name)
    if kind == "tensorrt":
        from streamseg.backends.tensorrt_graphs import TensorRTGraphs
        from streamseg.backends.trt_build import build_all, default_precision

        build_all(folder, default_precision(), max_cond_frames=4, max_objects=16)
        return TensorRTGraphs(folder)
    if not torch.cuda.is_available():
        return OnnxGraphs(folder)
    from streamseg.backends.trt_build import graph_profiles, ort_tensorrt_options

    profiles = graph_profiles(OnnxGraphs.geometry_of(folder), max_cond_frames=4, max_objects=16)

    def providers(name: str) -> list[Any]:
        options = ort_tensorrt_options(profiles[name], folder / "ort-trt-cache", fp16=True)
        return [("TensorrtExecutionProvider", options), "CUDAExecutionProvider",
                "CPUExecutionProvider"]  # fmt: skip

    return OnnxGraphs(folder, providers)
