"""The smallest cell end to end: real server, real PyAV source, real websocket clients,
Meta's predictor as reference; then the JSON, the table, the plot and --compare."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from streamseg.bench.report import load_report, problems
from streamseg.bench.stats import STAGES, WITHIN_CAPTURE_TO_SENT
from streamseg.cli import main
from streamseg.media.synthetic import write_h264

SMALLEST = ["bench", "--model", "test", "--image-size", "128", "--frame-size", "160x120",
            "--streams", "1", "--tracks", "1", "--seconds", "1.5", "--runs", "2",
            "--warmup", "0.5", "--threads", "1"]  # fmt: skip
PERCENTILES = {"p50", "p95", "p99", "mean", "n"}


def _real(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def smallest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("bench")
    rc = main([*SMALLEST, "--out", str(out)])
    assert rc == 0
    return out, (out / "bench.log").read_text()


def test_json_schema_and_every_figure_is_a_measurement(smallest: tuple[Path, str]) -> None:
    out, _ = smallest
    report = load_report(out / "bench.json")
    assert report["command"].startswith("streamseg bench --model test")
    machine = report["machine"]
    assert machine["cpu_count"] >= 1 and machine["versions"]["torch"] and "gpu" in machine
    (row,) = report["cells"]
    assert row["error"] is None and row["spec"]["weights"] == "random"
    result = row["result"]
    assert set(result["stages_ms"]) == set(STAGES)
    for name, figures in [*result["stages_ms"].items(), ("whole", result["capture_to_sent_ms"]),
                          ("tracker", result["tracker_ms"])]:  # fmt: skip
        assert set(figures) == PERCENTILES, name
        assert all(_real(figures[q]) for q in PERCENTILES), (name, figures)
        assert figures["p50"] <= figures["p95"] <= figures["p99"], (name, figures)
    assert set(result["webrtc_egress_ms"]) == {"overlay", "video_encode"}
    for figures in result["webrtc_egress_ms"].values():
        assert all(_real(figures[q]) for q in PERCENTILES)
    stages_mean = sum(result["stages_ms"][s]["mean"] for s in WITHIN_CAPTURE_TO_SENT)
    assert stages_mean <= result["capture_to_sent_ms"]["mean"]
    assert result["tracker_ms"]["mean"] <= result["capture_to_sent_ms"]["mean"]
    fps = result["fps"]
    assert fps["runs"] == 2 and 0 < fps["min"] <= fps["median"] <= fps["max"] < 1000
    frames = result["frames"]
    assert frames["frames_processed"] > 0
    # Counted over the measured window: a frame received just before it may be processed
    # inside it, one per stream at most.
    assert frames["frames_received"] + row["spec"]["streams"] >= frames["frames_processed"]
    assert 0 <= result["drop_rate"] < 1 and result["measured_s"] >= 3.0
    assert result["warmup_s"] >= 0.5 and _real(result["peak_rss_mb"])
    assert result["stage_timing"] == "wall-clock" and result["gpu_peak_mb"] is None
    assert "random" in result["model"]["description"]
    times = [t for t, _ in result["latency_series"]]
    assert times == sorted(times) and all(_real(ms) for _, ms in result["latency_series"])
    _check_source_rate(result, row["spec"])
    reference = row["reference"]
    assert _real(reference["fps"]["median"]) and reference["frames_measured"] >= 4
    assert _real(row["ratio"]["model_time"])
    assert list(problems(report)) == []


def _check_source_rate(result: dict[str, Any], spec: dict[str, Any]) -> None:
    """The browser viewer's figures: every frame goes back (the model's rate does not
    matter), in -> out holds the composing, masks are younger than a few model steps."""
    video = result["source_rate"]
    assert set(video) == {"video_fps", "video_fps_per_stream", "in_to_out_ms", "mask_age_ms",
                          "stages_ms", "frames_out", "drops", "drop_rate"}  # fmt: skip
    fps = video["video_fps"]
    assert fps["runs"] == spec["runs"] and 0 < fps["min"] <= fps["median"] <= fps["max"]
    assert fps["max"] <= spec["streams"] * spec["source_fps"] * 1.1  # no more out than in
    # The model's results are far fewer; the video still comes back near the source rate.
    assert video["video_fps_per_stream"]["median"] >= 0.5 * spec["source_fps"]
    assert set(video["stages_ms"]) == {"propagate", "overlay", "video_encode"}
    for name, figures in [*video["stages_ms"].items(), ("in->out", video["in_to_out_ms"]),
                          ("age", video["mask_age_ms"])]:  # fmt: skip
        assert set(figures) == PERCENTILES, name
        # A mask drawn on the frame the model saw is 0 ms old; everything else is > 0.
        real = [figures["mean"]] + ([] if name == "age" else [figures[q] for q in PERCENTILES])
        assert all(map(_real, real)) and figures["p50"] >= 0, (name, figures)
        assert figures["p50"] <= figures["p95"] <= figures["p99"], (name, figures)
    stages = video["stages_ms"]
    assert stages["propagate"]["mean"] <= stages["overlay"]["mean"]
    assert stages["overlay"]["mean"] <= video["in_to_out_ms"]["mean"]
    assert video["mask_age_ms"]["n"] == video["frames_out"] * spec["tracks"]
    assert video["mask_age_ms"]["p50"] < 2000
    # Over the measured window; a frame processed inside it may have gone out before it.
    assert video["frames_out"] + spec["streams"] >= result["frames"]["frames_processed"]
    assert 0 <= video["drop_rate"] < 1


def test_plot_and_table(smallest: tuple[Path, str]) -> None:
    out, log = smallest
    with Image.open(out / "bench.png") as image:
        assert image.format == "PNG" and image.width > 600 and image.height > 400
    assert "--- cell" in log and "--- reference" in log


def test_interval_matrix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--interval makes cells per N; a cell with N = 3 runs the model on about a third
    of the frames, its video still covers them, and the capacity table shows per N."""
    rc = main([*SMALLEST, "--runs", "1", "--no-reference", "--no-plot", "--interval", "1,3",
               "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "interval inference" in out and "source-rate video" in out
    report = load_report(tmp_path / "bench.json")
    by_interval = {row["spec"]["interval"]: row for row in report["cells"]}
    assert set(by_interval) == {1, 3} and by_interval[3]["key"].endswith("|interval=3")
    assert "|interval=" not in by_interval[1]["key"]  # older reports' keys still match
    every, third = by_interval[1]["result"], by_interval[3]["result"]
    frames = third["frames"]
    assert frames["frames_skipped"] > 0 and every["frames"]["frames_skipped"] == 0
    assert frames["frames_processed"] <= frames["frames_received"] / 3 + 2
    assert frames["frames_skipped"] >= frames["frames_processed"]
    _check_source_rate(third, by_interval[3]["spec"])
    assert third["source_rate"]["video_fps"]["median"] > 2 * third["fps"]["median"]
    capacity = report["interval_capacity"]
    assert [entry["interval"] for entry in capacity] == [1, 3]
    assert list(problems(report)) == []


def test_compare_with_itself(smallest: tuple[Path, str], capsys: pytest.CaptureFixture[str],
                             tmp_path: Path) -> None:  # fmt: skip
    out, _ = smallest
    report = json.loads((out / "bench.json").read_text())
    report["cells"][0]["result"]["fps"]["median"] /= 2
    old = tmp_path / "old.json"
    old.write_text(json.dumps(report))
    capsys.readouterr()
    rc = main([*SMALLEST, "--runs", "1", "--no-reference", "--no-plot", "--compare", str(old),
               "--out", str(tmp_path / "again")])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0 and "compared with" in text
    (line,) = [ln for ln in text.splitlines() if ln.startswith("test@128") and "→" in ln]
    # the old fps was halved, so this run shows a rise in fps
    assert re.search(r"→\s+[\d.]+\s+\+\d+%", line), line


def test_bad_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--frame-size", "640", "--out", str(tmp_path)]) == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err
    assert main(["bench", "--backend", "cuda-magic", "--out", str(tmp_path)]) == 2
    (tmp_path / "old.json").write_text("{}")
    assert main(["bench", "--compare", str(tmp_path / "old.json"), "--out", str(tmp_path)]) == 2
    assert "not a schema-1" in capsys.readouterr().err


def test_a_failing_cell_is_reported_and_the_others_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """TensorRT cannot start here: that cell fails with the server's reason, the torch
    cell is still measured, and the command exits 1."""
    rc = main([*SMALLEST, "--runs", "1", "--no-reference", "--no-plot",
               "--backend", "torch,tensorrt", "--out", str(tmp_path)])  # fmt: skip
    assert rc == 1
    out = capsys.readouterr().out
    assert "failed: ServerStartError: BackendUnavailableError" in out
    report = load_report(tmp_path / "bench.json")
    by_backend = {row["spec"]["backend"]: row for row in report["cells"]}
    assert by_backend["tensorrt"]["result"] is None
    assert "TensorRT" in by_backend["tensorrt"]["error"]
    assert by_backend["torch"]["result"]["fps"]["median"] > 0


def test_a_users_video_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = tmp_path / "camera.mp4"
    write_h264(str(clip), 96, 64, 45, fps=15)
    rc = main([*SMALLEST, "--runs", "1", "--no-plot", "--source", str(clip),
               "--out", str(tmp_path / "out")])  # fmt: skip
    assert rc == 0
    (row,) = load_report(tmp_path / "out" / "bench.json")["cells"]
    assert (row["spec"]["frame_width"], row["spec"]["frame_height"]) == (96, 64)
    assert row["spec"]["source"] == str(clip) and row["result"]["fps"]["median"] > 0
    assert row["reference"]["frames_measured"] >= 4
    assert main([*SMALLEST, "--source", str(tmp_path / "none.mp4")]) == 2
    assert "cannot read a video frame" in capsys.readouterr().err
