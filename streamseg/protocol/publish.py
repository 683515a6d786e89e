"""The published protocol: docs/protocol/asyncapi.json, one JSON Schema per message in
docs/protocol/schemas/, and the generated tables of docs/PROTOCOL.md, all from the
models. After changing a model or a table:

    python -m streamseg.protocol.publish --write

CI runs `--check` (through tests/protocol/test_published_schemas.py), which exits 1
and names each file that differs from what the models give. The server serves the same
documents (`published_documents`, server/routes_protocol.py)."""

from __future__ import annotations

import argparse
import difflib
import functools
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamseg.protocol.asyncapi import asyncapi_document, render
from streamseg.protocol.catalogue import MODEL_RULES, catalogue, doc_tables
from streamseg.protocol.doc_tables import fill, table
from streamseg.protocol.feed_contract import CLOSE_CODES
from streamseg.protocol.schema_export import message_schema

REPO = Path(__file__).resolve().parents[2]
PROTOCOL_DOC = Path("docs/PROTOCOL.md")
PUBLISHED_DIR = Path("docs/protocol")
SCHEMAS_DIR = PUBLISHED_DIR / "schemas"


@dataclass(frozen=True, slots=True)
class Published:
    asyncapi: dict[str, Any]
    schemas: dict[str, dict[str, Any]]


@functools.cache
def published_documents() -> Published:
    """The AsyncAPI document and each message's schema (built once per process)."""
    messages = catalogue()
    schemas = {m.name: message_schema(m, MODEL_RULES) for m in messages}
    return Published(asyncapi_document(messages, MODEL_RULES), schemas)


def close_codes_table() -> str:
    rows = [
        (
            "none (1006 in most libraries)" if c.code is None else str(c.code),
            c.reason,
            c.meaning,
            c.action,
        )
        for c in CLOSE_CODES
    ]
    return table(("close code", "reason text", "meaning", "what a client should do"), rows)


def doc_blocks() -> dict[str, str]:
    """Every generated block of docs/PROTOCOL.md, by marker name."""
    return {"close-codes": close_codes_table(), **doc_tables()}


def artifacts(root: Path = REPO) -> dict[Path, str]:
    """Each generated file (relative to `root`) and its text."""
    documents = published_documents()
    out = {PUBLISHED_DIR / "asyncapi.json": render(documents.asyncapi)}
    for name, schema in sorted(documents.schemas.items()):
        out[SCHEMAS_DIR / f"{name}.json"] = render(schema)
    out[PROTOCOL_DOC] = fill((root / PROTOCOL_DOC).read_text(encoding="utf-8"), doc_blocks())
    return out


def _stale(root: Path, wanted: dict[Path, str]) -> list[Path]:
    """Published schema files no message has any more."""
    found = sorted((root / SCHEMAS_DIR).glob("*.json"))
    return [p.relative_to(root) for p in found if p.relative_to(root) not in wanted]


def differences(root: Path = REPO) -> list[str]:
    """A short unified diff per file that differs from what the models give."""
    wanted = artifacts(root)
    out: list[str] = []
    for path, text in wanted.items():
        target = root / path
        have = target.read_text(encoding="utf-8") if target.exists() else ""
        if have != text:
            diff = difflib.unified_diff(
                have.splitlines(), text.splitlines(), f"{path} (committed)", f"{path} (models)",
                n=1, lineterm="",
            )  # fmt: skip
            out.append("\n".join(list(diff)[:40]))
    out += [f"{path}: no message of that name (remove it)" for path in _stale(root, wanted)]
    return out


def write(root: Path = REPO) -> list[Path]:
    """Bring every generated file up to date; returns those changed or removed."""
    wanted = artifacts(root)
    changed: list[Path] = []
    for path, text in wanted.items():
        target = root / path
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            changed.append(path)
    for path in _stale(root, wanted):
        (root / path).unlink()
        changed.append(path)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streamseg.protocol.publish",
        description="Write or check the published protocol files against the models.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="update the generated files")
    mode.add_argument("--check", action="store_true", help="exit 1 if any file differs")
    parser.add_argument(
        "--root", type=Path, default=REPO, help="the repository (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.write:
        for path in write(args.root):
            print(f"wrote {path}")
        return 0
    problems = differences(args.root)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print("run: python -m streamseg.protocol.publish --write", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
