"""Run every cell (and its Meta reference) in a child process, with one progress bar,
and assemble the report. A cell that fails is reported with its reason; the rest run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from streamseg.bench.capacity import interval_capacity
from streamseg.bench.child import MARK
from streamseg.bench.machine import machine_info
from streamseg.bench.spec import CellSpec, cell_label
from streamseg.server.metrics import TRACKER_STAGES

REPORT_SCHEMA = 1
SOURCE_BOUND_DROPS = 0.02  # fewer drops than this: the model kept up, the source set the rate


@dataclass
class ChildOutcome:
    result: dict[str, Any] | None = None
    error: str | None = None


def planned_s(spec: CellSpec) -> float:
    return spec.warmup_s + spec.runs * spec.seconds


def run_child(kind: str, spec: CellSpec, bar: tqdm[Any], log_path: Path) -> ChildOutcome:
    """One child process; progress moves `bar` by at most this child's planned time."""
    outcome = ChildOutcome()
    base, budget = bar.n, planned_s(spec)
    with log_path.open("a") as log:
        log.write(f"--- {kind} {spec.key}\n")
        log.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamseg.bench.child", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(spec.to_json()))
        proc.stdin.close()
        for line in proc.stdout:
            if not line.startswith(MARK):
                log.write(line)
                continue
            message = json.loads(line[len(MARK) :])
            if "progress" in message:
                bar.update(base + min(budget, float(message["progress"])) - bar.n)
            outcome.result = message.get("result", outcome.result)
            outcome.error = message.get("error", outcome.error)
        code = proc.wait()
    bar.update(base + budget - bar.n)
    if outcome.result is None and outcome.error is None:
        outcome.error = f"the {kind} process exited with status {code} (see {log_path})"
    return outcome


def _done_line(label: str, row: dict[str, Any]) -> str:
    result = row["result"]
    if result is None:
        return f"{label}: failed: {row['error']}"
    fps, lat = result["fps"]["median"], result["capture_to_sent_ms"]["p50"]
    video = result["source_rate"]
    return (
        f"{label}: {fps:.2f} fps, capture->sent p50 {lat:.0f} ms; video "
        f"{video['video_fps']['median']:.2f} fps, in->out p99 {video['in_to_out_ms']['p99']:.0f} ms"
    )


def run_matrix(
    cells: list[CellSpec], reference: bool, log_path: Path, command: str
) -> dict[str, Any]:
    references: dict[str, ChildOutcome] = {}
    wanted_refs = {c.reference_key: c for c in cells} if reference else {}
    total = sum(planned_s(c) for c in cells) + sum(planned_s(c) for c in wanted_refs.values())
    started = time.time()
    rows = []
    with tqdm(
        disable=None,
        mininterval=0.5,
        total=round(total),
        unit="s",
        desc="bench",
        leave=True,
        bar_format="{desc} {bar} {percentage:3.0f}% [{elapsed}<{remaining}]",
    ) as bar:
        for spec in cells:
            label = cell_label(spec.to_json())
            bar.set_description_str(label)
            outcome = run_child("cell", spec, bar, log_path)
            ref_spec = wanted_refs.get(spec.reference_key)
            if ref_spec is not None and spec.reference_key not in references:
                bar.set_description_str(f"{label} (Meta reference)")
                references[spec.reference_key] = run_child("reference", ref_spec, bar, log_path)
            rows.append(_row(spec, outcome, references.get(spec.reference_key)))
            bar.write(_done_line(label, rows[-1]), file=sys.stderr)
    return {
        "schema": REPORT_SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "command": command,
        "machine": machine_info(),
        "cells": rows,
        "interval_capacity": interval_capacity(rows),
    }


# Preprocessing is left out: Meta's predictor resizes every frame before tracking starts.
MODEL_STAGES = tuple(s for s in TRACKER_STAGES if s != "preprocess")


def model_ms(result: dict[str, Any]) -> float:
    """Mean model time per frame (the batched encoder counted as its per-frame share)."""
    return sum(result["stages_ms"][s]["mean"] for s in MODEL_STAGES if s in result["stages_ms"])


def _row(spec: CellSpec, outcome: ChildOutcome, ref: ChildOutcome | None) -> dict[str, Any]:
    """A cell with its reference and two ratios: fps (only when the model, not the
    source, set the rate) and model time per frame (Meta's / ours, always)."""
    row: dict[str, Any] = {
        "key": spec.key,
        "spec": spec.to_json(),
        "error": outcome.error,
        "result": outcome.result,
        "reference": None,
        "ratio": None,
    }
    if ref is not None:
        row["reference"] = ref.result if ref.result is not None else {"error": ref.error}
    result = outcome.result
    if result is None:
        return row
    result["source_bound"] = result["drop_rate"] < SOURCE_BOUND_DROPS
    result["model_ms"] = model_ms(result)
    if ref is not None and ref.result is not None:
        fps = result["fps"]["median"] / ref.result["fps"]["median"]
        row["ratio"] = {
            "fps": None if result["source_bound"] else fps,
            "model_time": ref.result["frame_ms"]["mean"] / result["model_ms"],
        }
    return row
