"""TensorRT engine building for an export folder (GPU hosts only).

Written against the TensorRT 10/11 Python API: strongly typed networks (the FP16
export already carries its FP32 islands, and TensorRT 11 has no other mode) parsed with
`OnnxParser`; one optimisation profile per graph covering one prompted frame up to the
full memory bank and one object up to `max_objects`, with the steady state as `opt`; a
timing cache persisted per TensorRT version and GPU; plans cached under a key of
everything that makes a plan reusable. The pure parts (profiles, cache keys, the plan
manifest, the errors) are unit-tested on CPU; the build itself is unverified here (no
GPU and no TensorRT on this project's machines).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamseg.backends.base import ModelGeometry

Shape = tuple[int, ...]
PLAN_MANIFEST_SCHEMA = 1


class BackendUnavailableError(RuntimeError):
    """A backend cannot run on this host (package or GPU missing, no plan built); the
    message says what to do about it."""


def tensorrt_package(cuda_version: str | None) -> str:
    """The pip package whose TensorRT matches this CUDA major version: NVIDIA publishes
    one per major (`tensorrt-cu12`, `tensorrt-cu13`), and a mismatched one fails to load
    its libraries."""
    major = (cuda_version or "").split(".", 1)[0]
    return f"tensorrt-cu{major}" if major.isdigit() else "tensorrt-cu<CUDA major>"


def missing_tensorrt_message(cuda_version: str | None) -> str:
    package = tensorrt_package(cuda_version)
    found = f"torch's CUDA is {cuda_version}" if cuda_version else "torch has no CUDA"
    return (
        f"TensorRT is not installed ({found}). On a GPU host install it from NVIDIA's "
        f"index (`pip install {package}`, or STREAMSEG_EXTRAS=dev,onnx,tensorrt "
        "./scripts/setup.sh) or use the image in docker/; it cannot be installed on "
        "CPU-only machines. Use --backend torch or onnx there."
    )


def require_tensorrt() -> Any:
    """Import tensorrt, or explain exactly what is missing and how to get it."""
    import torch

    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailableError(missing_tensorrt_message(torch.version.cuda)) from None
    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            "TensorRT needs a CUDA GPU, and torch sees none (CPU-only torch build, no "
            "driver, or CUDA_VISIBLE_DEVICES empty). Use --backend torch or onnx."
        )
    return trt


def engine_device_memory(engine: Any) -> int | None:
    """Activation memory an execution context needs at the profile's maximum
    (`device_memory_size_v2`, TensorRT >= 10.1; `device_memory_size` before)."""
    size = getattr(engine, "device_memory_size_v2", None)
    if size is None:
        size = getattr(engine, "device_memory_size", None)
    return None if size is None else int(size)


@dataclass(frozen=True, slots=True)
class BankLimits:
    """The largest shapes a plan must accept, and the steady-state shape it is tuned for."""

    max_cond_frames: int = 4  # prompted frames kept per track (TrackerSettings)
    max_objects: int = 16  # tracks batched through one launch
    steady_objects: int = 1  # the batch TensorRT optimises for
    max_images: int = 8  # streams whose frames share one image-encoder launch
    max_points: int = 64  # prompt points per decoder call (clicks accumulate on a frame)

    def __post_init__(self) -> None:
        if min(self.max_cond_frames, self.max_objects, self.max_images, self.max_points) < 1:
            raise ValueError("every limit must be >= 1")
        if not 1 <= self.steady_objects <= self.max_objects:
            raise ValueError("steady_objects must be within 1..max_objects")

    @classmethod
    def for_server(
        cls, max_tracks: int, max_prompts_per_request: int, max_batch: int
    ) -> BankLimits:
        """What a server's settings can send through one launch: a stream's tracks or
        one request's prompts (decoded as one batch), and `max_batch` streams' frames in
        one image-encoder launch. Larger profiles cost activation memory."""
        return cls(max_objects=max(max_tracks, max_prompts_per_request), max_images=max_batch)


@dataclass(frozen=True, slots=True)
class Profile:
    """min/opt/max shapes per input of one graph."""

    shapes: dict[str, tuple[Shape, Shape, Shape]]

    def as_json(self) -> dict[str, list[list[int]]]:
        return {k: [list(s) for s in v] for k, v in sorted(self.shapes.items())}

    @classmethod
    def from_json(cls, data: dict[str, list[list[int]]]) -> Profile:
        return cls({k: (tuple(v[0]), tuple(v[1]), tuple(v[2])) for k, v in data.items()})

    def option(self, which: int) -> str:
        """ONNX Runtime's `name:AxBxC,...` form of the min (0), opt (1) or max (2) shapes."""
        return ",".join(
            f"{name}:{'x'.join(str(d) for d in shapes[which])}"
            for name, shapes in sorted(self.shapes.items())
        )

    def admits(self, shapes: dict[str, Shape]) -> bool:
        return all(
            len(s) == len(lo) and all(a <= b <= c for a, b, c in zip(lo, s, hi, strict=True))
            for name, s in shapes.items()
            for lo, _, hi in [self.shapes[name]]
        )


