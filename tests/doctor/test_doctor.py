"""`streamseg doctor --device cpu`: the GPU check's own code run on the CPU with the
test model, so it cannot rot where no GPU is: the real checks in their own
processes, the table and the JSON, the exit status, and failures forced in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from streamseg.cli import main
from streamseg.doctor.cli import gpu_header
from streamseg.doctor.plan import PARTS, DoctorConfig, ModelSpec, Task, defaults, tasks
from streamseg.doctor.report import FAIL, PASS, SKIP, Report, Row, render_table

QUICK = ["--parity-frames", "8", "--frames", "8", "--engine-frames", "6"]


def _doctor(out: Path, *flags: str) -> tuple[int, dict[str, Any], str]:
    """The command as a user runs it, in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-m", "streamseg.cli", "doctor", "--device", "cpu", "--out", str(out),
         *flags],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.stderr.count("doctor: ") >= 1, done.stderr
    report = json.loads((out / "doctor.json").read_text()) if done.returncode in (0, 1) else {}
    return done.returncode, report, done.stdout


def _rows(report: dict[str, Any], part: str) -> list[dict[str, Any]]:
    return [r for r in report["rows"] if r["part"] == part]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], str, Path]:
    out = tmp_path_factory.mktemp("doctor")
    rc, report, stdout = _doctor(out, *QUICK)
    return rc, report, stdout, out


def test_every_part_reports_and_a_clean_run_exits_0(full_run: Any) -> None:
    rc, report, stdout, out = full_run
    assert rc == 0, stdout
    assert report["schema"] == 1 and report["device"] == "cpu" and report["exit_code"] == 0
    assert {r["part"] for r in report["rows"]} == set(PARTS)
    assert report["versions"]["torch"] and report["versions"]["streamseg"]
    assert report["counts"] == {s: sum(r["status"] == s for r in report["rows"])
                                for s in (PASS, FAIL, SKIP)}  # fmt: skip
    assert report["counts"][FAIL] == 0 and report["counts"][PASS] >= 6
    for row in report["rows"]:
        assert row["summary"], row  # a SKIP always says why
    # the files hold what was printed
    assert (out / "doctor.txt").read_text().strip() == stdout.strip()
    assert Report.from_json(report).exit_code == 0


def test_cpu_rows_measure_what_they_say(full_run: Any) -> None:
    _, report, _, _ = full_run
    (cuda,) = _rows(report, "cuda")
    assert cuda["status"] == SKIP and "--device cpu" in cuda["summary"]
    fp32, bf16, fp16 = _rows(report, "parity")
    assert fp32["status"] == PASS and fp32["numbers"]["min_iou"] == 1.0
    assert fp32["numbers"]["max_abs_dlogit"] == 0.0 and fp32["numbers"]["frames"] == 8
    assert 0.0 < fp32["numbers"]["foreground"] < 1.0  # masks, not blank frames
    assert fp32["limits"] == {"min_iou": 0.99, "min_balanced_iou": 0.95, "max_abs_dlogit": 0.05}
    assert bf16["status"] == fp16["status"] == SKIP and "CUDA only" in bf16["summary"]
    speed = _rows(report, "speed")
    assert [r["numbers"]["objects"] for r in speed] == [1, 3]
    for row in speed:
        n = row["numbers"]
        assert row["status"] == PASS and 0 < n["ms_p50"] <= n["ms_p99"] and n["peak_rss_mib"] > 0
        assert n["frames"] == 8 and n["warmup_frames_excluded"] == 2
        assert set(n["stage_ms_p50"]) >= {"encoder", "memory_attention", "decoder"}
    (export,) = _rows(report, "export")
    assert export["status"] == PASS and export["numbers"]["graphs"] == 8
    graphs, tracker, cuda_ep, trt_ep = _rows(report, "ort")
    assert graphs["status"] == PASS and len(graphs["details"]) == len(graphs["numbers"]) == 7
    assert all(0 <= v["rel_error"] <= 2e-2 and v["ms"] > 0 for v in graphs["numbers"].values())
    assert tracker["status"] == PASS and tracker["numbers"]["min_iou"] >= 0.95
    assert tracker["numbers"]["ms_p50"] > 0 and tracker["numbers"]["torch_ms_p50"] > 0
    for row in (cuda_ep, trt_ep, *_rows(report, "tensorrt")):
        assert row["status"] == SKIP, row
    one, three, graphs_row = _rows(report, "compile")  # CompiledTorchGraphs on the CPU
    for row in (one, three):
        assert row["status"] == PASS and row["numbers"]["vs_eager"]["min_iou"] >= 0.99
        assert row["numbers"]["warm_up_compile_s"] > 0 and row["numbers"]["ms_p50"] > 0
    assert graphs_row["status"] == SKIP and "needs a GPU" in graphs_row["summary"]


