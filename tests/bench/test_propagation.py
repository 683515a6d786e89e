"""`streamseg bench propagation`: the ground-truth table and the per-frame cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamseg.bench.propagation import AGES, PLACERS
from streamseg.cli import main
from streamseg.media.synthetic import MOTIONS


def test_propagation_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "propagation.json"
    assert main(["bench", "propagation", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {(r["motion"], r["method"], r["codec"]): r["iou"] for r in report["quality"]}
    assert len(rows) == len(MOTIONS) * len(PLACERS) * 2
    for motion in MOTIONS:
        for codec in (False, True):
            warped, held = rows[(motion, "lk_similarity", codec)], rows[(motion, "hold", codec)]
            assert len(warped) == len(AGES)
            assert all(w > h for w, h in zip(warped, held, strict=True)), (motion, warped, held)
    cost = report["cost"]
    assert all(v > 0 for v in cost.values())
    assert cost["total_ms_p50"] >= cost["place_ms_p50"]
    assert "| rotate | lk_similarity |" in capsys.readouterr().out
