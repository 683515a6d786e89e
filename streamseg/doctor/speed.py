"""How fast the streaming tracker steps: ms per frame (p50, p99) and peak memory, as
`bench tracker` measures the tracker (640x480 frames, preprocessing and the masks'
copy to the host included, warm-up frames excluded); eager, then compiled by
`CompiledTorchGraphs` (inductor), then the same with CUDA graphs."""

from __future__ import annotations

import contextlib
import resource
import shutil
import statistics
import time
from typing import Any

import torch

from streamseg.backends.base import SamGraphs
from streamseg.backends.compiled import CompiledTorchGraphs
from streamseg.backends.torch_graphs import EncoderOutputs, TorchGraphs
from streamseg.doctor.parity import TOLERANCES
from streamseg.doctor.plan import SHORT_DTYPES, DoctorConfig, ModelSpec, Task, check_name
from streamseg.doctor.report import Row, fail, judged, skip
from streamseg.doctor.tracking import (
    TrackRun,
    agreement,
    build,
    frames,
    percentile_ms,
    track,
)
from streamseg.model.tracker import TrackerSettings


def _settings(dtype: str) -> TrackerSettings:
    return TrackerSettings(autocast_dtype=None if dtype == "float32" else dtype)


def _timed(
    graphs: SamGraphs, device: torch.device, config: DoctorConfig, objects: int, dtype: str
) -> tuple[TrackRun, dict[str, Any]]:
    video = frames(config.speed_frames)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    run = track(graphs, video, objects, _settings(dtype))
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
    model = build(spec, device)
    base = check_name(Task("speed"), config)
    rows = []
    for dtype in config.dtypes:
        for objects in config.objects:
            check = f"{base} {SHORT_DTYPES[dtype]} {objects} obj"
            if dtype != "float32" and device.type != "cuda":
                rows.append(skip("speed", check, "autocast runs on CUDA only (--dtype)"))
                continue
            start = time.perf_counter()
            run, numbers = _timed(TorchGraphs(model), device, config, objects, dtype)
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
    elif not any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")):
        return "no C++ compiler for inductor's CPU code (g++)"
    return None


class ReplayedGraphs(CompiledTorchGraphs):
    """Compiled with CUDA graphs (mode reduce-overhead). A graph's outputs live in its
    own memory pool and are overwritten by its next replay, but the tracker keeps image
    features for 8 frames and memory across steps: each call starts a new step and
    returns copies."""

    def run_image_encoder(self, images: torch.Tensor) -> EncoderOutputs:
        torch.compiler.cudagraph_mark_step_begin()
        high_res_0, high_res_1, embed, pos = super().run_image_encoder(images)
        return high_res_0.clone(), high_res_1.clone(), embed.clone(), pos.clone()

    def attend_memory(
        self,
        curr: torch.Tensor,
        curr_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_obj_ptr_tokens: int,
    ) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return super().attend_memory(curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens).clone()


def _compiled(model: Any, mode: str, dtype: str, max_batch: int) -> CompiledTorchGraphs:
    """The torch backend compiled as streamseg compiles it (`CompiledTorchGraphs`), its
    variants compiled up front under the autocast the tracker will run."""
    if mode == "reduce-overhead":
        graphs: CompiledTorchGraphs = ReplayedGraphs(model, mode=mode)
    else:
        graphs = CompiledTorchGraphs(model)
    autocast = (
        torch.autocast(graphs.device.type, dtype=getattr(torch, dtype))
        if dtype != "float32" and graphs.device.type == "cuda"
        else contextlib.nullcontext()
    )
    with autocast:
        graphs.warm_up(max_batch)
    return graphs


def compile_rows(config: DoctorConfig, mode: str) -> list[Row]:
    spec = ModelSpec.parse(config.speed)
    device = torch.device(config.device)
    dtype = config.compile_dtype
    base = check_name(Task("compile", mode), config)
    reason = compile_support(device)
    if reason is not None:
        return [skip("compile", base, reason)]
    start = time.perf_counter()
    try:
        graphs = _compiled(build(spec, device), mode, dtype, max(config.objects))
    except Exception as exc:  # dynamo or inductor refused: a row, never a crash
        return [fail("compile", base, f"torch.compile failed: {type(exc).__name__}: {exc}")]
    warm_s = time.perf_counter() - start
    eager = TorchGraphs(build(spec, device))
    rows = []
    for objects in config.objects:
        check = f"{base} {objects} obj"
        start = time.perf_counter()
        compiled_before = graphs.compile_s
        try:
            run, numbers = _timed(graphs, device, config, objects, dtype)
        except Exception as exc:  # a shape the warm-up did not compile, say
            rows.append(fail("compile", check, f"{type(exc).__name__}: {exc}"))
            continue
        numbers["warm_up_compile_s"] = round(warm_s, 1)
        numbers["compile_s_while_tracking"] = round(graphs.compile_s - compiled_before, 1)
        numbers["graphs_compiled"] = dict(graphs.compiles)
        reference = track(eager, frames(config.speed_frames), objects, _settings(dtype))
        tolerance = TOLERANCES[dtype].scaled(config.tolerance_scale)
        agreed = agreement(reference, run)
        numbers["vs_eager"] = agreed.as_json()
        problems = tolerance.problems(agreed) + ([] if run.finite() else ["non-finite logits"])
        summary = (
            f"{_describe(numbers)}; compiling {warm_s:.0f} s up front"
            f" + {numbers['compile_s_while_tracking']:.0f} s while tracking; "
            f"vs eager IoU min {agreed.min_iou:.4f}"
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
