"""Interval inference as capacity: per inference interval N, the most streams a cell
served while the model still kept up, so the figures compare at equal latency.

A cell keeps up when the model processed at least 90% of the frames its interval made
due (frames received / N: every stream got its model frame about every N frames, so
each waited about one step, not behind a queue; a due frame now and then replaced by
the next one under a shared CPU's hiccups does not count against it) and every
stream's video came back at 90% of the source's rate or more. Among those cells of
one setting (model, weights, backend, sizes, tracks, source, runtime), the one with the
most streams is that interval's capacity: streams × video fps delivered, with the
model fps it took and the latencies it had.
"""

from __future__ import annotations

from typing import Any

VIDEO_KEPT = 0.9  # video frames out per stream / source fps, at least
MODEL_KEPT = 0.9  # frames processed / (frames received / N), at least
_VARYING = ("streams", "interval")


def _group(spec: dict[str, Any]) -> tuple[Any, ...]:
    return tuple((k, spec[k]) for k in sorted(spec) if k not in _VARYING)


def kept_up(row: dict[str, Any]) -> bool:
    result = row["result"]
    if result is None or "source_rate" not in result:
        return False
    per_stream = result["source_rate"]["video_fps_per_stream"]["median"]
    return model_share(row) >= MODEL_KEPT and per_stream >= VIDEO_KEPT * row["spec"]["source_fps"]


def model_share(row: dict[str, Any]) -> float:
    """Frames the model processed over the frames the interval made due."""
    frames = row["result"]["frames"]
    due = frames["frames_received"] / row["spec"].get("interval", 1)
    return float(frames["frames_processed"] / due) if due > 0 else 0.0


def interval_capacity(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per setting and interval, in the order the cells came; `streams` is
    None when no cell of that interval kept up (`tried`: the streams measured)."""
    groups: dict[tuple[Any, ...], dict[int, list[dict[str, Any]]]] = {}
    for row in cells:
        spec = row["spec"]
        by_interval = groups.setdefault(_group(spec), {})
        by_interval.setdefault(spec.get("interval", 1), []).append(row)
    out = []
    for by_interval in groups.values():
        for interval, rows in sorted(by_interval.items()):
            tried = sorted(r["spec"]["streams"] for r in rows if r["result"] is not None)
            best = max(
                (r for r in rows if kept_up(r)), key=lambda r: r["spec"]["streams"], default=None
            )
            entry: dict[str, Any] = {"spec": rows[0]["spec"], "interval": interval, "tried": tried}
            if best is None:
                entry["streams"] = None
            else:
                result, video = best["result"], best["result"]["source_rate"]
                age = video["mask_age_ms"]
                entry.update(
                    streams=best["spec"]["streams"],
                    key=best["key"],
                    video_fps=video["video_fps"]["median"],
                    model_fps=result["fps"]["median"],
                    capture_to_sent_p50_ms=result["capture_to_sent_ms"]["p50"],
                    in_to_out_p99_ms=video["in_to_out_ms"]["p99"],
                    mask_age_p99_ms=None if age is None else age["p99"],
                )
            out.append(entry)
    return out
