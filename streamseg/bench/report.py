"""The benchmark report: reading and checking it, the terminal tables, `--compare`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streamseg.bench.capacity import MODEL_KEPT, VIDEO_KEPT, interval_capacity
from streamseg.bench.machine import describe
from streamseg.bench.matrix import REPORT_SCHEMA
from streamseg.bench.spec import cell_label
from streamseg.bench.stats import STAGES, WITHIN_CAPTURE_TO_SENT, is_real

STAGE_TITLES = {
    "decode": "decode",
    "slot_wait": "slot",
    "batch_wait": "batch",
    "preprocess": "preproc",
    "encoder": "encoder",
    "memory_attention": "mem.attn",
    "decoder": "decoder",
    "memory_encoder": "mem.enc",
    "postprocess": "post",
    "mask_encode": "mask enc",
    "send": "send",
}


class BenchReportError(ValueError):
    """A file that is not a streamseg benchmark report this version can read."""


def load_report(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchReportError(f"{path}: {exc}") from None
    if not isinstance(report, dict) or report.get("schema") != REPORT_SCHEMA:
        raise BenchReportError(f"{path}: not a schema-{REPORT_SCHEMA} streamseg bench report")
    if not isinstance(report.get("cells"), list):
        raise BenchReportError(f"{path}: has no cells")
    return report


def problems(report: dict[str, Any]) -> Iterator[str]:
    """Figures that are not real measurements: missing, non-positive or not finite,
    or stages of one frame adding up to more than the frame's whole capture -> sent."""
    for row in report["cells"]:
        result, key = row["result"], row["key"]
        if result is None:
            continue
        figures = [("fps", result["fps"]["median"]), ("rss", result["peak_rss_mb"])]
        figures += [(f"latency {q}", result["capture_to_sent_ms"][q]) for q in ("p50", "p99")]
        figures += [("model ms", result["model_ms"])]
        stages = {**result["stages_ms"], **result.get("webrtc_egress_ms", {})}
        figures += [(f"{s} {q}", v[q]) for s, v in stages.items() for q in ("p50", "p95", "p99")]
        for name, value in figures:
            if not is_real(value):
                yield f"{key}: {name} = {value!r} is not a positive finite measurement"
        parts = sum(
            result["stages_ms"][s]["mean"]
            for s in WITHIN_CAPTURE_TO_SENT
            if s in result["stages_ms"]
        )
        whole = result["capture_to_sent_ms"]["mean"]
        if parts > whole * 1.001:
            yield f"{key}: stages add up to {parts:.2f} ms, more than capture->sent {whole:.2f} ms"
        if "source_rate" in result:  # reports from before the source-rate columns lack it
            yield from _source_rate_problems(key, row["spec"], result["source_rate"])


