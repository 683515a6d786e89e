"""What can be checked of docker/ without a Docker engine: the files parse, the
dashboard queries only metrics the server exports, and the image's command line, ports
and health check match the CLI and the app."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from streamseg.cli import build_parser
from streamseg.server.metrics import Metrics

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def _dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


def _instruction(name: str) -> Any:
    match = re.search(rf"^{name} (.+)$", _dockerfile(), re.M)
    assert match, name
    return json.loads(match.group(1))


def test_compose_and_configs_parse() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"streamseg", "mediamtx", "prometheus", "grafana"}
    gpu = services["streamseg"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert services["streamseg"]["build"]["dockerfile"] == "docker/Dockerfile"
    assert "8554:8554" in services["mediamtx"]["ports"]
    prometheus = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["streamseg:8000"]
    provisioning = DOCKER / "grafana" / "provisioning"
    for path in provisioning.rglob("*.yaml"):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1
    providers = yaml.safe_load((provisioning / "dashboards" / "streamseg.yaml").read_text())
    mounts = services["grafana"]["volumes"]
    assert f"./grafana/dashboards:{providers['providers'][0]['options']['path']}:ro" in mounts


def test_dashboard_uses_only_metrics_the_server_exports() -> None:
    exported = set()
    for line in Metrics().render().decode().splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            exported.add(name)
            if kind == "histogram":
                exported |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            if kind == "counter" and not name.endswith("_total"):
                exported.add(f"{name}_total")
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "streamseg.json").read_text())
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"streamseg_[a-z_]+", target["expr"])
    }
    assert used and used <= exported, used - exported
    for must in ("streamseg_stage_seconds_bucket", "streamseg_capture_to_sent_seconds_bucket",
                 "streamseg_frames_dropped_total", "streamseg_frames_received_total",
                 "streamseg_peers_active"):  # fmt: skip
        assert must in used


def test_image_entrypoint_matches_the_cli() -> None:
    text = _dockerfile()
    assert re.search(r"^FROM nvcr\.io/nvidia/(pytorch|tensorrt):", text, re.M)
    assert _instruction("ENTRYPOINT") == ["streamseg"]
    cmd = _instruction("CMD")
    args = build_parser().parse_args(cmd)
    assert args.command == "serve" and args.backend == "auto" and args.host == "0.0.0.0"
    assert f"EXPOSE {args.port}" in text
    health = re.search(r"^HEALTHCHECK .*CMD curl \S* http://localhost:(\d+)(/\S+)", text, re.M)
    assert health and int(health.group(1)) == args.port
    from streamseg.server.app import create_app  # the health route exists

    assert health.group(2) in {getattr(r, "path", "") for r in create_app().routes}


# NGC PyTorch images from 25.08 on are CUDA 13; onnxruntime-gpu on PyPI is built for
# CUDA 13 from 1.27 on (its `cuda` extra requires nvidia-cuda-runtime 13), before for 12.
def _ngc_cuda_major(tag: str) -> int:
    year, month = (int(x) for x in tag.split("-")[0].split("."))
    return 13 if (year, month) >= (25, 8) else 12


def _ort_cuda_major(version: str) -> int:
    major, minor = (int(x) for x in version.split(".")[:2])
    return 13 if (major, minor) >= (1, 27) else 12


def test_onnxruntime_gpu_is_pinned_to_the_base_images_cuda() -> None:
    text = _dockerfile()
    tag = re.search(r"^FROM nvcr\.io/nvidia/pytorch:(\S+)$", text, re.M)
    pin = re.search(r"^ARG ONNXRUNTIME_GPU=(\d+\.\d+\.\d+)$", text, re.M)
    assert tag and pin, "base image tag and an exact onnxruntime-gpu pin"
    assert '"onnxruntime-gpu==${ONNXRUNTIME_GPU}"' in text
    code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    for line in code:  # every install of it is pinned
        assert all(rest.startswith("==") for rest in line.split("onnxruntime-gpu")[1:]), line
    assert _ngc_cuda_major(tag.group(1)) == _ort_cuda_major(pin.group(1))
    assert (_ngc_cuda_major("25.06-py3"), _ort_cuda_major("1.26.0")) == (12, 12)


def test_image_build_checks_the_gpu_providers() -> None:
    run = next(block for block in _dockerfile().split("\nRUN ")[1:] if "onnxruntime-gpu" in block)
    install = run.index("onnxruntime-gpu==")
    check = run.index("python -m streamseg.backends.ort_check --require cuda,tensorrt")
    assert install < check  # same RUN, after the install: a failed check fails the build


def test_ort_check_reports_what_cannot_load(monkeypatch: Any, tmp_path: Path) -> None:
    from streamseg.backends import ort_check

    ldd = "\tlibcudart.so.12 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n"
    assert ort_check.parse_ldd(ldd + "\tlibnvinfer.so.11 => not found\n") == [
        "libcudart.so.12",
        "libnvinfer.so.11",
    ]
    present = tmp_path / "libonnxruntime_providers_cuda.so"
    present.write_bytes(b"")
    paths = {"cuda": present, "tensorrt": tmp_path / "absent.so"}
    monkeypatch.setattr(ort_check, "provider_library", lambda kind: paths[kind])
    monkeypatch.setattr(ort_check, "unresolved", lambda lib: ["libcudart.so.12"])
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    problems = ort_check.check(["cuda", "tensorrt"], require_gpu=True)
    assert any("cuda" in p and "libcudart.so.12" in p for p in problems)
    assert any(p.startswith("tensorrt:") and "not part of" in p for p in problems)
    assert any("no GPU" in p for p in problems)
    monkeypatch.setattr(ort_check, "unresolved", lambda lib: [])
    assert ort_check.main(["--require", "cuda"]) == 0  # libraries load; no GPU: not required
