"""The report as a PNG: where a frame's time goes, and latency over time under load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamseg.bench.report import STAGE_TITLES
from streamseg.bench.spec import cell_label
from streamseg.bench.stats import STAGES


def write_plot(report: dict[str, Any], path: Path) -> None:
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["cells"] if r["result"] is not None]
    if not rows:
        raise ValueError("no measured cell to plot")
    fig, (bars, lines) = plt.subplots(2, 1, figsize=(12, 4 + 0.7 * len(rows) + 4))
    names = [cell_label(r["spec"], sep="\n") for r in rows]
    left = [0.0] * len(rows)
    colours = plt.get_cmap("tab10")
    for k, stage in enumerate(STAGES):
        widths = [r["result"]["stages_ms"].get(stage, {}).get("mean", 0.0) for r in rows]
        if not any(widths):
            continue
        bars.barh(names, widths, left=left, label=STAGE_TITLES[stage], color=colours(k % 10))
        left = [a + b for a, b in zip(left, widths, strict=True)]
    whole = [r["result"]["capture_to_sent_ms"]["mean"] for r in rows]
    bars.scatter(whole, names, marker="|", s=400, color="black", label="capture→sent", zorder=3)
    bars.invert_yaxis()
    bars.set_xlabel("ms per frame (mean of each stage; | = whole capture → sent)")
    bars.set_title("Where a frame's time goes")
    bars.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    for row, name in zip(rows, names, strict=True):
        series = row["result"]["latency_series"]
        if series:
            xs, ys = zip(*series, strict=True)
            lines.plot(xs, ys, label=name.replace("\n", " "), linewidth=1)
    lines.set_xlabel("seconds into the measured runs")
    lines.set_ylabel("capture → sent, ms")
    lines.set_ylim(bottom=0)
    lines.set_title("Latency over time (frames arrive at the source rate; latest frame wins)")
    lines.legend(fontsize=7)
    machine = report["machine"]
    gpu = machine["gpu"]["name"] if machine.get("gpu") else "no GPU"
    fig.suptitle(
        f"streamseg bench — {machine['cpu']} ({machine['cpu_count']} cores), {gpu}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
