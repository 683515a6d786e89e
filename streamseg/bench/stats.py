"""Summaries of measured samples: percentiles of one run, spread across runs."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np

from streamseg.server.metrics import TRACKER_STAGES

# Per-frame stages in path order; a cell reports the ones its path has.
STAGES = ("decode", "slot_wait", "batch_wait", *TRACKER_STAGES, "mask_encode", "send")
# Stages that are consecutive parts of one frame's capture -> sent interval.
WITHIN_CAPTURE_TO_SENT = STAGES[1:]
# The source-rate video path (every incoming frame, newest masks moved onto it): moving
# the masks, composing the frame (`overlay` includes `propagate`); the viewer adds VP8.
SOURCE_RATE_STAGES = ("propagate", "overlay")


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean in milliseconds and the sample count."""
    if not seconds:
        raise ValueError("no samples")
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "mean": float(ms.mean()),
        "n": len(ms),
    }


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median and range of one figure over repeated runs."""
    if not values:
        raise ValueError("no runs")
    return {
        "median": float(statistics.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
        "runs": len(values),
    }


def is_real(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def thin(points: Sequence[tuple[float, float]], limit: int) -> list[tuple[float, float]]:
    """At most `limit` evenly spaced points (for plots); keeps the first and last."""
    if len(points) <= limit:
        return list(points)
    step = (len(points) - 1) / (limit - 1)
    return [points[round(i * step)] for i in range(limit)]
