"""What can be checked of docker/ without a Docker engine."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml

from streamseg.cli import build_parser
from streamseg.server.metrics import Metrics

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def test_compose_and_configs_parse() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert set(compose["services"]) == {"streamseg", "mediamtx", "prometheus", "grafana"}
    prometheus = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["streamseg:8000"]
    for path in (DOCKER / "grafana" / "provisioning").rglob("*.yaml"):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1


def test_dashboard_uses_only_metrics_the_server_exports() -> None:
    exported = set()
    for line in Metrics().render().decode().splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            exported.add(name)
            if kind == "histogram":
                exported |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            if kind == "counter":
                exported.add(f"{name}_total")
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "streamseg.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"streamseg_[a-z_]+", target["expr"])
    }
    assert used and used <= exported, used - exported


def test_image_entrypoint_matches_the_cli() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))  # type: ignore[union-attr]
    cmd = json.loads(re.search(r"^CMD (.+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert entry == ["streamseg"]
    args = build_parser().parse_args(cmd)
    assert args.command == "serve" and args.backend == "auto" and args.host == "0.0.0.0"
    assert shlex.join(cmd).startswith("serve")
