from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from streamseg.bench.report import (
    BenchReportError,
    format_comparison,
    format_tables,
    load_report,
    problems,
)

FIXTURE = Path(__file__).parent / "fixtures" / "report.json"


def _report() -> dict[str, Any]:
    report: dict[str, Any] = json.loads(FIXTURE.read_text())
    return report


def test_fixture_has_no_problems_and_renders() -> None:
    report = _report()
    assert list(problems(report)) == []
    text = format_tables(report)
    assert "test@128 torch 160x120 2s×1t" in text and "failed: CellError" in text
    assert "encoder" in text and "mem.attn" in text


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
