"""`streamseg doctor` (also `streamseg bench gpu-check`): its flags, the plan for the
device, the run, the table and the JSON."""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from streamseg.doctor.plan import (
    COMPILE_MODES,
    DTYPES,
    PARTS,
    DoctorConfig,
    ModelSpec,
    defaults,
    tasks,
)
from streamseg.doctor.report import Report, Row, render_table, write
from streamseg.doctor.runner import run_all

DISTRIBUTIONS = (
    "streamseg",
    "torch",
    "sam2",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "tensorrt-cu12",
    "tensorrt-cu13",
    "numpy",
)


def add_doctor_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Does streamseg's GPU path work on this host, and how fast? Prints a table and "
        "writes it with a JSON copy to --out. Exit status 0: every check passed or was "
        "skipped (each SKIP says why); 1: a check failed; 2: a bad flag."
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto | cpu | cuda | cuda:N (default: cuda when torch sees a GPU)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="folder for doctor.txt, doctor.json and doctor.log (default: doctor-results/<time>/)",
    )
    p.add_argument("--parts", default=",".join(PARTS), help=f"checks to run: {','.join(PARTS)}")
    g = p.add_argument_group("what is measured (defaults depend on the device)")
    g.add_argument("--parity", default=None, help="models for tracker parity, e.g. test,tiny@256")
    g.add_argument("--parity-frames", type=int, default=None)
    g.add_argument("--speed", default=None, help="model for ms per frame, e.g. tiny@1024")
    g.add_argument("--frames", type=int, default=None, help="frames per speed run")
    g.add_argument("--objects", default=None, help="objects per speed run, e.g. 1,3 (max 3)")
    g.add_argument("--dtypes", default=None, help=f"speed precisions: {','.join(DTYPES)}")
    g.add_argument(
        "--compile", default=None, help=f"torch.compile modes ({','.join(COMPILE_MODES)}) or none"
    )
    g.add_argument("--engines", default=None, help="model for the ONNX/TensorRT checks")
    g.add_argument("--engine-frames", type=int, default=None)
    t = p.add_argument_group("time")
    t.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="stop starting checks after this many seconds (they are SKIPped)",
    )
    t.add_argument("--task-timeout-s", type=float, default=900.0, help="one check at most")
    p.add_argument("--keep-work", action="store_true", help="keep the exported graphs")
    # Testing only: prove that a failing check makes the command fail.
    p.add_argument("--tolerance-scale", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--inject-failure", default=None, help=argparse.SUPPRESS)


def _ints(text: str, name: str, low: int, high: int) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{name}: comma-separated integers expected, got {text!r}") from None
    if not values or not all(low <= v <= high for v in values):
        raise ValueError(f"--{name}: each value must be {low}..{high}")
    return values


def _names(text: str, name: str, allowed: tuple[str, ...]) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(f"--{name}: unknown {unknown}; choose from {', '.join(allowed)}")
    return values


def resolve_device(text: str) -> str:
    if text == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if text != "cpu" and not (text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit())):
        raise ValueError(f"--device: auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def config_from(args: argparse.Namespace, workdir: str) -> DoctorConfig:
    """Raises ValueError (exit status 2) for any flag out of range."""
    config = defaults(resolve_device(args.device))
    config.workdir = workdir
    config.parts = _names(args.parts, "parts", PARTS)
    if args.parity is not None:
        config.parity = [str(ModelSpec.parse(s)) for s in args.parity.split(",") if s.strip()]
    for name in ("speed", "engines"):
        if getattr(args, name) is not None:
            setattr(config, name, str(ModelSpec.parse(getattr(args, name))))
    if args.objects is not None:
        config.objects = _ints(args.objects, "objects", 1, 3)
    if args.dtypes is not None:
        config.dtypes = _names(args.dtypes, "dtypes", DTYPES)
    if args.compile is not None:
        config.compile_modes = (
            [] if args.compile == "none" else _names(args.compile, "compile", COMPILE_MODES)
        )
    for flag, field in (
        ("frames", "speed_frames"),
        ("parity_frames", "parity_frames"),
        ("engine_frames", "engine_frames"),
    ):
        value = getattr(args, flag)
        if value is not None:
            if not 4 <= value <= 2000:
                raise ValueError(f"--{flag.replace('_', '-')}: 4..2000 frames")
            setattr(config, field, value)
    config.speed_warmup = min(config.speed_warmup, config.speed_frames // 4)
    config.tolerance_scale = args.tolerance_scale
    config.inject_failure = args.inject_failure
    return config


def versions() -> dict[str, str]:
    """Installed distributions, read from their metadata (nothing is imported)."""
    found = {"python": sys.version.split()[0]}
    for name in DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def header(config: DoctorConfig, argv: list[str]) -> dict[str, Any]:
    return {
        "device": config.device,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": shlex.join(["streamseg", *argv]),
        "versions": versions(),
        "config": {k: v for k, v in config.as_json().items() if k != "workdir"},
    }


def gpu_header(rows: list[Row]) -> dict[str, str]:
    """The GPU and driver the CUDA check found, for the table's heading."""
    for row in rows:
        if row.part == "cuda" and "gpu" in row.numbers:
            n = row.numbers
            return {"gpu": f"{n['gpu']} ({n['memory_gib']} GiB, {n['capability']}), "
                           f"driver {n['driver']}, CUDA {n['cuda']}"}  # fmt: skip
    return {}


def doctor_main(args: argparse.Namespace) -> int:
    out = Path(args.out or Path("doctor-results") / time.strftime("%Y%m%d-%H%M%S"))
    workdir = tempfile.mkdtemp(prefix="streamseg-doctor-")
    try:
        try:
            config = config_from(args, workdir)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        out.mkdir(parents=True, exist_ok=True)
        plan = tasks(config)
        print(
            f"doctor: {len(plan)} checks on {config.device}; table, JSON and log go to {out}/",
            file=sys.stderr,
        )
        head = header(config, getattr(args, "argv", ["doctor"]))
        rows = run_all(config, plan, out / "doctor.log", args.budget_s, args.task_timeout_s)
        head.update(gpu_header(rows))
        report = Report(head, rows)
        print(render_table(report))
        table, data = write(report, out)
        print(f"wrote {table} and {data}", file=sys.stderr)
        return report.exit_code
    finally:
        if args.keep_work:
            print(f"doctor: exported graphs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
