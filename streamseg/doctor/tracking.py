"""What the checks share: building a seeded network, driving the streaming tracker
over generated frames with a fixed prompt script, and comparing two runs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from streamseg.backends.base import SamGraphs
from streamseg.doctor.plan import ModelSpec
from streamseg.media.synthetic import moving_scene, shape_boxes
from streamseg.model.tracker import FrameResult, StreamTracker, TrackerSettings

FRAME_HEIGHT, FRAME_WIDTH = 480, 640
SEED = 0


def build(spec: ModelSpec, device: str | torch.device = "cpu") -> Any:
    """The seeded random network on `device`, built as `serve` builds it (TF32 matmuls
    on a GPU); the same weights on every device."""
    from streamseg.model.build import build_network

    net = build_network(spec.name, weights="random", image_size=spec.size,
                        device=str(device), seed=SEED)  # fmt: skip
    return net.module


def frames(count: int) -> list[np.ndarray]:
    return moving_scene(count, FRAME_HEIGHT, FRAME_WIDTH, seed=SEED)


@dataclass(slots=True)
class TrackRun:
    """Per frame, per track: (mask, low-res logits); per frame: wall seconds of the
    step (prompts included) and the tracker's stage times."""

    outputs: list[dict[int, tuple[np.ndarray, np.ndarray]]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    stages: list[dict[str, float]] = field(default_factory=list)

    def finite(self) -> bool:
        return all(np.isfinite(lo).all() for out in self.outputs for _, lo in out.values())


def _centre(box: tuple[int, int, int, int]) -> list[list[float]]:
    x0, y0, x1, y1 = box
    return [[(x0 + x1) / 2, (y0 + y1) / 2]]


def track(
    graphs: SamGraphs,
    video: list[np.ndarray],
    objects: int,
    settings: TrackerSettings | None = None,
    late_object: bool = False,
) -> TrackRun:
    """Object 1 by a click and object 2 by a box on the first frame, object 3 by a
    click on the first frame or, with `late_object`, a third of the way in."""
    if not 1 <= objects <= 3:
        raise ValueError("objects must be 1..3 (the generated video has three shapes)")
    tracker = StreamTracker(graphs, settings)
    run = TrackRun()
    late_at = len(video) // 3 if late_object else 0
    for t, frame in enumerate(video):
        start = time.perf_counter()
        result: FrameResult = tracker.step(frame, seq=t)
        out = {tr.track_id: (tr.mask, tr.low_res_logits) for tr in result.tracks}
        boxes = shape_boxes(t, *frame.shape[:2])
        prompts: list[tuple[int, dict[str, Any]]] = []
        if t == 0:
            prompts.append((1, {"points": _centre(boxes[0]), "labels": [1]}))
            if objects >= 2:
                prompts.append((2, {"box": list(boxes[1])}))
        if objects == 3 and t == late_at:
            prompts.append((3, {"points": _centre(boxes[2]), "labels": [1]}))
        for track_id, prompt in prompts:
            res = tracker.add_prompt(track_id, **prompt).result
            out[track_id] = (res.mask, res.low_res_logits)
        run.seconds.append(time.perf_counter() - start)
        run.stages.append(result.times.as_dict())
        run.outputs.append(out)
    return run


@dataclass(frozen=True, slots=True)
class Agreement:
    """How closely `got` follows `expected`. `balanced_iou`: both runs' logits
    thresholded at the expected logits' median, so half of every mask is foreground
    (random weights give masks that cover most of the frame, where plain IoU says
    little)."""

    min_iou: float
    mean_iou: float
    min_balanced_iou: float
    max_dlogit: float
    foreground: float
    pairs: int

    def as_json(self) -> dict[str, float]:
        return {
            "min_iou": round(self.min_iou, 6),
            "mean_iou": round(self.mean_iou, 6),
            "min_balanced_iou": round(self.min_balanced_iou, 6),
            "max_abs_dlogit": float(f"{self.max_dlogit:.4g}"),
            "foreground": round(self.foreground, 4),
            "frame_track_pairs": self.pairs,
        }

    def describe(self) -> str:
        return (
            f"IoU min {self.min_iou:.4f} (mean {self.mean_iou:.4f}, balanced min "
            f"{self.min_balanced_iou:.4f}), max |Δlogit| {self.max_dlogit:.2e}, "
            f"{self.pairs} frame-tracks"
        )


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def agreement(expected: TrackRun, got: TrackRun) -> Agreement:
    ious, balanced, fg = [], [], []
    dlogit = 0.0
    if len(expected.outputs) != len(got.outputs):
        raise ValueError("the runs cover different frames")
    for e, g in zip(expected.outputs, got.outputs, strict=True):
        if set(e) != set(g):
            raise ValueError(f"the runs track different objects: {sorted(e)} vs {sorted(g)}")
        for k, (mask, logits) in e.items():
            other_mask, other_logits = g[k]
            ious.append(_iou(mask, other_mask))
            cut = float(np.median(logits))
            balanced.append(_iou(logits > cut, other_logits > cut))
            dlogit = max(dlogit, float(np.abs(logits - other_logits).max()))
            fg.append(float(mask.mean()))
    if not ious:
        raise ValueError("nothing to compare: no tracks")
    return Agreement(
        min(ious), float(np.mean(ious)), min(balanced), dlogit, float(np.mean(fg)), len(ious)
    )


@dataclass(frozen=True, slots=True)
class Tolerance:
    """Limits for an `Agreement`. Balanced IoU has its own, lower limit: half of each
    balanced mask's pixels lie near the threshold, where rounding flips them."""

    min_iou: float
    min_balanced_iou: float
    max_dlogit: float

    def scaled(self, factor: float) -> Tolerance:
        """`factor` 0 demands exact equality (the testing option)."""
        return Tolerance(
            1.0 - (1.0 - self.min_iou) * factor,
            1.0 - (1.0 - self.min_balanced_iou) * factor,
            self.max_dlogit * factor,
        )

    def problems(self, agreed: Agreement) -> list[str]:
        found = []
        if agreed.min_iou < self.min_iou:
            found.append(f"IoU {agreed.min_iou:.4f} < {self.min_iou:.4f}")
        if agreed.min_balanced_iou < self.min_balanced_iou:
            found.append(
                f"balanced IoU {agreed.min_balanced_iou:.4f} < {self.min_balanced_iou:.4f}"
            )
        if agreed.max_dlogit > self.max_dlogit:
            found.append(f"max |Δlogit| {agreed.max_dlogit:.2e} > {self.max_dlogit:.2e}")
        return found

    def as_json(self) -> dict[str, float]:
        return {
            "min_iou": self.min_iou,
            "min_balanced_iou": self.min_balanced_iou,
            "max_abs_dlogit": self.max_dlogit,
        }


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(seconds, q)) * 1000 if seconds else float("nan")
