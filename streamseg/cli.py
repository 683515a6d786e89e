"""`streamseg` command line: serve, export, build-engine, fetch-weights, bench."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from streamseg.config import Settings


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="tiny | small | base_plus | large | test")
    p.add_argument(
        "--weights",
        default=None,
        help="official (download on first use), random (seeded, offline), or a checkpoint path",
    )
    p.add_argument("--image-size", type=int, default=None, help="model input size (default 1024)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16"], help="CUDA autocast")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides = {
        "model": args.model,
        "weights": args.weights,
        "image_size": args.image_size,
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads,
    }
    limits = ("max_peers", "max_streams", "max_tracks", "max_frame_side", "max_upload_bytes")
    for name in ("host", "port", "backend", *limits):
        if hasattr(args, name):
            overrides[name] = getattr(args, name)
    if getattr(args, "ice_host", None):
        overrides["ice_hosts"] = tuple(args.ice_host)
    return Settings.from_env(**overrides)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from streamseg.server.app import create_app

    settings = _settings_from(args)
    app = create_app(settings)
    print(f"streamseg: open http://{settings.host}:{settings.port}/ (API docs at /docs)")
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        log_level=args.log_level,
        timeout_graceful_shutdown=10,
        ws_per_message_deflate=False,  # masks are already compact; deflate costs 5x throughput
    )
    return 0


def _fetch_weights(args: argparse.Namespace) -> int:
    from streamseg.model.registry import get_variant
    from streamseg.model.weights import WeightsError, ensure_checkpoint

    try:
        path = ensure_checkpoint(get_variant(args.model or "tiny"))
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamseg", description=__doc__)
    parser.add_argument("--log-level", default="info")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    _add_model_args(serve)
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--backend", default=None, choices=["auto", "torch", "onnx", "tensorrt"])
    serve.add_argument("--max-peers", type=int, default=None)
    serve.add_argument("--max-streams", type=int, default=None)
    serve.add_argument("--max-tracks", type=int, default=None)
    serve.add_argument("--max-frame-side", type=int, default=None, help="pixels, per side")
    serve.add_argument("--max-upload-bytes", type=int, default=None)
    serve.add_argument(
        "--ice-host", action="append", help="address offered in ICE candidates (repeatable)"
    )
    serve.set_defaults(func=_serve)

    from streamseg.backends.export import add_export_args, export_main
    from streamseg.backends.trt_build import add_build_engine_args, build_engine_main

    export = sub.add_parser("export", help="export the graphs to ONNX (FP32, FP16) with a manifest")
    add_export_args(export)
    export.set_defaults(func=export_main)

    build = sub.add_parser("build-engine", help="build TensorRT plans from an export (GPU host)")
    add_build_engine_args(build)
    build.set_defaults(func=build_engine_main)

    fetch = sub.add_parser("fetch-weights", help="download and verify a checkpoint")
    fetch.add_argument("--model", default="tiny")
    fetch.set_defaults(func=_fetch_weights)

    from streamseg.bench.cli import add_bench_parser

    add_bench_parser(sub, _add_model_args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    for chatty in ("aioice", "aiortc"):  # per-candidate-pair INFO lines drown everything
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))
    args.argv = list(sys.argv[1:] if argv is None else argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