def memory_attention_profile(geo: ModelGeometry, limits: BankLimits) -> Profile:
    """Spatial memories from one prompted frame (the first tracked frame) to the full
    bank (every kept prompted frame + num_maskmem-1 recent ones); pointers likewise.
    `opt` is the steady state: 1 prompted + num_maskmem-1 recent frames, max_obj_ptrs
    pointers, `steady_objects` tracks."""
    hw, c, cm = geo.feat_size**2, geo.hidden_dim, geo.mem_dim
    splits = c // cm  # a pointer is split into hidden_dim / mem_dim tokens
    recent = geo.num_maskmem - 1
    mem = (hw, (1 + recent) * hw, (limits.max_cond_frames + recent) * hw)
    ptr = (splits, geo.max_obj_ptrs * splits,
           (limits.max_cond_frames + geo.max_obj_ptrs - 1) * splits)  # fmt: skip
    b = (1, limits.steady_objects, limits.max_objects)

    def axes(lead: tuple[int, int, int], width: int) -> tuple[Shape, Shape, Shape]:
        return (lead[0], b[0], width), (lead[1], b[1], width), (lead[2], b[2], width)

    image = (hw, hw, hw)
    return Profile({
        "curr": axes(image, c), "curr_pos": axes(image, c),
        "memory": axes(mem, cm), "memory_pos": axes(mem, cm),
        "pointers": axes(ptr, cm), "pointers_pos": axes(ptr, cm),
    })  # fmt: skip


def batch_profile(
    inputs: dict[str, Shape],
    max_batch: int,
    opt_batch: int = 1,
    max_points: int = 1,
) -> Profile:
    """Graphs whose dynamic axes are the batch (and, for decoders, the point count,
    whose steady state is one padding point while tracking)."""
    shapes = {}
    for name, rest in inputs.items():
        if name in ("coords", "labels"):
            tail = rest[1:]
            shapes[name] = ((1, 1, *tail), (opt_batch, 1, *tail), (max_batch, max_points, *tail))
        else:
            shapes[name] = ((1, *rest), (opt_batch, *rest), (max_batch, *rest))
    return Profile(shapes)


