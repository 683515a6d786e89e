"""`streamseg bench backend` on the test config: torch FP32 against ONNX Runtime INT8
in one run, with its timings and drift in the table and the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamseg.cli import main

pytest.importorskip("onnxruntime")


def test_backend_bench_reports_times_and_drift(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "backend.json"
    rc = main(["bench", "backend", "--model", "test", "--weights", "random", "--image-size",
               "128", "--frames", "9", "--objects", "2", "--repeat", "1", "--precision", "int8",
               "--json", str(out)])  # fmt: skip
    assert rc == 0
    report = json.loads(out.read_text())
    assert list(report["tracking"]) == ["torch fp32", "onnx int8"]
    assert report["tracking"]["onnx int8"]["frames"] == 1  # frame 8 only: the bank is full
    assert set(report["graphs_ms"]["onnx int8"]) == set(report["graphs_ms"]["torch fp32"])
    drift = report["drift"]["onnx int8"]
    assert drift["free_running"]["samples"] == 9 * 2
    assert drift["one_step"]["samples"] == 8 * 2
    errors = drift["graph_relative_error"]
    assert 0.0 < errors["encode_image"]["max"] < 0.05  # quantized, within the bound
    assert errors["decode"]["max"] < 1e-4  # FP32 on the same inputs
    assert drift["free_running"]["corr_min"] > 0.99
    printed = capsys.readouterr().out
    assert "speed-up vs torch fp32" in printed and "one step from the reference's state" in printed
    assert "load average" in printed


def test_backend_bench_needs_a_full_memory_bank(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["bench", "backend", "--model", "test", "--frames", "5"])
    assert stop.value.code == 2
    assert "at least 9" in capsys.readouterr().err
