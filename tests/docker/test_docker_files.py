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