def _source_rate_problems(key: str, spec: dict[str, Any], video: dict[str, Any]) -> Iterator[str]:
    """The video figures: real, no more frames out than came in, and the composing
    (propagation included) inside each frame's in -> out interval."""
    figures = [("video fps", video["video_fps"]["median"])]
    figures += [(f"in->out {q}", video["in_to_out_ms"][q]) for q in ("p50", "p99")]
    figures += [(f"{s} {q}", v[q]) for s, v in video["stages_ms"].items() for q in ("p50", "p99")]
    for name, value in figures:
        if not is_real(value):
            yield f"{key}: {name} = {value!r} is not a positive finite measurement"
    age = video["mask_age_ms"]
    if spec["tracks"] and (age is None or not all(age[q] >= 0 for q in ("p50", "p99"))):
        yield f"{key}: mask age {age!r} is missing or negative"
    most = spec["streams"] * spec["source_fps"] * 1.1
    if video["video_fps"]["max"] > most:
        yield f"{key}: {video['video_fps']['max']:.1f} video fps out, more than came in"
    stages = video["stages_ms"]
    in_out = video["in_to_out_ms"]["mean"]
    if "overlay" in stages and stages["overlay"]["mean"] > in_out * 1.001:
        yield f"{key}: composing took {stages['overlay']['mean']:.2f} ms, more than in->out"
    composed = stages.get("overlay", {}).get("mean", float("inf")) * 1.001
    if "propagate" in stages and stages["propagate"]["mean"] > composed:
        yield f"{key}: propagation took longer than the composing that includes it"


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def format_tables(report: dict[str, Any]) -> str:
    lines = [f"machine: {describe(report['machine'])}"]
    first = report["cells"][0]["spec"] if report["cells"] else None
    if first:
        lines.append(
            f"weights: {first['weights']}; source: {first['source']} at "
            f"{first['source_fps']} fps; {first['runs']} runs × {first['seconds']:g} s "
            f"after ≥{first['warmup_s']:g} s warm-up (excluded)"
        )
    head = (
        f"{'cell':34} {'fps (min–max)':>20} {'/stream':>8} {'lat p50':>8} {'p95':>7} "
        f"{'p99':>7} {'drops':>6} {'RSS MB':>7} {'model ms':>9} {'Meta ms':>8} "
        f"{'Meta fps':>9} {'fps ×':>6} {'model ×':>8}"
    )
    lines += ["", head, "-" * len(head)]
    for row in report["cells"]:
        name, result = cell_label(row["spec"]), row["result"]
        if result is None:
            lines.append(f"{name:34} failed: {row['error']}")
            continue
        fps, lat = result["fps"], result["capture_to_sent_ms"]
        ref, ratio = row["reference"] or {}, row["ratio"] or {}
        ref_ms = _ms(ref["frame_ms"]["mean"]) if "frame_ms" in ref else "–"
        ref_fps = f"{ref['fps']['median']:.2f}" if "fps" in ref else ("error" if ref else "–")
        fps_x = f"{ratio['fps']:.2f}" if ratio.get("fps") else ("src" if ratio else "–")
        model_x = f"{ratio['model_time']:.2f}" if ratio else "–"
        bound = "*" if result["source_bound"] else " "
        spread = f"{fps['median']:.2f}{bound}({fps['min']:.2f}–{fps['max']:.2f})"
        lines.append(
            f"{name:34} {spread:>20} {result['fps_per_stream']['median']:8.2f} "
            f"{_ms(lat['p50']):>8} {_ms(lat['p95']):>7} {_ms(lat['p99']):>7} "
            f"{result['drop_rate']:6.0%} {result['peak_rss_mb']:7.0f} "
            f"{_ms(result['model_ms']):>9} {ref_ms:>8} {ref_fps:>9} {fps_x:>6} {model_x:>8}"
        )
    lines += [
        "",
        "fps: results per second delivered to the websocket clients, all streams (median of",
        "the runs, min–max). * source-bound: the model kept up (drops < 2%), so fps is the",
        "source's rate (fps × src).",
        "latency: capture -> sent (ms). model ms: encoder + memory attention + decoder + memory",
        "encoder + postprocess per frame (mean; preprocessing excluded, as Meta's predictor does",
        "it before tracking). Meta: SAM2VideoPredictor on preloaded frames,",
        "same weights, sizes, prompts and threads. fps ×: streamseg fps / Meta fps;",
        "model ×: Meta ms / model ms (>1: streamseg's model path is faster).",
        "",
        "per-frame stages, ms p50/p99:",
    ]
    stages = [
        s
        for s in STAGES
        if any(r["result"] and s in r["result"]["stages_ms"] for r in report["cells"])
    ]
    egress = ("overlay", "video_encode")
    titles = [STAGE_TITLES[s] for s in stages] + ["| overlay†", "VP8†"]
    lines.append(f"{'cell':34}" + "".join(f"{t:>12}" for t in titles))
    for row in report["cells"]:
        if row["result"] is None:
            continue
        got = row["result"]["stages_ms"]
        extra = row["result"].get("webrtc_egress_ms", {})
        cells = [_p50_p99(got.get(s)) for s in stages] + [_p50_p99(extra.get(s)) for s in egress]
        lines.append(f"{cell_label(row['spec']):34}" + "".join(f"{c:>12}" for c in cells))
    lines.append(
        "† WebRTC egress (browser path), measured per frame after the run at the cell's frame "
        "size and track count: compositing the masks, VP8 encoding as aiortc does"
    )
    lines += _source_rate_table(report)
    lines += _capacity_table(report)
    return "\n".join(lines)


