"""`streamseg bench tracker --compile`: a third tracker on compiled graphs in lockstep,
with its compile cost, stage times and drift against eager."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamseg.cli import main


@pytest.mark.slow
def test_tracker_bench_with_compile_reports_cost_stages_and_drift(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tracker.json"
    argv = ["bench", "tracker", "--model", "test", "--weights", "random", "--frames", "6",
            "--objects", "2", "--frame-size", "128x96", "--compile"]  # fmt: skip
    assert main([*argv, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    names = [r["name"] for r in report["results"]]
    assert names == ["streamseg StreamTracker", "streamseg + torch.compile",
                     "Meta SAM2VideoPredictor"]  # fmt: skip
    eager, compiled = report["results"][:2]
    for run in (eager, compiled):
        assert run["ms_p50"] > 0 and set(run["stage_ms_p50"]) >= {"encoder", "memory_attention"}
    drift = report["compile"]
    assert drift["compiled_during_run"] == 0  # two tracks in one batch: warmed up
    assert drift["frames_compared"] == 6 and drift["min_mask_iou"] >= 0.99
    assert drift["max_abs_logit"] < 1e-3 and drift["max_abs_feature"] < 1e-3
    assert len(report["load_average"]["before"]) == 3
    printed = capsys.readouterr().out
    assert "torch.compile: warm-up" in printed and "load average" in printed
