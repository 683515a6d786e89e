"""`streamseg bench`: the matrix by default, focused modes as subcommands."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamseg.bench.spec import (
    GENERATED,
    BenchSpecError,
    CellSpec,
    expand,
    parse_frame_sizes,
    parse_ints,
    parse_list,
)

BACKENDS = ("torch", "onnx", "tensorrt", "auto")


def add_matrix_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("matrix (comma-separated lists; every combination is a cell)")
    g.add_argument("--model", default="tiny", help="tiny,small,base_plus,large,test")
    g.add_argument(
        "--weights",
        default="random",
        help="random (seeded; speed does not depend on weights), official, or a path",
    )
    g.add_argument("--backend", default="torch", help=",".join(BACKENDS))
    g.add_argument("--image-size", default="512", help="model input sizes, e.g. 512,1024")
    g.add_argument("--frame-size", default="640x480", help="generated frame sizes, e.g. 640x480")
    g.add_argument("--streams", default="1,2", help="camera streams at once")
    g.add_argument("--tracks", default="1,3", help="tracked objects per stream")
    g.add_argument(
        "--interval",
        default="1",
        help="inference interval N per stream (the model on every Nth frame), e.g. 1,2,4",
    )
    r = p.add_argument_group("measurement")
    r.add_argument(
        "--source",
        default=GENERATED,
        help="'generated' (moving shapes, H.264) or a video file / URL every stream reads "
        "(its own frame size is used)",
    )
    r.add_argument("--source-fps", type=int, default=30, help="rate of the generated video")
    r.add_argument("--seconds", type=float, default=10.0, help="length of one measured run")
    r.add_argument("--runs", type=int, default=3, help="measured runs per cell (spread shown)")
    r.add_argument("--warmup", type=float, default=5.0, help="seconds excluded after prompting")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda")
    r.add_argument(
        "--dtype",
        default=None,
        choices=["bfloat16", "float16"],
        help="CUDA autocast for streamseg and the reference",
    )
    r.add_argument("--no-reference", action="store_true", help="skip Meta's predictor column")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, help="folder (default: bench-results/<time>/)")
    o.add_argument("--compare", default=None, help="an earlier bench.json to compare with")
    o.add_argument("--no-plot", action="store_true")


def probe_frame_size(source: str) -> tuple[int, int]:
    """The size of a user's video (its first frame); --frame-size is for generated video."""
    import av

    try:
        with av.open(source, timeout=10.0) as container:
            frame = next(container.decode(video=0))
    except (av.error.FFmpegError, OSError, StopIteration) as exc:
        raise BenchSpecError(f"--source {source}: cannot read a video frame ({exc})") from None
    return int(frame.width), int(frame.height)


def _cells(args: argparse.Namespace) -> list[CellSpec]:
    from streamseg.pipeline.stream import MAX_INTERVAL  # imports torch: only when needed

    if args.runs < 1 or args.seconds <= 0 or args.warmup < 0 or not 1 <= args.source_fps <= 240:
        raise BenchSpecError("--runs >= 1, --seconds > 0, --warmup >= 0, --source-fps 1..240")
    backends = parse_list(args.backend, "backend")
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise BenchSpecError(f"--backend: unknown {unknown}; choose from {', '.join(BACKENDS)}")
    frame_sizes = parse_frame_sizes(args.frame_size)
    if args.source != GENERATED:
        frame_sizes = [probe_frame_size(args.source)]
    return expand(
        models=parse_list(args.model, "model"),
        weights=parse_list(args.weights, "weights"),
        backends=backends,
        image_sizes=parse_ints(args.image_size, "image-size", 64, 2048),
        frame_sizes=frame_sizes,
        streams=parse_ints(args.streams, "streams", 1, 64),
        tracks=parse_ints(args.tracks, "tracks", 0, 64),
        intervals=parse_ints(args.interval, "interval", 1, MAX_INTERVAL),
        source=args.source,
        source_fps=args.source_fps,
        seconds=args.seconds,
        runs=args.runs,
        warmup_s=args.warmup,
        threads=args.threads,
        device=args.device,
        dtype=args.dtype,
    )


