"""Choosing a backend: `torch` (reference), `onnx` (ONNX Runtime over exported graphs),
`tensorrt` (plans built on this GPU), or `auto`: TensorRT when it and CUDA are present
and the model lives on the GPU, else torch on the model's device (CUDA, then CPU, as
`load_model` chose). Exported graphs and plans are made on first use and cached under
engines/<model>/<size>-<precision>-<weights>/; the INT8 folder is quantized from the
FP32 one (quantize.py)."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import torch

from streamseg.backends.base import SamGraphs
from streamseg.backends.export import weights_fingerprint
from streamseg.backends.torch_graphs import TorchGraphs
from streamseg.backends.trt_build import BackendUnavailableError, BankLimits

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")  # of the onnx backend
__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "BackendUnavailableError",
    "check_precision",
    "engines_dir",
    "export_folder",
    "make_graphs",
]


def engines_dir() -> Path:
    """`$STREAMSEG_ENGINES`, else the repository's engines/ folder."""
    default = Path(__file__).resolve().parents[2] / "engines"
    return Path(os.environ.get("STREAMSEG_ENGINES", default))


def export_folder(
    model: Any, model_name: str, precision: str = "fp32", root: Path | None = None
) -> Path:
    """Where an export of these weights at this size and precision lives."""
    name = f"{int(model.image_size)}-{precision}-{weights_fingerprint(model)}"
    return (root or engines_dir()) / model_name / name


def check_precision(kind: str, precision: str | None, device: str | torch.device) -> None:
    """Refuse a precision the backend cannot run, before anything is built: only the
    onnx backend takes one, and INT8 runs on the CPU (ONNX Runtime's CPU kernels)."""
    if precision is None:
        return
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if kind != "onnx":
        raise ValueError(
            f"--precision {precision} needs --backend onnx (torch runs FP32, with --dtype "
            "for CUDA autocast; tensorrt always runs the FP16 export)"
        )
    if precision == "int8" and torch.device(device).type != "cpu":
        raise ValueError(
            f"--precision int8 runs on the CPU only (ONNX Runtime's CPU kernels), not on "
            f"{device}: add --device cpu, or use --precision fp16 on a GPU"
        )


def ensure_export(model: Any, model_name: str, precision: str, root: Path | None) -> Path:
    """Export once; a folder counts as done when its manifest (written last) exists.
    INT8 is quantized from the FP32 export (made first if missing), and made again
    when the quantization recipe changed."""
    from streamseg.backends.export import export_graphs

    folder = export_folder(model, model_name, precision, root)
    if precision == "int8":
        from streamseg.backends.quantize import is_current, quantize_export

        if not is_current(folder):
            source = ensure_export(model, model_name, "fp32", root)
            log.info("quantizing %s to INT8 in %s", source, folder)
            quantize_export(source, folder)
        return folder
    if not (folder / "manifest.json").is_file():
        log.info("exporting %s (%s) to %s", model_name, precision, folder)
        export_graphs(model, folder, model_name, precision)
    return folder


def tensorrt_usable(model: Any) -> bool:
    """TensorRT importable, a GPU visible, and the model placed on it."""
    return (
        importlib.util.find_spec("tensorrt") is not None
        and torch.cuda.is_available()
        and torch.device(model.device).type == "cuda"
    )


def _tensorrt(model: Any, model_name: str, root: Path | None, limits: BankLimits) -> SamGraphs:
    """Plans whose profiles are exactly `limits` (the server's settings): an existing
    manifest for other limits is rebuilt; plans already built for a profile are reused
    by their cache key, so switching back costs nothing."""
    from streamseg.backends.tensorrt_graphs import TensorRTGraphs
    from streamseg.backends.trt_build import DeviceInfo, PlanManifest, build_plans, require_tensorrt

    trt = require_tensorrt()
    device = torch.device(model.device)
    if device.type != "cuda":
        raise BackendUnavailableError("the tensorrt backend needs the model on a GPU (--device)")
    folder = ensure_export(model, model_name, "fp16", root)
    with torch.cuda.device(device):  # plans are built for, and keyed by, this GPU
        plans: PlanManifest | None
        try:
            plans = PlanManifest.load(folder / "plans", DeviceInfo.current(trt))
        except BackendUnavailableError:
            plans = None
        if plans is None or plans.limits != limits:
            log.warning(
                "building TensorRT plans for %s in %s (minutes, once per GPU and limits)",
                limits,
                folder / "plans",
            )
            plans = build_plans(folder, limits)
    return TensorRTGraphs(folder, device=device, plans=plans)


def make_graphs(
    kind: str,
    model: Any,
    model_name: str,
    engines: Path | None = None,
    *,
    precision: str | None = None,
    limits: BankLimits | None = None,
) -> SamGraphs:
    """The graphs for backend `kind` on a built sam2 model.

    `precision` applies to `onnx` only (default fp32 on CPU, fp16 with CUDA; int8 on
    the CPU only, see `check_precision`); `tensorrt` always runs the FP16 export.
    `limits`: the largest batches the server sends (see `BankLimits.for_server`);
    TensorRT profiles are built for them, and larger batches are split. Raises
    BackendUnavailableError when an explicitly asked-for backend cannot run here;
    `auto` falls back to torch instead.
    """
    if kind not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {kind!r}")
    check_precision(kind, precision, model.device)
    limits = limits or BankLimits()
    if kind == "auto":
        if tensorrt_usable(model):
            try:
                return _tensorrt(model, model_name, engines, limits)
            except (BackendUnavailableError, RuntimeError, ValueError) as exc:
                log.warning("TensorRT unavailable (%s); using torch on %s", exc, model.device)
        return TorchGraphs(model)
    if kind == "torch":
        return TorchGraphs(model)
    if kind == "tensorrt":
        return _tensorrt(model, model_name, engines, limits)
    if importlib.util.find_spec("onnxruntime") is None:
        raise BackendUnavailableError(
            "the onnx backend needs onnx and onnxruntime: pip install 'streamseg[onnx]'"
        )
    import onnxruntime as ort

    from streamseg.backends.onnx_graphs import GPU_PROVIDERS, OnnxGraphs, gpu_providers

    on_gpu = (
        torch.device(model.device).type == "cuda"
        and torch.cuda.is_available()
        and bool(set(GPU_PROVIDERS) & set(ort.get_available_providers()))
    )
    precision = precision or ("fp16" if on_gpu else "fp32")
    folder = ensure_export(model, model_name, precision, engines)
    if not on_gpu:
        return OnnxGraphs(folder)
    from streamseg.backends.trt_build import graph_profiles

    profiles = graph_profiles(OnnxGraphs.geometry_of(folder), limits)
    device = torch.device(model.device)
    device_id = device.index or 0
    from streamseg.backends.tensorrt_graphs import CudaStream

    stream = CudaStream(torch.device("cuda", device_id))  # graphs served by CUDA EP alone
    providers = gpu_providers(folder, profiles, device_id, stream.handle)
    graphs = OnnxGraphs(folder, providers, device=device, stream=stream)
    active = graphs.providers("image_encoder")
    if not set(GPU_PROVIDERS) & set(active):  # ORT falls back to the CPU with one log line
        raise BackendUnavailableError(
            f"onnxruntime {ort.__version__} ran the graphs on {active}: its GPU providers did "
            "not load (a build for another CUDA major?); see `python -m "
            "streamseg.backends.ort_check`"
        )
    graphs.max_objects, graphs.max_images = limits.max_objects, limits.max_images
    return graphs
