"""`python -m streamseg.bench.child cell|reference`: one measurement in its own process,
so every cell starts from a fresh interpreter and its peak RSS is its own.

Reads a `CellSpec` as JSON on stdin; writes marked JSON lines on stdout (progress,
then the result or an error); everything else it prints is ignored by the parent."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

MARK = "\x1estreamseg-bench "


def emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(MARK + json.dumps(payload) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    from streamseg.bench.spec import CellSpec

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    kind = argv[0] if argv else ""
    if kind not in ("cell", "reference"):
        print("usage: python -m streamseg.bench.child cell|reference < spec.json", file=sys.stderr)
        return 2
    spec = CellSpec.from_json(json.loads(sys.stdin.read()))

    def progress(done_s: float) -> None:
        emit({"progress": done_s})

    try:
        if kind == "cell":
            from streamseg.bench.cell import run_cell

            result = run_cell(spec, progress)
        else:
            from streamseg.bench.reference import run_reference

            result = run_reference(spec, progress)
    except Exception as exc:  # reported in the table; the matrix goes on
        logging.getLogger("streamseg.bench").exception("%s failed", kind)
        emit({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    emit({"result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
