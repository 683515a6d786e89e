"""Is CUDA usable: the GPU torch sees, the driver, and one real computation on it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import torch

from streamseg.doctor.plan import DoctorConfig
from streamseg.doctor.report import PASS, Row, fail, judged, skip


def driver_version(index: int) -> str:
    """The driver release from nvidia-smi, else the CUDA driver API version torch
    reads (what the driver supports, not its release number)."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            done = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader", f"--id={index}"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            )
            return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        api = int(torch._C._cuda_getDriverVersion())  # type: ignore[attr-defined]
        return f"CUDA driver API {api // 1000}.{api % 1000 // 10} (no nvidia-smi)"
    except (AttributeError, RuntimeError):
        return "unknown"


def _why_no_cuda() -> str:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hint = f"; CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
    return (
        f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: no driver, "
        f"a driver older than CUDA {torch.version.cuda} needs, or no device{hint}"
    )


def cuda_rows(config: DoctorConfig) -> list[Row]:
    check = "CUDA visible"
    if not config.on_cuda:
        return [skip("cuda", check, f"--device {config.device}: CUDA not checked")]
    if not torch.cuda.is_available():
        return [fail("cuda", check, _why_no_cuda())]
    start = time.perf_counter()
    device = torch.device(config.device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    arch = f"sm_{props.major}{props.minor}"
    numbers = {
        "gpu": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "capability": arch,
        "driver": driver_version(index),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "arch_list": torch.cuda.get_arch_list(),
        "device_count": torch.cuda.device_count(),
    }
    problems = []
    try:
        numbers["matmul_rel_error"] = _matmul_error(device)
        if not numbers["matmul_rel_error"] < 1e-4:
            problems.append(f"a matmul on the GPU is off by {numbers['matmul_rel_error']:.1e}")
    except RuntimeError as exc:  # no kernel image for this GPU's arch, ECC, a lost context
        problems.append(f"a matmul on the GPU failed: {exc}")
    summary = (
        f"{props.name}, {numbers['memory_gib']} GiB, {arch}; driver {numbers['driver']}, "
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {numbers['cudnn']}"
    )
    row = judged(
        "cuda", check, problems, summary, numbers=numbers, seconds=time.perf_counter() - start
    )
    if row.status == PASS:
        row.details.append(f"{numbers['device_count']} GPU(s) visible; checking {device}")
    return [row]


def _matmul_error(device: torch.device) -> float:
    """One FP32 matmul (TF32 off: this check has its own process) on the GPU against
    the CPU in FP64: proves kernels for this GPU run."""
    torch.set_float32_matmul_precision("highest")
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 256, generator=gen), torch.randn(256, 256, generator=gen)
    got = (a.to(device) @ b.to(device)).cpu()
    want = a.double() @ b.double()
    return float((got.double() - want).abs().max() / want.abs().max())
