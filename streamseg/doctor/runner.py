"""Runs each task in its own process within a time budget, and turns timeouts,
crashes and unmet prerequisites into rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from streamseg.doctor.child import MARK
from streamseg.doctor.plan import DoctorConfig, Task, check_name, skip_reason
from streamseg.doctor.report import PASS, Row, fail, skip

# A task is not started with less time than this left in the budget.
MIN_START_S = 20.0


def _tail(path: Path, offset: int, limit: int = 400) -> str:
    with path.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace").strip()
    return " | ".join(text.splitlines()[-4:])[-limit:] if text else "nothing on stderr"


def run_task(
    task: Task, config: DoctorConfig, timeout_s: float, log: Path, budget_bound: bool = False
) -> list[Row]:
    """The task's rows; a FAIL row when its process hung past `timeout_s` or died
    without any. `budget_bound`: `timeout_s` is what was left of the time budget, so
    being stopped then says nothing against the check: a SKIP row."""
    check = check_name(task, config)
    command = [sys.executable, "-m", "streamseg.doctor.child", task.part, task.arg]
    with log.open("a") as err:
        err.write(f"--- {task.label}\n")
        err.flush()
        offset = err.tell()
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,  # its own group: a timeout ends its workers too
        )
        try:
            out, _ = proc.communicate(json.dumps(config.as_json()), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            if budget_bound:
                why = f"stopped after {timeout_s:.0f} s: the time budget (--budget-s) ran out"
                return [skip(task.part, check, why)]
            return [fail(task.part, check, f"timed out after {timeout_s:.0f} s (killed)")]
    for line in out.split("\n"):  # not splitlines: it splits at the \x1e of MARK
        if line.startswith(MARK):
            return [Row.from_json(r) for r in json.loads(line[len(MARK) :])]
    return [
        fail(
            task.part,
            check,
            f"its process ended with status {proc.returncode} "
            f"before reporting: {_tail(log, offset)}",
        )
    ]


def _unmet(task: Task, rows: list[Row]) -> str | None:
    for need in task.needs:
        theirs = [r for r in rows if r.part == need]
        if not theirs or any(r.status != PASS for r in theirs):
            return f"needs the {need} check, which did not pass"
    return None


def run_all(
    config: DoctorConfig,
    plan: list[Task],
    log: Path,
    budget_s: float | None,
    task_timeout_s: float,
    progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> list[Row]:
    rows: list[Row] = []
    start = time.monotonic()
    for task in plan:
        left = None if budget_s is None else budget_s - (time.monotonic() - start)
        reason = skip_reason(task, config) or _unmet(task, rows)
        if reason is None and left is not None and left < MIN_START_S:
            reason = f"not started: the time budget (--budget-s {budget_s:.0f}) is spent"
        if reason is not None:
            rows.append(skip(task.part, check_name(task, config), reason))
            progress(f"doctor: {task.label}: SKIP ({reason})")
            continue
        budget_bound = left is not None and left < task_timeout_s
        timeout = left if left is not None and budget_bound else task_timeout_s
        began = time.monotonic()
        got = run_task(task, config, timeout, log, budget_bound)
        rows.extend(got)
        verdict = ", ".join(f"{r.status} {r.check}" for r in got)
        progress(f"doctor: {task.label} ({time.monotonic() - began:.0f} s): {verdict}")
    return rows
