"""How far a backend's tracking drifts from the reference's on the same frames.

Three views, because random weights exaggerate drift (their mask logits sit near zero,
so a small change flips pixels, and a flipped mask enters the memory and is carried):
- free-running: each backend tracks on its own; masks (IoU) and low-res logits
  (Pearson correlation, largest difference) are compared frame by frame;
- one step: the candidate steps a copy of the reference tracker's state, so both
  threshold logits computed from the same memory and only one step's error shows;
- per graph: every graph call the reference tracker made is replayed on the
  candidate with the same inputs (relative error of each output).
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch

from streamseg.backends.base import DecoderOutput, ImageFeatures, SamGraphs
from streamseg.model.tracker import StreamTracker, TrackResult


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """The tensors of a graph's output (features, decoder output, tuples)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, ImageFeatures):
        yield from (value.high_res_0, value.high_res_1, value.embed)
    elif isinstance(value, DecoderOutput):
        yield from (value.low_res_logits, value.iou, value.obj_ptr, value.object_score_logits)
    elif isinstance(value, tuple):
        for item in value:
            yield from _tensors(item)


def relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    """mean |difference| / mean |reference|."""
    scale = float(reference.float().abs().mean())
    return float((other.float() - reference.float()).abs().mean()) / max(scale, 1e-12)


RECORDED = ("encode_image", "decode", "attend_memory", "encode_memory")
Call = tuple[str, tuple[Any, ...], dict[str, Any], Any]


class RecordingGraphs:
    """The reference graphs, keeping every graph call of the current step (method,
    inputs, output) so the same calls can be replayed on another backend. Everything
    else is the wrapped graphs' own; `as_graphs` is the view a tracker takes."""

    def __init__(self, graphs: SamGraphs) -> None:
        self.inner = graphs
        self.calls: list[Call] = []

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copying): never delegate to itself
            raise AttributeError(name)
        attr = getattr(self.inner, name)
        if name not in RECORDED:
            return attr

        def recorded(*args: Any, **kwargs: Any) -> Any:
            out = attr(*args, **kwargs)
            self.calls.append((name, args, kwargs, out))
            return out

        return recorded

    def as_graphs(self) -> SamGraphs:
        return cast(SamGraphs, self)


def replay(calls: list[Call], graphs: SamGraphs) -> dict[str, float]:
    """The largest relative output error per graph, the calls run on `graphs`."""
    worst: dict[str, float] = {}
    with torch.inference_mode():
        for name, args, kwargs, expected in calls:
            got = getattr(graphs, name)(*args, **kwargs)
            pairs = zip(_tensors(expected), _tensors(got), strict=True)
            error = max(relative_error(e, g) for e, g in pairs)
            worst[name] = max(worst.get(name, 0.0), error)
    return worst


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two logit maps (1.0 for two constant equal maps)."""
    x, y = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    if denom == 0.0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float((x * y).sum() / denom)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


@dataclass
class Agreement:
    """Track-by-track agreement of a candidate's results with the reference's."""

    ious: list[float] = field(default_factory=list)
    correlations: list[float] = field(default_factory=list)
    max_abs_logit: float = 0.0

    def add(self, reference: TrackResult, other: TrackResult) -> None:
        self.ious.append(iou(reference.mask, other.mask))
        self.correlations.append(correlation(reference.low_res_logits, other.low_res_logits))
        diff = np.abs(reference.low_res_logits - other.low_res_logits).max()
        self.max_abs_logit = max(self.max_abs_logit, float(diff))

    def add_tracks(self, reference: dict[int, TrackResult], other: dict[int, TrackResult]) -> None:
        if set(reference) != set(other):
            raise ValueError(f"tracks differ: {sorted(reference)} vs {sorted(other)}")
        for track_id, track in reference.items():
            self.add(track, other[track_id])

    def summary(self) -> dict[str, float]:
        return {
            "samples": len(self.ious),
            "iou_mean": statistics.fmean(self.ious),
            "iou_min": min(self.ious),
            "corr_mean": statistics.fmean(self.correlations),
            "corr_min": min(self.correlations),
            "max_abs_logit": self.max_abs_logit,
        }


@dataclass
class Drift:
    """One candidate's drift over a run (see the module docstring)."""

    free: Agreement = field(default_factory=Agreement)
    one_step: Agreement = field(default_factory=Agreement)
    graph_errors: dict[str, list[float]] = field(default_factory=dict)

    def add_graph_errors(self, errors: dict[str, float]) -> None:
        for name, error in errors.items():
            self.graph_errors.setdefault(name, []).append(error)

    def summary(self) -> dict[str, Any]:
        return {
            "free_running": self.free.summary(),
            "one_step": self.one_step.summary(),
            "graph_relative_error": {
                name: {"mean": statistics.fmean(v), "max": max(v)}
                for name, v in self.graph_errors.items()
            },
        }


def stepped_copy(
    reference: StreamTracker, recorder: RecordingGraphs, graphs: SamGraphs
) -> StreamTracker:
    """A copy of the reference tracker's whole state that runs on `graphs`."""
    return copy.deepcopy(reference, memo={id(recorder): graphs})
