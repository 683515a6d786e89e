"""The doctor's rows, its table and its JSON (pure: no torch, no I/O but `write`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
STATUSES = (PASS, FAIL, SKIP)
SCHEMA = 1
SUMMARY_CHARS = 400


@dataclass(slots=True)
class Row:
    """One check. `summary` is one line: the numbers, or why it failed or was skipped.
    `details` are printed indented below it (per-graph figures, say)."""

    part: str
    check: str
    status: str
    summary: str
    numbers: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        one_line = " ".join(self.summary.split())  # exception texts span lines
        self.summary = (
            one_line if len(one_line) <= SUMMARY_CHARS else one_line[:SUMMARY_CHARS] + "…"
        )

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        return cls(**data)


def skip(part: str, check: str, reason: str) -> Row:
    return Row(part, check, SKIP, reason)


def fail(part: str, check: str, reason: str) -> Row:
    return Row(part, check, FAIL, reason)


def judged(part: str, check: str, problems: list[str], summary: str, **extra: Any) -> Row:
    """PASS when no limit was broken, else FAIL naming the broken limits first."""
    if problems:
        return Row(part, check, FAIL, "; ".join(problems) + f" ({summary})", **extra)
    return Row(part, check, PASS, summary, **extra)


@dataclass(slots=True)
class Report:
    header: dict[str, Any]
    rows: list[Row]

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status == FAIL]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or not self.rows else 0

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.rows) for s in STATUSES}

    def as_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            **self.header,
            "counts": self.counts(),
            "exit_code": self.exit_code,
            "rows": [r.as_json() for r in self.rows],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"doctor report schema {data.get('schema')} is not {SCHEMA}")
        skipped = {"schema", "counts", "exit_code", "rows"}
        header = {k: v for k, v in data.items() if k not in skipped}
        return cls(header, [Row.from_json(r) for r in data["rows"]])


def render_table(report: Report) -> str:
    """A plain-text table: one line per check, its details indented below, then the
    verdict. Every SKIP and FAIL line carries its reason in the RESULT column."""
    h = report.header
    lines = [
        f"streamseg doctor · device {h.get('device', '?')} · {h.get('started', '?')}",
        *([f"gpu: {h['gpu']}"] if "gpu" in h else []),
        "versions: " + ", ".join(f"{k} {v}" for k, v in h.get("versions", {}).items()),
    ]
    width_part = max([4, *(len(r.part) for r in report.rows)])
    width_check = max([5, *(len(r.check) for r in report.rows)])
    lines.append(f"{'STATUS':6}  {'PART':{width_part}}  {'CHECK':{width_check}}  RESULT")
    for r in report.rows:
        lines.append(f"{r.status:6}  {r.part:{width_part}}  {r.check:{width_check}}  {r.summary}")
        indent = " " * (6 + 2 + width_part + 2 + width_check + 2)
        lines.extend(f"{indent}· {d}" for d in r.details)
    counts = report.counts()
    verdict = "FAILED" if report.exit_code else "OK"
    lines.append(
        f"{len(report.rows)} checks: {counts[PASS]} PASS, {counts[FAIL]} FAIL, "
        f"{counts[SKIP]} SKIP -> {verdict} (exit {report.exit_code})"
    )
    lines.extend(f"FAIL {r.part}/{r.check}: {r.summary}" for r in report.failed)
    return "\n".join(lines)


def write(report: Report, out: Path) -> tuple[Path, Path]:
    """`doctor.txt` (the table) and `doctor.json` in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    table, data = out / "doctor.txt", out / "doctor.json"
    table.write_text(render_table(report) + "\n")
    data.write_text(json.dumps(report.as_json(), indent=1) + "\n")
    return table, data
