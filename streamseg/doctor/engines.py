"""Exported engines against torch: the FP16 ONNX export, ONNX Runtime on each of its
execution providers, and native TensorRT plans (`build-engine` + its runtime). Each
is compared graph by graph on fixed inputs and as a tracker over generated frames,
and timed per graph and per tracking step."""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from streamseg.backends.base import SamGraphs
from streamseg.backends.torch_graphs import TorchGraphs
from streamseg.backends.trt_build import BackendUnavailableError, BankLimits
from streamseg.doctor.plan import DoctorConfig, ModelSpec, Task, check_name
from streamseg.doctor.report import PASS, Row, fail, judged, skip
from streamseg.doctor.tracking import Tolerance, agreement, build, frames, percentile_ms, track

# Relative to max(1, |torch|) per output. ONNX Runtime's CPU provider stays within
# 9.5e-4 (tests/backends/test_export_onnx.py); GPU FP16 kernels round more.
GRAPH_REL_LIMIT = 2e-2
# The FP16 export as a tracker: ONNX Runtime CPU measured IoU >= 0.996 over 30 frames
# (balanced IoU >= 0.994 and |Δlogit| <= 2.7e-4 on the test model over 12).
TRACKER_LIMIT = Tolerance(min_iou=0.95, min_balanced_iou=0.85, max_dlogit=1.0)
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
OBJECTS = 3


def export_folder(config: DoctorConfig) -> Path:
    return Path(config.workdir) / "export-fp16"


def export_rows(config: DoctorConfig, spec_text: str) -> list[Row]:
    spec = ModelSpec.parse(spec_text)
    check = check_name(Task("export", spec_text), config)
    if importlib.util.find_spec("onnx") is None:
        return [skip("export", check, "the onnx package is not installed (streamseg[onnx])")]
    from streamseg.backends.export import export_precisions

    start = time.perf_counter()
    folder = export_folder(config)
    manifest = export_precisions(build(spec), spec.name, {"fp16": folder})["fp16"]
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    numbers = {
        "graphs": len(manifest["graphs"]),
        "mib": round(size / 2**20, 1),
        "opset": manifest["opset"],
        "export_s": round(seconds, 1),
    }
    summary = (
        f"{numbers['graphs']} graphs, {numbers['mib']} MiB, opset {numbers['opset']}, "
        f"in {seconds:.0f} s"
    )
    return [Row("export", check, PASS, summary, numbers=numbers, seconds=seconds)]


Case = Callable[[SamGraphs], list[torch.Tensor]]