def test_table_has_a_line_per_check_and_a_verdict(full_run: Any) -> None:
    _, report, stdout, _ = full_run
    lines = stdout.splitlines()
    for row in report["rows"]:
        assert any(line.startswith(row["status"]) and row["check"] in line for line in lines)
    assert lines[-1].endswith("-> OK (exit 0)")


def test_a_failing_check_fails_the_command(tmp_path: Path) -> None:
    rc, report, stdout = _doctor(tmp_path, "--parts", "cuda,parity", "--inject-failure", "parity")
    assert rc == 1 and report["exit_code"] == 1
    (cuda, parity) = report["rows"]
    assert cuda["status"] == SKIP
    assert parity["status"] == FAIL and "injected failure" in parity["summary"]
    assert "FAIL parity/test@128: RuntimeError: injected failure" in stdout
    assert "Traceback" in (tmp_path / "doctor.log").read_text()


def test_a_crashed_check_is_a_failure_not_a_crash(tmp_path: Path) -> None:
    rc, report, _ = _doctor(tmp_path, "--parts", "speed", "--inject-failure", "speed:crash")
    assert rc == 1
    (row,) = report["rows"]
    assert row["status"] == FAIL and "ended with status 3 before reporting" in row["summary"]


def test_a_hung_check_is_killed_at_its_timeout(tmp_path: Path) -> None:
    rc, report, _ = _doctor(tmp_path, "--parts", "speed", "--task-timeout-s", "1")
    assert rc == 1
    (row,) = report["rows"]
    assert row["status"] == FAIL and row["summary"] == "timed out after 1 s (killed)"