def _source_rate_table(report: dict[str, Any]) -> list[str]:
    rows = [r for r in report["cells"] if r["result"] and "source_rate" in r["result"]]
    if not rows:
        return []
    head = (
        f"{'cell':34} {'video fps (min–max)':>22} {'/stream':>8} {'in→out p50':>11} "
        f"{'p99':>7} {'age p50':>8} {'p99':>7} {'drops':>6} {'propagate':>11} "
        f"{'overlay':>11} {'VP8':>11}"
    )
    lines = ["", "source-rate video (what a browser viewer gets), ms:", head, "-" * len(head)]
    for row in rows:
        video = row["result"]["source_rate"]
        fps, in_out, age = video["video_fps"], video["in_to_out_ms"], video["mask_age_ms"]
        stages = video["stages_ms"]
        spread = f"{fps['median']:.2f} ({fps['min']:.2f}–{fps['max']:.2f})"
        ages = (_ms(age["p50"]), _ms(age["p99"])) if age else ("–", "–")
        lines.append(
            f"{cell_label(row['spec']):34} {spread:>22} "
            f"{video['video_fps_per_stream']['median']:8.2f} {_ms(in_out['p50']):>11} "
            f"{_ms(in_out['p99']):>7} {ages[0]:>8} {ages[1]:>7} {video['drop_rate']:6.0%} "
            + "".join(
                f"{_p50_p99(stages.get(s)):>12}" for s in ("propagate", "overlay", "video_encode")
            )
        )
    lines += [
        "video fps: frames handed to the encoder per second, all streams; in→out: from a",
        "frame's receipt to its composed overlay being handed to the encoder; age: of the",
        "masks drawn on outgoing frames (capture time minus the model frame's); drops: frames",
        "the viewer's one-frame mailbox replaced; propagate/overlay/VP8: p50/p99 per frame",
        "(overlay includes propagate). The server's own WebRTC overlay track, pulled and",
        "encoded as aiortc's sender does, on the server's loop; no RTP or network.",
    ]
    return lines


def _capacity_table(report: dict[str, Any]) -> list[str]:
    if all(r["spec"].get("interval", 1) == 1 for r in report["cells"]):
        return []
    head = (
        f"{'setting':28} {'N':>3} {'streams':>8} {'video fps':>10} {'model fps':>10} "
        f"{'lat p50':>8} {'in→out p99':>11} {'age p99':>8}"
    )
    lines = [
        "",
        "interval inference: most streams served per interval N with the model keeping up",
        f"(≥ {MODEL_KEPT:.0%} of the frames due processed, due = received / N) and the video "
        f"at ≥ {VIDEO_KEPT:.0%} of the source rate, ms:",
        head,
        "-" * len(head),
    ]
    for entry in report.get("interval_capacity") or interval_capacity(report["cells"]):
        spec = entry["spec"]
        setting = cell_label({**spec, "streams": "n", "interval": 1}).replace(" ns×", " ")
        if entry["streams"] is None:
            tried = ",".join(map(str, entry["tried"])) or "none measured"
            lines.append(f"{setting:28} {entry['interval']:>3} none kept up (streams {tried})")
            continue
        age = entry["mask_age_p99_ms"]
        lines.append(
            f"{setting:28} {entry['interval']:>3} {entry['streams']:>8} "
            f"{entry['video_fps']:10.1f} {entry['model_fps']:10.1f} "
            f"{_ms(entry['capture_to_sent_p50_ms']):>8} {_ms(entry['in_to_out_p99_ms']):>11} "
            f"{'–' if age is None else _ms(age):>8}"
        )
    return lines


def _p50_p99(figures: dict[str, float] | None) -> str:
    return f"{_ms(figures['p50'])}/{_ms(figures['p99'])}" if figures else "–"


def _change(old: float, new: float) -> str:
    return f"{(new - old) / old:+.0%}" if old else "n/a"


def format_comparison(old: dict[str, Any], new: dict[str, Any]) -> str:
    """fps and latency per cell present in both reports (matched by cell key)."""
    before = {r["key"]: r for r in old["cells"] if r["result"]}
    lines = [
        f"compared with {old.get('created', '?')} ({describe(old['machine'])}):",
        f"{'cell':34} {'fps old → new':>20} {'change':>7} {'lat p50 old → new':>20} {'change':>7}",
    ]
    matched = 0
    for row in new["cells"]:
        prior = before.get(row["key"])
        if prior is None or row["result"] is None:
            continue
        matched += 1
        f0, f1 = prior["result"]["fps"]["median"], row["result"]["fps"]["median"]
        l0 = prior["result"]["capture_to_sent_ms"]["p50"]
        l1 = row["result"]["capture_to_sent_ms"]["p50"]
        lines.append(
            f"{cell_label(row['spec']):34} {f0:9.2f} → {f1:8.2f} {_change(f0, f1):>7} "
            f"{_ms(l0):>9} → {_ms(l1):>8} {_change(l0, l1):>7}"
        )
    if not matched:
        lines.append("no cell of this run is in the old report (cells match on every setting)")
    return "\n".join(lines)
