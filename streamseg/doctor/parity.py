"""Tracker parity: the streaming tracker on the checked device (FP32, bf16 and fp16
autocast, as `serve --dtype` runs it) against the torch path on the CPU in FP32, on
the same seeded weights, frames and prompts.

The limits come from the same comparison on a CPU with CPU autocast standing in for
CUDA's (test config and tiny at 256 px, 16 frames of 640x480, 3 objects): bf16 gave
IoU ≥ 0.989, balanced IoU ≥ 0.950 and max |Δlogit| ≤ 0.0092; fp16 ≥ 0.9987, ≥ 0.992
and ≤ 0.0009. FP32 on a GPU uses TF32 matmuls (a 10-bit mantissa, as fp16), so it
gets fp16's balanced limit. The limits leave room for GPU kernels rounding otherwise;
they are unverified on a GPU until the doctor has run on one.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from streamseg.backends.torch_graphs import TorchGraphs
from streamseg.doctor.plan import SHORT_DTYPES, DoctorConfig, ModelSpec
from streamseg.doctor.report import Row, judged, skip
from streamseg.doctor.tracking import (
    Tolerance,
    TrackRun,
    agreement,
    build,
    frames,
    track,
)
from streamseg.model.tracker import TrackerSettings

TOLERANCES = {
    "float32": Tolerance(min_iou=0.99, min_balanced_iou=0.95, max_dlogit=0.05),
    "float16": Tolerance(min_iou=0.98, min_balanced_iou=0.95, max_dlogit=0.1),
    "bfloat16": Tolerance(min_iou=0.95, min_balanced_iou=0.85, max_dlogit=0.25),
}
OBJECTS = 3


def parity_rows(config: DoctorConfig, spec_text: str) -> list[Row]:
    spec = ModelSpec.parse(spec_text)
    device = torch.device(config.device)
    video = frames(config.parity_frames)
    expected = track(TorchGraphs(build(spec)), video, OBJECTS, late_object=True)
    rows = []
    for dtype in ("float32", "bfloat16", "float16"):
        check = f"{spec} {SHORT_DTYPES[dtype]} vs CPU fp32"
        if dtype != "float32" and device.type != "cuda":
            rows.append(skip("parity", check, "autocast runs on CUDA only (--dtype)"))
            continue
        rows.append(_compare(config, spec, device, dtype, expected, video, check))
    return rows


def _compare(
    config: DoctorConfig,
    spec: ModelSpec,
    device: torch.device,
    dtype: str,
    expected: TrackRun,
    video: list[np.ndarray],
    check: str,
) -> Row:
    start = time.perf_counter()
    settings = TrackerSettings(autocast_dtype=None if dtype == "float32" else dtype)
    got = track(TorchGraphs(build(spec, device)), video, OBJECTS, settings, late_object=True)
    tolerance = TOLERANCES[dtype].scaled(config.tolerance_scale)
    agreed = agreement(expected, got)
    problems = tolerance.problems(agreed)
    if not got.finite():
        problems.insert(0, "non-finite logits")
    where = "the same path on the CPU" if device.type == "cpu" else str(device)
    return judged(
        "parity",
        check,
        problems,
        f"{agreed.describe()} [{where}]",
        numbers={
            **agreed.as_json(),
            "dtype": dtype,
            "frames": len(video),
            "objects": OBJECTS,
            "device": str(device),
        },
        limits=tolerance.as_json(),
        seconds=time.perf_counter() - start,
    )
