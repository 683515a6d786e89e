"""What the doctor runs: its settings (sent to each check's process as JSON), the model
specs it names, and the ordered list of tasks for a device."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

PARTS = ("cuda", "parity", "speed", "export", "ort", "tensorrt", "compile")
ORT_PROVIDERS = ("cpu", "cuda", "tensorrt")
COMPILE_MODES = ("default", "reduce-overhead")
DTYPES = ("float32", "bfloat16", "float16")
_SPEC = re.compile(r"^(?P<name>[a-z_]+)(?:@(?P<size>\d+))?$")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A registry variant at an image size (`tiny@256`; `test` alone: its own size)."""

    name: str
    size: int | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        match = _SPEC.match(text.strip())
        if match is None:
            raise ValueError(f"model spec {text!r}: expected NAME or NAME@SIZE, e.g. tiny@256")
        from streamseg.model.registry import get_variant

        variant = get_variant(match["name"])  # UnknownVariantError is a ValueError
        size = int(match["size"]) if match["size"] else None
        if size is not None and (size % 32 or not 64 <= size <= 2048):
            raise ValueError(f"model spec {text!r}: the size must be a multiple of 32, 64..2048")
        return cls(variant.name, size)

    @property
    def image_size(self) -> int:
        from streamseg.model.registry import get_variant

        return self.size or get_variant(self.name).image_size

    def __str__(self) -> str:
        return f"{self.name}@{self.image_size}"


@dataclass(slots=True)
class DoctorConfig:
    device: str  # "cpu", "cuda" or "cuda:N", resolved before any check runs
    parity: list[str]
    parity_frames: int
    speed: str
    speed_frames: int
    speed_warmup: int
    objects: list[int]
    dtypes: list[str]
    compile_modes: list[str]
    compile_dtype: str
    engines: str
    engine_frames: int
    workdir: str = ""
    tolerance_scale: float = 1.0  # testing: 0 demands exact equality
    inject_failure: str | None = None  # testing: "PART" raises in it, "PART:crash" exits
    parts: list[str] = field(default_factory=lambda: list(PARTS))

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DoctorConfig:
        return cls(**data)


def defaults(device: str) -> DoctorConfig:
    """On a GPU: what a user renting one wants to know (tiny at 1024 px, both
    precisions, compiled). On a CPU: the same checks small enough for CI."""
    if device.startswith("cuda"):
        return DoctorConfig(
            device=device,
            parity=["test", "tiny@256"],
            parity_frames=16,
            speed="tiny@1024",
            speed_frames=60,
            speed_warmup=10,
            objects=[1, 3],
            dtypes=["float32", "bfloat16"],
            compile_modes=list(COMPILE_MODES),
            compile_dtype="bfloat16",
            engines="tiny@1024",
            engine_frames=20,
        )
    return DoctorConfig(
        device=device,
        parity=["test"],
        parity_frames=12,
        speed="test",
        speed_frames=16,
        speed_warmup=4,
        objects=[1, 3],
        dtypes=["float32"],
        compile_modes=list(COMPILE_MODES),
        compile_dtype="float32",
        engines="test",
        engine_frames=12,
    )


@dataclass(frozen=True, slots=True)
class Task:
    """One check's process: `part` with `arg` (a model spec, provider or mode)."""

    part: str
    arg: str = ""
    needs: tuple[str, ...] = ()  # parts whose rows must all have passed first

    @property
    def label(self) -> str:
        return f"{self.part} {self.arg}".strip()


SHORT_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def compile_label(mode: str) -> str:
    return "CUDA graphs" if mode == "reduce-overhead" else f"compiled {mode}"


def check_name(task: Task, config: DoctorConfig) -> str:
    """The CHECK column for a task's own rows (one per dtype or object count adds to
    it) and for the row that stands in for them when it fails or is skipped."""
    if task.part == "cuda":
        return "CUDA visible"
    if task.part == "parity":
        return str(ModelSpec.parse(task.arg))
    if task.part == "speed":
        return f"{ModelSpec.parse(config.speed)} eager"
    if task.part == "compile":
        if task.arg == "none":
            return f"{ModelSpec.parse(config.speed)} torch.compile"
        dtype = SHORT_DTYPES[config.compile_dtype]
        return f"{ModelSpec.parse(config.speed)} {compile_label(task.arg)} {dtype}"
    engines = ModelSpec.parse(config.engines)
    if task.part == "export":
        return f"{engines} FP16 ONNX export"
    if task.part == "ort":
        return f"{engines} ORT {task.arg}"
    return f"{engines} TensorRT"


def skip_reason(task: Task, config: DoctorConfig) -> str | None:
    """Skips known from the settings alone, so no process is started for them."""
    gpu_only = {
        ("ort", "cuda"): "CUDAExecutionProvider",
        ("ort", "tensorrt"): "TensorrtExecutionProvider",
        ("tensorrt", ""): "TensorRT",
        ("compile", "reduce-overhead"): "CUDA graphs (compile mode reduce-overhead)",
    }
    needed = gpu_only.get((task.part, task.arg))
    if needed is not None and not config.on_cuda:
        return f"--device {config.device}: {needed} needs a GPU"
    if (task.part, task.arg) == ("ort", "cpu") and config.on_cuda:
        return "a GPU check runs ONNX Runtime's GPU providers (--device cpu runs this one)"
    if (task.part, task.arg) == ("compile", "none"):
        return "not asked for (--compile none)"
    return None


def tasks(config: DoctorConfig) -> list[Task]:
    """In order of what a user needs to know first: works, agrees, how fast, how fast
    compiled; then the engines; CUDA graphs (a second compile) last, so a spent time
    budget costs the least. On a GPU every check that runs on it needs the CUDA check
    to have passed."""
    wanted = set(config.parts)
    gpu: tuple[str, ...] = ("cuda",) if config.on_cuda and "cuda" in wanted else ()
    modes = config.compile_modes or ["none"]
    out: list[Task] = []
    if "cuda" in wanted:
        out.append(Task("cuda"))
    if "parity" in wanted:
        out += [Task("parity", spec, gpu) for spec in config.parity]
    if "speed" in wanted:
        out.append(Task("speed", "eager", gpu))
    if "compile" in wanted:
        out += [Task("compile", mode, gpu) for mode in modes[:1]]
    if "export" in wanted:
        out.append(Task("export", config.engines))
    if "ort" in wanted:
        out += [Task("ort", p, (*gpu, "export")) for p in ORT_PROVIDERS]
    if "tensorrt" in wanted:
        out.append(Task("tensorrt", "", (*gpu, "export")))
    if "compile" in wanted:
        out += [Task("compile", mode, gpu) for mode in modes[1:]]
    return out
