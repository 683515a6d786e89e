from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from streamseg.bench.capacity import interval_capacity
from streamseg.bench.report import (
    BenchReportError,
    format_comparison,
    format_tables,
    load_report,
    problems,
)

FIXTURE = Path(__file__).parent / "fixtures" / "report.json"
# A real report with the source-rate video figures and interval cells (N = 1, 2).
INTERVALS = Path(__file__).parent / "fixtures" / "report_interval.json"


def _report(path: Path = FIXTURE) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(path.read_text())
    return report


def test_fixture_has_no_problems_and_renders() -> None:
    report = _report()
    assert list(problems(report)) == []
    text = format_tables(report)
    assert "test@128 torch 160x120 2s×1t" in text and "failed: CellError" in text
    assert "encoder" in text and "mem.attn" in text


def test_source_rate_and_interval_tables() -> None:
    report = _report(INTERVALS)
    assert list(problems(report)) == []
    text = format_tables(report)
    assert "source-rate video" in text and "in→out p50" in text and "age p50" in text
    assert "test@128 torch 160x120 2s×1t N=2" in text
    capacity = text.split("interval inference")[1].splitlines()
    rows = [line for line in capacity if line.startswith("test@128 torch 160x120 1t")]
    assert [line.split()[4] for line in rows] == ["1", "2"]  # one row per N
    # The report stores the capacity; recomputing it from the cells gives the same.
    assert report["interval_capacity"] == interval_capacity(report["cells"])
    old = _report()  # from before the source-rate columns: no video table, still valid
    assert "source-rate video" not in format_tables(old) and list(problems(old)) == []


def test_problems_in_the_source_rate_figures() -> None:
    report = _report(INTERVALS)
    video = report["cells"][0]["result"]["source_rate"]
    video["video_fps"]["max"] = 1000.0
    video["in_to_out_ms"]["p99"] = math.inf
    video["mask_age_ms"] = None
    video["stages_ms"]["propagate"]["mean"] = 10 * video["stages_ms"]["overlay"]["mean"]
    found = list(problems(report))
    assert any("more than came in" in p for p in found)
    assert any("in->out p99" in p for p in found) and any("mask age" in p for p in found)
    assert any("propagation took longer" in p for p in found)


def test_interval_capacity_takes_the_most_streams_that_kept_up() -> None:
    report = _report(INTERVALS)
    rows = copy.deepcopy(report["cells"])
    for row in rows:  # every cell kept up: the two-stream cells are the capacity
        frames = row["result"]["frames"]
        frames["frames_processed"] = frames["frames_received"] // row["spec"]["interval"]
        row["result"]["source_rate"]["video_fps_per_stream"]["median"] = 30.0
    got = {e["interval"]: e["streams"] for e in interval_capacity(rows)}
    assert got == {1: 2, 2: 2}
    frames = rows[2]["result"]["frames"]  # N=1, two streams: the model fell behind
    frames["frames_processed"] = frames["frames_received"] // 2
    by_n = {e["interval"]: e for e in interval_capacity(rows)}
    assert by_n[1]["streams"] == 1 and by_n[1]["tried"] == [1, 2]
    for row in rows:
        row["result"]["source_rate"]["video_fps_per_stream"]["median"] = 5.0  # video too slow
    assert all(e["streams"] is None for e in interval_capacity(rows))
    assert "none kept up" in format_tables({**report, "cells": rows, "interval_capacity": None})


def test_problems_name_figures_that_are_not_measurements() -> None:
    report = _report()
    result = report["cells"][0]["result"]
    result["stages_ms"]["decoder"]["p95"] = math.nan
    result["fps"]["median"] = 0.0
    found = list(problems(report))
    assert any("decoder p95" in p for p in found) and any("fps" in p for p in found)
    report = _report()
    report["cells"][0]["result"]["stages_ms"]["send"]["mean"] = 5000.0
    assert any("more than capture->sent" in p for p in problems(report))


def test_compare_prints_the_change_per_matching_cell() -> None:
    old, new = _report(), _report()
    new["cells"][0]["result"]["fps"]["median"] *= 1.5
    text = format_comparison(old, new)
    assert "+50%" in text
    other = copy.deepcopy(new)
    for row in other["cells"]:
        row["key"] += "|elsewhere"
    assert "no cell of this run" in format_comparison(old, other)


def test_load_report_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    assert load_report(FIXTURE)["schema"] == 1
    for name, body in [("a.json", "{"), ("b.json", '{"schema": 99}'), ("c.json", "[]"),
                       ("d.json", '{"schema": 1}')]:  # fmt: skip
        (tmp_path / name).write_text(body)
        with pytest.raises(BenchReportError):
            load_report(tmp_path / name)
    with pytest.raises(BenchReportError):
        load_report(tmp_path / "missing.json")