def _timed_ms(call: Case, graphs: SamGraphs, device: torch.device) -> float:
    samples = []
    for _ in range(10 if device.type == "cuda" else 3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        call(graphs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def graph_cases(reference: SamGraphs, device: torch.device) -> dict[str, Case]:
    """One call per graph on fixed inputs. Inputs after the image encoder come from
    torch's outputs, so a graph's error is its own, not its predecessor's."""
    geo = reference.geometry
    gen = torch.Generator().manual_seed(0)
    s, hw, cm = geo.image_size, geo.feat_size**2, geo.mem_dim
    ptrs = 16 * (geo.hidden_dim // cm)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device)

    images = rand(1, 3, s, s)
    with torch.inference_mode():
        f = reference.encode_image(images)
    high = (f.high_res_0, f.high_res_1)
    coords = torch.tensor([[[0.3 * s, 0.4 * s], [0.6 * s, 0.5 * s]]], device=device)
    labels = torch.tensor([[1, 0]], dtype=torch.int32, device=device)
    prev = rand(1, 1, 4 * geo.feat_size, 4 * geo.feat_size)
    curr, pos = f.embed.flatten(2).permute(2, 0, 1), f.pos.flatten(2).permute(2, 0, 1)
    memory, memory_pos = rand(7 * hw + ptrs, 1, cm), rand(7 * hw + ptrs, 1, cm)
    mask = rand(1, 1, s, s) * 10

    def decoded(g: SamGraphs, points: bool, previous: bool, multi: bool) -> list[torch.Tensor]:
        out = g.decode(
            f.embed,
            high,
            coords if points else None,
            labels if points else None,
            prev if previous else None,
            multi,
        )
        return [out.low_res_logits, out.iou, out.obj_ptr, out.object_score_logits]

    rel_pos = torch.tensor([1.0, 3.0, 7.0], device=device) / 15
    return {
        "image_encoder": lambda g: list(_features(g.encode_image(images))),
        "decoder (tracking: no prompt)": lambda g: decoded(g, False, False, False),
        "decoder (2 points, multimask)": lambda g: decoded(g, True, False, True),
        "decoder (points + previous mask)": lambda g: decoded(g, True, True, False),
        "memory_attention (7 memories, 16 pointers)": lambda g: [
            g.attend_memory(curr, pos, memory, memory_pos, ptrs)
        ],
        "memory_encoder": lambda g: list(
            g.encode_memory(f.embed, mask, torch.ones(1, 1, device=device))
        ),
        "pointer_pos": lambda g: [g.pointer_time_embedding(rel_pos)],
    }


def _features(f: Any) -> tuple[torch.Tensor, ...]:
    return (f.high_res_0, f.high_res_1, f.embed, f.pos)


def _relative(expected: list[torch.Tensor], got: list[torch.Tensor]) -> float:
    worst = 0.0
    for e, g in zip(expected, got, strict=True):
        if e.shape != g.shape:
            raise ValueError(f"output shape {tuple(g.shape)} != torch's {tuple(e.shape)}")
        diff = float((e.float() - g.float()).abs().max())
        worst = max(worst, diff / max(1.0, float(e.float().abs().max())))
    return worst


def compare_backends(
    part: str, name: str, reference: SamGraphs, candidate: SamGraphs, config: DoctorConfig
) -> list[Row]:
    """Two rows: graph by graph, then the tracker over `engine_frames` frames."""
    device = torch.device(config.device)
    start = time.perf_counter()
    cases = graph_cases(reference, device)
    limit = GRAPH_REL_LIMIT * config.tolerance_scale
    details, numbers, problems = [], {}, []
    with torch.inference_mode():
        for graph, call in cases.items():
            rel = _relative(call(reference), call(candidate))
            ms_ref, ms = _timed_ms(call, reference, device), _timed_ms(call, candidate, device)
            numbers[graph] = {
                "rel_error": float(f"{rel:.3g}"),
                "ms": round(ms, 3),
                "torch_ms": round(ms_ref, 3),
            }
            details.append(f"{graph}: rel Δ {rel:.1e}, {ms:.2f} ms (torch fp32 {ms_ref:.2f} ms)")
            if not rel <= limit:
                problems.append(f"{graph} rel Δ {rel:.1e} > {limit:.1e}")
    worst = max(numbers, key=lambda g: numbers[g]["rel_error"])
    summary = f"worst rel Δ {numbers[worst]['rel_error']:.1e} ({worst}), {len(numbers)} graphs"
    graphs_row = judged(
        part,
        f"{name} graphs vs torch",
        problems,
        summary,
        numbers=numbers,
        limits={"rel_error": limit},
        details=details,
        seconds=time.perf_counter() - start,
    )
    start = time.perf_counter()
    video = frames(config.engine_frames)
    expected = track(reference, video, OBJECTS, late_object=True)
    got = track(candidate, video, OBJECTS, late_object=True)
    agreed = agreement(expected, got)
    warm = min(3, len(video) // 4)
    tolerance = TRACKER_LIMIT.scaled(config.tolerance_scale)
    step = {
        "ms_p50": round(percentile_ms(got.seconds[warm:], 50), 2),
        "torch_ms_p50": round(percentile_ms(expected.seconds[warm:], 50), 2),
    }
    summary = (
        f"{agreed.describe()}; step p50 {step['ms_p50']:.1f} ms "
        f"(torch fp32 {step['torch_ms_p50']:.1f} ms), {OBJECTS} objects"
    )
    problems = tolerance.problems(agreed) + ([] if got.finite() else ["non-finite logits"])
    tracker_row = judged(
        part,
        f"{name} tracker vs torch",
        problems,
        summary,
        numbers={**agreed.as_json(), **step, "frames": len(video)},
        limits=tolerance.as_json(),
        seconds=time.perf_counter() - start,
    )
    return [graphs_row, tracker_row]


def _reference(config: DoctorConfig, folder: Path) -> TorchGraphs:
    """Torch in full FP32 on the checked device, on the weights the export was made
    from (rebuilt from the seed and checked against the manifest)."""
    from streamseg.backends.export import read_manifest, weights_fingerprint

    model = build(ModelSpec.parse(config.engines), config.device)
    if weights_fingerprint(model) != read_manifest(folder)["weights"]:
        raise RuntimeError(f"{folder} was exported from other weights")
    torch.set_float32_matmul_precision("highest")
    return TorchGraphs(model)


def ort_rows(config: DoctorConfig, provider: str) -> list[Row]:
    name = check_name(Task("ort", provider), config)
    wanted = PROVIDERS[provider]
    if importlib.util.find_spec("onnxruntime") is None:
        return [skip("ort", name, "onnxruntime is not installed (onnxruntime-gpu on GPU hosts)")]
    import onnxruntime as ort

    available = ort.get_available_providers()
    if wanted not in available:
        hint = f"; onnxruntime-gpu for CUDA {torch.version.cuda} has it" if config.on_cuda else ""
        return [
            skip(
                "ort",
                name,
                f"onnxruntime {ort.__version__} has no {wanted} "
                f"(it has {', '.join(available)}){hint}",
            )
        ]
    folder = export_folder(config)
    reference = _reference(config, folder)
    candidate = _ort_graphs(folder, provider, torch.device(config.device), _limits(config))
    active = candidate.providers("image_encoder")
    if wanted not in active:
        return [fail("ort", name, f"{wanted} did not load: ONNX Runtime ran on {active}")]
    return compare_backends("ort", name, reference, candidate, config)


def _limits(config: DoctorConfig) -> BankLimits:
    return BankLimits(max_objects=max(OBJECTS, *config.objects), steady_objects=1, max_images=1)


def _ort_graphs(folder: Path, provider: str, device: torch.device, limits: BankLimits) -> Any:
    from streamseg.backends.onnx_graphs import OnnxGraphs, gpu_providers
    from streamseg.backends.tensorrt_graphs import CudaStream
    from streamseg.backends.trt_build import graph_profiles

    if provider == "cpu":
        return OnnxGraphs(folder)
    index = device.index or 0
    if provider == "cuda":  # the CUDA provider alone, on a stream of ours (as serve runs it)
        stream = CudaStream(torch.device("cuda", index))
        cuda = {"device_id": index, "user_compute_stream": str(stream.handle)}
        chain: list[str | tuple[str, dict[str, Any]]] = [
            ("CUDAExecutionProvider", cuda),
            "CPUExecutionProvider",
        ]
        return OnnxGraphs(folder, chain, device=torch.device("cuda", index), stream=stream)
    profiles = graph_profiles(OnnxGraphs.geometry_of(folder), limits)
    graphs = OnnxGraphs(
        folder, gpu_providers(folder, profiles, index), device=torch.device("cuda", index)
    )
    graphs.max_objects, graphs.max_images = limits.max_objects, limits.max_images
    return graphs


def tensorrt_rows(config: DoctorConfig) -> list[Row]:
    name = check_name(Task("tensorrt"), config)
    from streamseg.backends.trt_build import build_plans, require_tensorrt

    try:
        trt = require_tensorrt()
    except BackendUnavailableError as exc:
        return [skip("tensorrt", name, str(exc))]
    from streamseg.backends.tensorrt_graphs import TensorRTGraphs

    folder = export_folder(config)
    reference = _reference(config, folder)
    device = torch.device(config.device)
    start = time.perf_counter()
    with torch.cuda.device(device):
        plans = build_plans(folder, _limits(config))
    built_s = time.perf_counter() - start
    candidate = TensorRTGraphs(folder, device=device, plans=plans)
    rows = compare_backends("tensorrt", name, reference, candidate, config)
    rows[0].numbers["build_s"] = round(built_s, 1)
    rows[0].numbers["tensorrt"] = trt.__version__
    rows[0].details.insert(0, f"TensorRT {trt.__version__}: plans built in {built_s:.0f} s")
    return rows