def test_cuda_asked_for_without_one_fails_and_skips_the_rest(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streamseg.cli", "doctor", "--device", "cuda", "--out",
         str(tmp_path), "--parts", "cuda,parity"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    cuda, *parity = json.loads((tmp_path / "doctor.json").read_text())["rows"]
    assert cuda["status"] == FAIL and "CPU-only build" in cuda["summary"]
    assert [r["check"] for r in parity] == ["test@128", "tiny@256"]  # the GPU plan
    assert all(r["status"] == SKIP and "needs the cuda check" in r["summary"] for r in parity)


def test_zero_tolerance_fails_the_fp16_engine(tmp_path: Path) -> None:
    """ONNX Runtime's FP16 graphs differ from torch a little: with every limit at 0
    the comparison itself must fail them, so the limits are really applied."""
    rc, report, _ = _doctor(tmp_path, "--parts", "export,ort", "--engine-frames", "4",
                            "--tolerance-scale", "0")  # fmt: skip
    assert rc == 1
    graphs, tracker = _rows(report, "ort")[:2]
    assert graphs["status"] == FAIL and "rel Δ" in graphs["summary"]
    assert tracker["status"] == FAIL and "max |Δlogit|" in tracker["summary"]


def test_spent_budget_skips_and_unmet_needs_skip(tmp_path: Path) -> None:
    rc, report, _ = _doctor(tmp_path, "--parts", "parity,ort", "--budget-s", "0")
    assert rc == 0
    reasons = {r["check"]: r["summary"] for r in report["rows"]}
    assert "time budget" in reasons["test@128"]
    assert "needs the export check" in reasons["test@128 ORT cpu"]


def test_a_check_the_budget_cuts_short_is_skipped_not_failed(tmp_path: Path) -> None:
    """With 21 s left (just over the least a check is started with) the speed check
    cannot finish (tiny at 1024 px takes seconds a frame on a CPU): stopped by the
    budget, it is a SKIP saying so, not a failure."""
    rc, report, _ = _doctor(tmp_path, "--parts", "speed", "--speed", "tiny@1024",
                            "--frames", "8", "--budget-s", "21")  # fmt: skip
    assert rc == 0
    (row,) = report["rows"]
    assert row["status"] == SKIP and "the time budget (--budget-s) ran out" in row["summary"]


@pytest.mark.parametrize(
    "flags",
    [["--objects", "4"], ["--parity", "tiny@100"], ["--parts", "gpu"], ["--device", "tpu"],
     ["--compile", "max"], ["--frames", "2"]],
)  # fmt: skip
def test_bad_flags_exit_2(flags: list[str], tmp_path: Path, capsys: Any) -> None:
    assert main(["doctor", "--out", str(tmp_path), *flags]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_gpu_plan_and_alias() -> None:
    config = defaults("cuda")
    assert config.speed == "tiny@1024" and config.parity == ["test", "tiny@256"]
    plan = tasks(config)
    assert plan[0] == Task("cuda") and plan[-1] == Task("compile", "reduce-overhead", ("cuda",))
    assert Task("tensorrt", "", ("cuda", "export")) in plan
    assert [t.part for t in tasks(DoctorConfig.from_json(config.as_json()))] == [
        t.part for t in plan
    ]
    assert str(ModelSpec.parse("test")) == "test@128"
    from streamseg.cli import build_parser

    args = build_parser().parse_args(["bench", "gpu-check", "--device", "cpu", "--parts", "cuda"])
    assert args.func.__name__ == "doctor_main" and args.parts == "cuda"


def test_table_rendering() -> None:
    rows = [
        Row("cuda", "CUDA visible", PASS, "H200", details=["one GPU"]),
        Row("ort", "tiny@1024 ORT tensorrt", SKIP, "no TensorrtExecutionProvider"),
        Row("parity", "tiny@256 bf16 vs CPU fp32", FAIL, "IoU 0.9 < 0.95"),
    ]
    report = Report({"device": "cuda", "started": "now", "versions": {"torch": "2.11"}}, rows)
    text = render_table(report).splitlines()
    assert text[1] == "versions: torch 2.11"
    assert text[3].startswith("PASS    cuda    CUDA visible") and text[4].endswith("· one GPU")
    assert text[5].startswith("SKIP    ort ") and text[5].endswith("no TensorrtExecutionProvider")
    assert text[-2].endswith("-> FAILED (exit 1)")
    assert text[-1] == "FAIL parity/tiny@256 bf16 vs CPU fp32: IoU 0.9 < 0.95"
    assert Report.from_json(json.loads(json.dumps(report.as_json()))).rows == rows
    cuda = Row(
        "cuda",
        "CUDA visible",
        PASS,
        "",
        numbers={
            "gpu": "NVIDIA H200",
            "memory_gib": 139.8,
            "capability": "sm_90",
            "driver": "580.1",
            "cuda": "13.0",
        },
    )
    heading = Report({"device": "cuda", **gpu_header([cuda])}, [cuda])
    assert render_table(heading).splitlines()[1] == (
        "gpu: NVIDIA H200 (139.8 GiB, sm_90), driver 580.1, CUDA 13.0"
    )
    with pytest.raises(ValueError):
        Row("cuda", "x", "MAYBE", "")
    long = Row("compile", "x", FAIL, "AssertionError: expected\nError in op:\n" + "x" * 999)
    assert long.summary.startswith("AssertionError: expected Error in op: xx")
    assert len(long.summary) == 401 and long.summary.endswith("…")
