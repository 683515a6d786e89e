"""`streamseg` command line: serve, export, build-engine, fetch-weights, bench, doctor."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from streamseg.config import Settings

if TYPE_CHECKING:
    from streamseg.server.auth import TokenStore


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="tiny | small | base_plus | large | test")
    p.add_argument(
        "--weights",
        default=None,
        help="official (download on first use), random (seeded, offline), or a checkpoint path",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="model input size (default: the variant's own, 1024; serve uses at most 512 on a CPU)",
    )
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
    for name in ("host", "port", "drain_s", "backend", "precision", "compile", *limits):
        if hasattr(args, name):
            overrides[name] = getattr(args, name)
    if getattr(args, "ice_host", None):
        overrides["ice_hosts"] = tuple(args.ice_host)
    if getattr(args, "token_file", None):
        overrides["token_file"] = args.token_file
    if getattr(args, "streams_file", None):
        overrides["streams_file"] = args.streams_file
    if getattr(args, "allowed_host", None):
        overrides["allowed_hosts"] = tuple(args.allowed_host)
    if getattr(args, "allowed_origin", None):
        overrides["allowed_origins"] = tuple(args.allowed_origin)
    if getattr(args, "insecure_no_auth_on_network", False):
        overrides["insecure_no_auth_on_network"] = True
    for name in ("foxglove_port", "foxglove_host"):
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    if getattr(args, "insecure_foxglove_on_network", False):
        overrides["insecure_foxglove_on_network"] = True
    if getattr(args, "allow_image_urls", False):
        overrides["allow_image_urls"] = True
    if getattr(args, "image_fetch_timeout_s", None) is not None:
        overrides["image_fetch_timeout_s"] = args.image_fetch_timeout_s
    return Settings.from_env(**overrides)


def startup_banner(settings: Settings, tokens: TokenStore) -> str:
    """What to open. A generated token is printed (stdout, never the log) inside the
    URL's fragment, which browsers do not send to the server."""
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    base = f"http://{host}:{settings.port}/"
    if tokens.disabled:
        return (
            f"streamseg: open {base} (API docs at /docs)\n"
            "streamseg: WARNING: AUTHENTICATION IS OFF (--insecure-no-auth-on-network): "
            "anyone who reaches this port can watch, prompt, add and delete streams"
        )
    if tokens.generated is not None:
        return (
            f"streamseg: open {base}#token={tokens.generated}\n"
            "streamseg: that token was generated for this run and has every scope; API "
            "clients send it as `Authorization: Bearer <token>` (streamseg's clients read "
            "STREAMSEG_TOKEN). API docs at /docs"
        )
    ids = ", ".join(tokens.token_ids) or "none yet"
    return (
        f"streamseg: open {base}#token=<your token> (configured token ids: {ids}). "
        "API docs at /docs"
    )


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from streamseg.backends.select import check_precision
    from streamseg.server.app import InsecureBindError, create_app
    from streamseg.server.auth import AuthConfigError
    from streamseg.server.client_limits import uvicorn_options
    from streamseg.server.foxglove_bridge import FoxgloveConfigError
    from streamseg.server.serving import DrainingServer
    from streamseg.server.streams_file import StreamsFileError

    settings = _settings_from(args)
    try:
        check_precision(settings.backend, settings.precision, settings.resolved_device())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        app = create_app(settings)
    except (InsecureBindError, AuthConfigError, StreamsFileError, FoxgloveConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(startup_banner(settings, app.state.auth), flush=True)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        log_level=args.log_level,
        timeout_graceful_shutdown=10,
        ws_per_message_deflate=False,  # masks are already compact; deflate costs 5x throughput
        **uvicorn_options(settings, app.state.runtime.metrics),  # per-client limits, timeouts
    )
    DrainingServer(config, app.state.runtime, settings.drain_s).run()
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
    serve.add_argument(
        "--drain-seconds",
        dest="drain_s",
        type=float,
        default=None,
        help="on a stop signal, answer /readyz 503 and keep serving this long (default 0)",
    )
    serve.add_argument("--backend", default=None, choices=["auto", "torch", "onnx", "tensorrt"])
    serve.add_argument(
        "--precision",
        default=None,
        choices=["fp32", "fp16", "int8"],
        help="--backend onnx only (default: fp32 on a CPU, fp16 on a GPU); int8 runs on the "
        "CPU (docs/ENGINES.md)",
    )
    serve.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch backend: compile the image encoder and memory attention with "
        "torch.compile while starting (minutes on a small CPU; docs/ENGINES.md)",
    )
    serve.add_argument("--max-peers", type=int, default=None)
    serve.add_argument("--max-streams", type=int, default=None)
    serve.add_argument("--max-tracks", type=int, default=None)
    serve.add_argument("--max-frame-side", type=int, default=None, help="pixels, per side")
    serve.add_argument("--max-upload-bytes", type=int, default=None)
    serve.add_argument(
        "--ice-host", action="append", help="address offered in ICE candidates (repeatable)"
    )
    serve.add_argument(
        "--token-file",
        default=None,
        help="tokens, one `<id> <scopes> <token>` per line, re-read when it changes "
        "(docs/SECURITY.md); a single all-scope token comes from STREAMSEG_TOKEN",
    )
    serve.add_argument(
        "--streams-file",
        default=None,
        help="YAML file of camera streams to create at start-up, with your own ids; "
        "POST/DELETE /v1/streams?persist=true write it back (README, docs/ROBOTS.md)",
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        help="a Host name clients use beyond loopback, e.g. cams.example.com (repeatable)",
    )
    serve.add_argument(
        "--allowed-origin",
        action="append",
        help="a web origin allowed to call the API cross-site, with CORS (repeatable)",
    )
    serve.add_argument(
        "--insecure-no-auth-on-network",
        action="store_true",
        help="turn authentication OFF, even when listening beyond loopback",
    )
    serve.add_argument(
        "--foxglove-port",
        type=int,
        default=None,
        help="also serve every camera stream to Foxglove on this port (off by default; "
        "needs streamseg[foxglove]; no authentication: docs/ROBOTS.md, docs/SECURITY.md)",
    )
    serve.add_argument(
        "--foxglove-host",
        default=None,
        help="address of the Foxglove server (default 127.0.0.1; beyond loopback only "
        "with --insecure-foxglove-on-network)",
    )
    serve.add_argument(
        "--insecure-foxglove-on-network",
        action="store_true",
        help="let the Foxglove server listen beyond loopback: anyone who reaches it sees "
        "every camera, with no token",
    )
    serve.add_argument(
        "--allow-image-urls",
        action="store_true",
        help="let POST /v1/segment fetch an `image_url` (off by default): http/https only, "
        "through the camera source policy (STREAMSEG_SOURCE_* settings: no loopback, "
        "link-local or metadata addresses unless allowed), same-host redirects only, at "
        "most --max-upload-bytes (docs/SECURITY.md)",
    )
    serve.add_argument(
        "--image-fetch-timeout",
        dest="image_fetch_timeout_s",
        type=float,
        default=None,
        help="seconds for fetching one image_url, all of it (default 10)",
    )
    serve.set_defaults(func=_serve)

    from streamseg.assembly import add_export_args, export_main
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

    from streamseg.doctor.cli import add_doctor_args, doctor_main

    doctor = sub.add_parser(
        "doctor", help="does the GPU path work on this host, and how fast (table + JSON)"
    )
    add_doctor_args(doctor)
    doctor.set_defaults(func=doctor_main)

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
