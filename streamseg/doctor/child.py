"""`python -m streamseg.doctor.child PART [ARG]`: one check in its own process, so a
crash, a hang or a GPU left in a bad state costs that check alone, and each check's
peak memory is its own. Reads the `DoctorConfig` as JSON on stdin; writes its rows
as one marked JSON line on stdout; logs go to stderr."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback

from streamseg.doctor.plan import DoctorConfig, Task, check_name
from streamseg.doctor.report import Row, fail

MARK = "\x1estreamseg-doctor "
CRASH_STATUS = 3


def run_part(config: DoctorConfig, task: Task) -> list[Row]:
    """Imports stay inside each branch: a check that is skipped costs no torch import."""
    injected = config.inject_failure
    if injected == f"{task.part}:crash":
        os._exit(CRASH_STATUS)
    if injected == task.part:
        raise RuntimeError("injected failure (--inject-failure)")
    if task.part == "cuda":
        from streamseg.doctor.environment import cuda_rows

        return cuda_rows(config)
    if task.part == "parity":
        from streamseg.doctor.parity import parity_rows

        return parity_rows(config, task.arg)
    if task.part == "speed":
        from streamseg.doctor.speed import eager_rows

        return eager_rows(config)
    if task.part == "compile":
        from streamseg.doctor.speed import compile_rows

        return compile_rows(config, task.arg)
    if task.part == "export":
        from streamseg.doctor.engines import export_rows

        return export_rows(config, task.arg)
    if task.part == "ort":
        from streamseg.doctor.engines import ort_rows

        return ort_rows(config, task.arg)
    if task.part == "tensorrt":
        from streamseg.doctor.engines import tensorrt_rows

        return tensorrt_rows(config)
    raise ValueError(f"unknown part {task.part!r}")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not argv:
        print("usage: python -m streamseg.doctor.child PART [ARG] < config.json", file=sys.stderr)
        return 2
    task = Task(argv[0], argv[1] if len(argv) > 1 else "")
    config = DoctorConfig.from_json(json.loads(sys.stdin.read()))
    try:
        rows = run_part(config, task)
    except Exception as exc:  # one FAIL row; the other checks go on
        traceback.print_exc()
        rows = [
            fail(task.part, check_name(task, config), f"{type(exc).__name__}: {str(exc)[:500]}")
        ]
    sys.stdout.write(MARK + json.dumps([r.as_json() for r in rows]) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