def run_matrix_command(args: argparse.Namespace, argv: list[str]) -> int:
    from streamseg.bench.matrix import run_matrix
    from streamseg.bench.report import (
        BenchReportError,
        format_comparison,
        format_tables,
        load_report,
        problems,
    )

    try:
        cells = _cells(args)
        old = load_report(Path(args.compare)) if args.compare else None
    except (BenchSpecError, BenchReportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or Path("bench-results") / time.strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["streamseg", *argv])
    print(f"{len(cells)} cell(s); results, plot and log go to {out}/", file=sys.stderr)
    report = run_matrix(cells, not args.no_reference, out / "bench.log", command)
    (out / "bench.json").write_text(json.dumps(report, indent=1) + "\n")
    print(format_tables(report))
    if old is not None:
        print("\n" + format_comparison(old, report))
    plotted = not args.no_plot and any(r["result"] for r in report["cells"])
    if plotted:
        from streamseg.bench.plot import write_plot

        write_plot(report, out / "bench.png")
    for problem in problems(report):
        print(f"warning: {problem}", file=sys.stderr)
    print(f"\nwrote {out / 'bench.json'}" + (f" and {out / 'bench.png'}" if plotted else ""))
    return 0 if all(r["result"] for r in report["cells"]) else 1


def _run_mode(args: argparse.Namespace) -> int:
    if args.mode == "tracker":
        from streamseg.bench.tracker import print_tracker_table, run_tracker_bench

        report = run_tracker_bench(args)
        print_tracker_table(report)
    elif args.mode == "server":
        from streamseg.bench.server import run_server_bench

        report = run_server_bench(args)
    elif args.mode == "browser":
        from streamseg.bench.browser import run_browser_bench

        report = run_browser_bench(args)
    elif args.mode == "websocket":
        from streamseg.bench.websocket import run_websocket_bench

        report = run_websocket_bench(args)
    elif args.mode == "propagation":
        from streamseg.bench.propagation import print_report, run

        report = run(args)
        print_report(report)
    else:
        from streamseg.bench.backend import run_backend_bench

        report = run_backend_bench(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def bench_main(args: argparse.Namespace) -> int:
    if args.mode is None:
        return run_matrix_command(args, getattr(args, "argv", ["bench"]))
    return _run_mode(args)


def _tracked_frames(text: str) -> int:
    frames = int(text)
    if frames < 9:
        raise argparse.ArgumentTypeError(f"at least 9 (the bank is full from frame 8), got {text}")
    return frames


def add_bench_parser(sub: Any, add_model_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """`streamseg bench [matrix flags]` or `streamseg bench <mode> [mode flags]`."""
    bench = sub.add_parser(
        "bench",
        help="fps, stage times and latency on this machine (see README)",
        description="Without a mode: the benchmark matrix (table, bench.json, bench.png). "
        "Modes measure one thing in depth.",
    )
    add_matrix_args(bench)
    bench.set_defaults(func=bench_main, mode=None)
    modes = bench.add_subparsers(dest="mode", required=False, metavar="mode")
    tracker = modes.add_parser("tracker", help="streaming tracker vs Meta's predictor, lockstep")
    add_model_args(tracker)
    tracker.add_argument("--frames", type=int, default=60)
    tracker.add_argument("--objects", type=int, default=1)
    tracker.add_argument("--frame-size", default="640x480")
    tracker.add_argument(
        "--compile",
        action="store_true",
        help="also a tracker on torch.compile'd graphs, in lockstep: compile time, stage "
        "times and drift vs eager",
    )
    server = modes.add_parser("server", help="server overhead and latency under overload")
    add_model_args(server)
    server.add_argument("--seconds", type=float, default=15.0)
    browser = modes.add_parser("browser", help="round trip through headless Chromium")
    add_model_args(browser)
    browser.add_argument("--seconds", type=float, default=10.0)
    ws = modes.add_parser("websocket", help="mask feed fan-out with a stalled client")
    ws.add_argument("--seconds", type=float, default=5.0)
    ws.add_argument("--encoding", default="rle", choices=["rle", "bitpack", "png"])
    ws.add_argument(
        "--slow-reads", type=int, default=30, help="reads of the once-a-second clients (0: none)"
    )
    backend = modes.add_parser(
        "backend", help="torch fp32 vs ONNX Runtime per precision: per graph, per step, drift"
    )
    add_model_args(backend)
    backend.add_argument("--precision", default="fp32,int8", help="ONNX precisions: fp32,fp16,int8")
    backend.add_argument(
        "--frames",
        type=_tracked_frames,
        default=30,
        help="tracked frames, at least 9: steps are timed once the memory bank is full",
    )
    backend.add_argument("--objects", type=int, default=3, choices=[1, 2, 3])
    backend.add_argument("--repeat", type=int, default=7, help="calls per graph timing")
    propagation = modes.add_parser(
        "propagation", help="masks between model steps vs ground truth; per-frame cost"
    )
    for mode in (tracker, server, browser, ws, backend, propagation):
        mode.add_argument("--json", default=None, help="also write the results to this file")
        mode.set_defaults(func=bench_main)
    from streamseg.doctor.cli import add_doctor_args, doctor_main

    gpu_check = modes.add_parser("gpu-check", help="the same as `streamseg doctor`")
    add_doctor_args(gpu_check)
    gpu_check.set_defaults(func=doctor_main)