def graph_profiles(geo: ModelGeometry, limits: BankLimits) -> dict[str, Profile]:
    """A profile for every exported graph (names as in the export manifest)."""
    from streamseg.backends.export import DECODER_VARIANTS, decoder_name

    s, h, c = geo.image_size, geo.feat_size, geo.hidden_dim
    feats = {"pix_feat": (c, h, h), "hr0": (c // 8, 4 * h, 4 * h), "hr1": (c // 4, 2 * h, 2 * h)}
    most_ptrs = limits.max_cond_frames + geo.max_obj_ptrs - 1
    profiles = {
        "image_encoder": batch_profile({"images": (3, s, s)}, limits.max_images),
        "memory_attention": memory_attention_profile(geo, limits),
        "memory_encoder": batch_profile(
            {"pix_feat": (c, h, h), "mask_for_mem": (1, s, s), "score_logits": (1,)},
            limits.max_objects,
            limits.steady_objects,
        ),
        "pointer_pos": Profile({"rel_pos": ((1,), (geo.max_obj_ptrs,), (most_ptrs,))}),
    }
    for multimask, with_mask in DECODER_VARIANTS:
        inputs = {**feats, "coords": (1, 2), "labels": (1,)}
        if with_mask:
            inputs["mask"] = (1, 4 * h, 4 * h)
        profiles[decoder_name(multimask, with_mask)] = batch_profile(
            inputs, limits.max_objects, limits.steady_objects, limits.max_points
        )
    return profiles


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What a serialized plan is tied to besides its graph and profile."""

    tensorrt: str
    gpu: str
    compute_capability: tuple[int, int]

    @property
    def slug(self) -> str:
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-")
        major, minor = self.compute_capability
        return f"trt{self.tensorrt}-{gpu}-sm{major}{minor}"

    @classmethod
    def current(cls, trt: Any) -> DeviceInfo:
        import torch

        major, minor = torch.cuda.get_device_capability()
        return cls(str(trt.__version__), torch.cuda.get_device_name(), (int(major), int(minor)))


def plan_cache_key(
    onnx_sha256: str,
    trt_version: str,
    gpu_name: str,
    compute_capability: tuple[int, int],
    precision: str,
    profile: Profile,
    workspace_bytes: int | None = None,
) -> str:
    """A plan is only valid for this exact graph, TensorRT, GPU, precision and profile,
    and the workspace cap decides which tactics the builder could pick. (An uncapped
    build keeps the key it had before the cap was part of it.)"""
    parts: dict[str, Any] = {
        "onnx": onnx_sha256,
        "trt": trt_version,
        "gpu": gpu_name,
        "sm": list(compute_capability),
        "precision": precision,
        "profile": profile.as_json(),
    }
    if workspace_bytes:
        parts["workspace"] = int(workspace_bytes)
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class PlanEntry:
    plan: str  # file name inside the plans folder
    key: str
    onnx_sha256: str
    profile: Profile
    device_memory: int | None = None  # engine.device_memory_size_v2, bytes per context


@dataclass(frozen=True)
class PlanManifest:
    """What `build-engine` built for one device: read back by the runtime to find its
    plans, and to refuse plans built for another GPU or TensorRT."""

    device: DeviceInfo
    precision: str
    limits: BankLimits
    graphs: dict[str, PlanEntry] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": PLAN_MANIFEST_SCHEMA,
            "tensorrt": self.device.tensorrt,
            "gpu": self.device.gpu,
            "compute_capability": list(self.device.compute_capability),
            "precision": self.precision,
            "limits": {k: getattr(self.limits, k) for k in BankLimits.__slots__},
            "graphs": {
                name: {"plan": e.plan, "key": e.key, "onnx_sha256": e.onnx_sha256,
                       "profile": e.profile.as_json(), "device_memory": e.device_memory}
                for name, e in sorted(self.graphs.items())
            },
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PlanManifest:
        if data.get("schema") != PLAN_MANIFEST_SCHEMA:
            raise ValueError(f"plan manifest schema {data.get('schema')} is not supported")
        cc = data["compute_capability"]
        return cls(
            device=DeviceInfo(data["tensorrt"], data["gpu"], (int(cc[0]), int(cc[1]))),
            precision=data["precision"],
            limits=BankLimits(**data["limits"]),
            graphs={
                name: PlanEntry(e["plan"], e["key"], e["onnx_sha256"],
                                Profile.from_json(e["profile"]), e.get("device_memory"))
                for name, e in data["graphs"].items()
            },
        )  # fmt: skip

    @staticmethod
    def path(plans_dir: Path, device: DeviceInfo) -> Path:
        return plans_dir / f"{device.slug}.json"

    def save(self, plans_dir: Path) -> Path:
        path = self.path(plans_dir, self.device)
        tmp = path.with_suffix(".json.partial")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, plans_dir: Path, device: DeviceInfo) -> PlanManifest:
        path = cls.path(plans_dir, device)
        if not path.is_file():
            raise BackendUnavailableError(
                f"no TensorRT plans for {device.gpu} / TensorRT {device.tensorrt} in "
                f"{plans_dir}; build them with `streamseg build-engine {plans_dir.parent}`"
            )
        return cls.from_json(json.loads(path.read_text()))


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    tmp.replace(path)


def build_engine(
    trt: Any,
    onnx_path: Path,
    profile: Profile,
    plans_dir: Path,
    device: DeviceInfo,
    precision: str,
    workspace_bytes: int | None = None,
) -> PlanEntry:
    """Build (or reuse) one serialized plan as a strongly typed network, with the
    activation memory a context of it needs (kept beside the plan)."""
    data = onnx_path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    key = plan_cache_key(sha, device.tensorrt, device.gpu, device.compute_capability,
                         precision, profile, workspace_bytes)  # fmt: skip
    plan_name = f"{onnx_path.stem}-{key}.plan"
    plan = plans_dir / plan_name
    facts = plan.with_suffix(".json")
    if plan.is_file():
        known = json.loads(facts.read_text()) if facts.is_file() else {}
        return PlanEntry(plan_name, key, sha, profile, known.get("device_memory"))
    plans_dir.mkdir(parents=True, exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:  # always on (and the flag ignored) from TensorRT 11
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    timing_path = plans_dir / f"timing-{device.slug}.cache"
    cache = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(cache, False)
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    missing = set(names) - set(profile.shapes)
    if missing:
        raise ValueError(f"{onnx_path.name}: no profile shapes for inputs {sorted(missing)}")
    opt_profile = builder.create_optimization_profile()
    for name in names:
        lo, opt, hi = profile.shapes[name]
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build {onnx_path} (see the log above)")
    _write_atomic(timing_path, bytes(config.get_timing_cache().serialize()))
    memory = _plan_device_memory(trt, logger, serialized)
    _write_atomic(facts, json.dumps({"device_memory": memory}).encode())
    _write_atomic(plan, bytes(serialized))  # last: its presence means done
    return PlanEntry(plan_name, key, sha, profile, memory)


def _plan_device_memory(trt: Any, logger: Any, serialized: Any) -> int | None:
    """Deserialize the fresh plan once to read what a context of it will need."""
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    return None if engine is None else engine_device_memory(engine)


def build_plans(
    export_dir: Path,
    limits: BankLimits,
    plans_dir: Path | None = None,
    workspace_bytes: int | None = None,
) -> PlanManifest:
    """Build a plan for every graph of an export folder (into `<folder>/plans/`) and
    write the device's plan manifest. Plans already built for the same key are reused."""
    from streamseg.backends.export import read_manifest

    trt = require_tensorrt()
    manifest = read_manifest(export_dir)
    geo = ModelGeometry(**manifest["geometry"])
    profiles = graph_profiles(geo, limits)
    plans_dir = plans_dir or export_dir / "plans"
    device = DeviceInfo.current(trt)
    entries = {
        name: build_engine(trt, export_dir / entry["file"], profiles[name], plans_dir, device,
                           entry.get("precision", manifest["precision"]), workspace_bytes)
        for name, entry in manifest["graphs"].items()
    }  # fmt: skip
    result = PlanManifest(device, manifest["precision"], limits, entries)
    result.save(plans_dir)
    return result


# --- command line (wired into `streamseg build-engine` by cli.py) -------------------------


def add_build_engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("export_dir", help="a folder written by `streamseg export` (fp16 or fp32)")
    parser.add_argument("--plans-dir", default=None, help="default: <export_dir>/plans")
    defaults = BankLimits()
    parser.add_argument("--max-cond-frames", type=int, default=defaults.max_cond_frames)
    parser.add_argument("--max-objects", type=int, default=defaults.max_objects)
    parser.add_argument(
        "--steady-objects", type=int, default=defaults.steady_objects,
        help="object count the plans are tuned for (profile opt)",
    )  # fmt: skip
    parser.add_argument("--max-images", type=int, default=defaults.max_images)
    parser.add_argument("--max-points", type=int, default=defaults.max_points)
    parser.add_argument("--workspace-gb", type=float, default=None, help="builder workspace cap")


def limits_from_args(args: argparse.Namespace) -> BankLimits:
    return BankLimits(
        max_cond_frames=args.max_cond_frames,
        max_objects=args.max_objects,
        steady_objects=args.steady_objects,
        max_images=args.max_images,
        max_points=args.max_points,
    )


def build_engine_main(args: argparse.Namespace) -> int:
    """`streamseg build-engine`: exit status 2 with a one-line reason when TensorRT,
    CUDA or the export folder is missing."""
    export_dir = Path(args.export_dir)
    try:
        limits = limits_from_args(args)
        if not (export_dir / "manifest.json").is_file():
            raise BackendUnavailableError(
                f"{export_dir} has no manifest.json; run `streamseg export` first"
            )
        workspace = int(args.workspace_gb * 2**30) if args.workspace_gb else None
        plans = Path(args.plans_dir) if args.plans_dir else None
        result = build_plans(export_dir, limits, plans, workspace)
    except (BackendUnavailableError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    plans_dir = plans or export_dir / "plans"
    for name, entry in result.graphs.items():
        memory = "?" if entry.device_memory is None else f"{entry.device_memory / 2**20:.0f} MiB"
        print(f"{name}: {plans_dir / entry.plan} (activations {memory})")
    return 0
