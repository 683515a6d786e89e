"""How fast the streaming tracker steps: ms per frame (p50, p99) and peak memory, as
`bench tracker` measures the tracker (640x480 frames, preprocessing and the masks'
copy to the host included, warm-up frames excluded); eager, then compiled."""

from __future__ import annotations

import copy
import resource
import statistics
import time
from typing import Any

import torch

from streamseg.backends.torch_graphs import TorchGraphs
from streamseg.doctor.parity import TOLERANCES
from streamseg.doctor.plan import SHORT_DTYPES, DoctorConfig, ModelSpec, Task, check_name
from streamseg.doctor.report import Row, fail, judged, skip
from streamseg.doctor.tracking import (
    TrackRun,
    agreement,
    build,
    frames,
    percentile_ms,
    serve_precision,
    track,
)
from streamseg.model.tracker import TrackerSettings


def _settings(dtype: str) -> TrackerSettings:
    return TrackerSettings(autocast_dtype=None if dtype == "float32" else dtype)


def _timed(
    model: Any, device: torch.device, config: DoctorConfig, objects: int, dtype: str
) -> tuple[TrackRun, dict[str, Any]]:
    video = frames(config.speed_frames)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    run = track(TorchGraphs(model), video, objects, _settings(dtype))
    steady = run.seconds[config.speed_warmup :] or run.seconds
    numbers: dict[str, Any] = {
        "ms_p50": round(percentile_ms(steady, 50), 2),
        "ms_p99": round(percentile_ms(steady, 99), 2),
        "fps": round(1.0 / statistics.mean(steady), 2),
        "warmup_s": round(sum(run.seconds[: config.speed_warmup]), 2),
        "frames": len(run.seconds),
        "warmup_frames_excluded": len(run.seconds) - len(steady),
        "objects": objects,
        "dtype": dtype,
        "stage_ms_p50": {
            k: round(1000 * statistics.median(s[k] for s in run.stages[-len(steady) :]), 2)
            for k in run.stages[0]
        },
    }
    if device.type == "cuda":
        numbers["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    else:  # the check's own process: the model, its frames and the tracker
        numbers["peak_rss_mib"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        )
    return run, numbers


def _describe(numbers: dict[str, Any]) -> str:
    memory = (
        f"peak GPU {numbers['peak_gpu_mib']:.0f} MiB"
        if "peak_gpu_mib" in numbers
        else f"peak RSS {numbers['peak_rss_mib']:.0f} MiB"
    )
    return (
        f"p50 {numbers['ms_p50']:.1f} ms, p99 {numbers['ms_p99']:.1f} ms "
        f"({numbers['fps']:.1f} fps), {memory}; {numbers['frames']} frames, "
        f"{numbers['warmup_frames_excluded']} warm-up excluded"
    )


def eager_rows(config: DoctorConfig) -> list[Row]:
    spec = ModelSpec.parse(config.speed)
    device = torch.device(config.device)
    serve_precision(device)
    model = build(spec).to(device)
    base = check_name(Task("speed"), config)
    rows = []
    for dtype in config.dtypes:
        for objects in config.objects:
            check = f"{base} {SHORT_DTYPES[dtype]} {objects} obj"
            if dtype != "float32" and device.type != "cuda":
                rows.append(skip("speed", check, "autocast runs on CUDA only (--dtype)"))
                continue
            start = time.perf_counter()
            run, numbers = _timed(model, device, config, objects, dtype)
            problems = [] if run.finite() else ["non-finite logits"]
            rows.append(
                judged(
                    "speed",
                    check,
                    problems,
                    _describe(numbers),
                    numbers=numbers,
                    seconds=time.perf_counter() - start,
                )
            )
    return rows


def compile_support(device: torch.device) -> str | None:
    """Why this build cannot compile for `device` (None: it can)."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile is not supported by torch {torch.__version__} on this Python"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "no working Triton for this GPU (inductor's CUDA code generator)"
    return None


class _Replayed(torch.nn.Module):
    """A module compiled with CUDA graphs whose outputs outlive the next replay: the
    tracker keeps image features for 8 frames, and a graph's outputs are overwritten
    by its next replay, so each call starts a new step and returns copies."""

    def __init__(self, compiled: Any) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        from torch.utils._pytree import tree_map

        torch.compiler.cudagraph_mark_step_begin()
        out = self.compiled(*args, **kwargs)
        return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out)


def compile_model(model: Any, mode: str) -> None:
    """The image encoder (fixed shapes) and memory attention (memory length grows
    until the bank is full: dynamic) compiled in place, the two largest graphs."""
    options: dict[str, Any] = {} if mode == "default" else {"mode": mode}
    encoder = torch.compile(model.image_encoder, dynamic=False, **options)
    attention = torch.compile(model.memory_attention, dynamic=True, **options)
    if mode == "reduce-overhead":
        encoder, attention = _Replayed(encoder), _Replayed(attention)
    model.image_encoder, model.memory_attention = encoder, attention


def compile_rows(config: DoctorConfig, mode: str) -> list[Row]:
    spec = ModelSpec.parse(config.speed)
    device = torch.device(config.device)
    dtype = config.compile_dtype
    base = check_name(Task("compile", mode), config)
    reason = compile_support(device)
    if reason is not None:
        return [skip("compile", base, reason)]
    serve_precision(device)
    eager = build(spec).to(device)
    model = copy.deepcopy(eager)
    rows = []
    try:
        compile_model(model, mode)
    except Exception as exc:  # torch.compile itself refused: report, never crash
        return [fail("compile", base, f"torch.compile failed: {type(exc).__name__}: {exc}")]
    for objects in config.objects:
        check = f"{base} {objects} obj"
        start = time.perf_counter()
        try:
            run, numbers = _timed(model, device, config, objects, dtype)
        except Exception as exc:  # inductor/dynamo errors surface on the first call
            rows.append(fail("compile", check, f"{type(exc).__name__}: {str(exc)[:300]}"))
            continue
        reference = track(
            TorchGraphs(eager), frames(config.speed_frames), objects, _settings(dtype)
        )
        tolerance = TOLERANCES[dtype].scaled(config.tolerance_scale)
        agreed = agreement(reference, run)
        numbers["vs_eager"] = agreed.as_json()
        problems = tolerance.problems(agreed) + ([] if run.finite() else ["non-finite logits"])
        summary = (
            f"{_describe(numbers)}; first {numbers['warmup_frames_excluded']} frames "
            f"(compiling) {numbers['warmup_s']:.1f} s; vs eager IoU min {agreed.min_iou:.4f}"
        )
        rows.append(
            judged(
                "compile",
                check,
                problems,
                summary,
                numbers=numbers,
                limits=tolerance.as_json(),
                seconds=time.perf_counter() - start,
            )
        )
    return rows
