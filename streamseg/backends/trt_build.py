"""TensorRT engine building for the exported graphs (GPU hosts only).

Written against the TensorRT 10/11 Python API: `Builder`, `OnnxParser`,
optimisation profiles with the steady-state shape as `opt`, a persisted timing cache,
and a plan cache keyed by everything that makes a plan reusable. Nothing here runs
without TensorRT and CUDA; the pure parts (cache keys, profile shapes) are unit-tested
on CPU. UNVERIFIED on a GPU in this repository's CI.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamseg.backends.base import ModelGeometry

Shape = tuple[int, ...]


class TensorRTUnavailableError(RuntimeError):
    pass


def require_tensorrt() -> Any:
    """Import tensorrt or explain exactly how to get it."""
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailableError(
            "TensorRT is not installed. On a GPU host: `STREAMSEG_EXTRAS=dev,onnx,tensorrt "
            "./scripts/setup.sh` (NVIDIA's index serves the libraries) or use the image in "
            "docker/. It cannot be installed on CPU-only machines."
        ) from None
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailableError("TensorRT needs a CUDA GPU; none is visible")
    return trt


def default_precision() -> str:
    """FP16 where this TensorRT can still build it from the FP32 export (weak typing,
    TensorRT 10); FP32 on TensorRT 11 until the FP16 export exists."""
    trt = require_tensorrt()
    return "fp16" if int(trt.__version__.split(".")[0]) < 11 else "fp32"


@dataclass(frozen=True, slots=True)
class Profile:
    """min/opt/max shapes per input of one graph."""

    shapes: dict[str, tuple[Shape, Shape, Shape]]

    def as_json(self) -> dict[str, list[list[int]]]:
        return {k: [list(s) for s in v] for k, v in sorted(self.shapes.items())}


def memory_attention_profile(
    geo: ModelGeometry, max_cond_frames: int, max_objects: int, steady_objects: int = 1
) -> Profile:
    """Memory tokens range from one prompted frame to the full bank; the optimum is
    the steady state: one prompted frame, num_maskmem-1 recent frames, 16 pointers."""
    hw, c, cm = geo.feat_size**2, geo.hidden_dim, geo.mem_dim
    splits = c // cm
    recent = geo.num_maskmem - 1
    mem = (hw, (1 + recent) * hw, (max_cond_frames + recent) * hw)
    ptr = (splits, geo.max_obj_ptrs * splits, (max_cond_frames + geo.max_obj_ptrs - 1) * splits)
    b = (1, steady_objects, max_objects)

    def axes(lead: tuple[int, int, int], width: int) -> tuple[Shape, Shape, Shape]:
        return (lead[0], b[0], width), (lead[1], b[1], width), (lead[2], b[2], width)

    image = (hw, hw, hw)
    return Profile({
        "curr": axes(image, c), "curr_pos": axes(image, c),
        "memory": axes(mem, cm), "memory_pos": axes(mem, cm),
        "pointers": axes(ptr, cm), "pointers_pos": axes(ptr, cm),
    })  # fmt: skip


def batch_profile(
    inputs: dict[str, Shape], max_batch: int, opt_batch: int = 1, points: int = 0
) -> Profile:
    """Graphs whose only dynamic axes are the batch (and, for decoders, points)."""
    shapes = {}
    for name, rest in inputs.items():
        if name in ("coords", "labels"):
            tail = rest[1:]
            shapes[name] = ((1, 1, *tail), (opt_batch, max(points, 1), *tail),
                            (max_batch, 32, *tail))  # fmt: skip
        else:
            shapes[name] = ((1, *rest), (opt_batch, *rest), (max_batch, *rest))
    return Profile(shapes)


def plan_cache_key(
    onnx_sha256: str,
    trt_version: str,
    gpu_name: str,
    compute_capability: tuple[int, int],
    precision: str,
    profile: Profile,
) -> str:
    """A plan is only valid for this exact graph, TensorRT, GPU, precision and profile."""
    blob = json.dumps(
        {
            "onnx": onnx_sha256,
            "trt": trt_version,
            "gpu": gpu_name,
            "sm": list(compute_capability),
            "precision": precision,
            "profile": profile.as_json(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def build_engine(
    onnx_path: Path, profile: Profile, cache_dir: Path, precision: str = "fp16"
) -> Path:
    """Build (or reuse) a serialized plan; returns its path. GPU hosts only."""
    trt = require_tensorrt()
    import torch

    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    key = plan_cache_key(
        sha,
        trt.__version__,
        torch.cuda.get_device_name(),
        torch.cuda.get_device_capability(),
        precision,
        profile,
    )
    plan = cache_dir / f"{onnx_path.stem}-{key}.plan"
    if plan.is_file():
        return plan
    cache_dir.mkdir(parents=True, exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0
    strongly_typed = precision == "fp32" or major >= 11
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if precision == "fp16":
        if strongly_typed:
            raise RuntimeError(
                "TensorRT 11 builds FP16 only from an FP16 ONNX graph (strong typing); "
                "the FP16 export is not implemented yet — build with precision fp32"
            )
        config.set_flag(trt.BuilderFlag.FP16)
    timing_path = cache_dir / "timing.cache"
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, False)
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.shapes.items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build {onnx_path}")
    timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    tmp = plan.with_suffix(".partial")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(plan)
    return plan


def graph_profiles(
    geo: ModelGeometry, max_cond_frames: int, max_objects: int
) -> dict[str, Profile]:
    """Profiles for every exported graph (names as in the export manifest)."""
    s, h, c = geo.image_size, geo.feat_size, geo.hidden_dim
    feats = {"pix_feat": (c, h, h), "hr0": (c // 8, 4 * h, 4 * h), "hr1": (c // 4, 2 * h, 2 * h)}
    profiles = {
        "image_encoder": batch_profile({"images": (3, s, s)}, 8),
        "memory_attention": memory_attention_profile(geo, max_cond_frames, max_objects),
        "memory_encoder": batch_profile(
            {"pix_feat": (c, h, h), "mask_for_mem": (1, s, s), "score_logits": (1,)}, max_objects
        ),
        "pointer_pos": Profile({"rel_pos": ((1,), (16,), (max_cond_frames + 15,))}),
    }
    for name in ("decoder_single_nomask", "decoder_multi_nomask"):
        profiles[name] = batch_profile(
            {**feats, "coords": (1, 2), "labels": (1,)}, max_objects, points=1
        )
    for name in ("decoder_single_mask", "decoder_multi_mask"):
        profiles[name] = batch_profile(
            {**feats, "coords": (1, 2), "labels": (1,), "mask": (1, 4 * h, 4 * h)},
            max_objects,
            points=1,
        )
    return profiles


def build_all(onnx_dir: Path, precision: str, max_cond_frames: int, max_objects: int) -> list[Path]:
    """Build a plan for every graph of an export folder into `<folder>/plans/`."""
    manifest = json.loads((onnx_dir / "manifest.json").read_text())
    geo = ModelGeometry(**manifest["geometry"])
    profiles = graph_profiles(geo, max_cond_frames, max_objects)
    return [
        build_engine(onnx_dir / entry["file"], profiles[name], onnx_dir / "plans", precision)
        for name, entry in manifest["graphs"].items()
    ]


def _profile_option(profile: Profile, which: int) -> str:
    return ",".join(
        f"{name}:{'x'.join(str(d) for d in shapes[which])}"
        for name, shapes in sorted(profile.shapes.items())
    )


def ort_tensorrt_options(profile: Profile, cache_dir: Path, fp16: bool) -> dict[str, Any]:
    """ONNX Runtime TensorRT execution-provider options: explicit shape profile and a
    persistent engine and timing cache (the EP otherwise rebuilds on new shapes)."""
    return {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_fp16_enable": fp16,
        "trt_profile_min_shapes": _profile_option(profile, 0),
        "trt_profile_opt_shapes": _profile_option(profile, 1),
        "trt_profile_max_shapes": _profile_option(profile, 2),
    }
