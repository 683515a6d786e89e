"""Markdown tables for docs/PROTOCOL.md, written from the same schemas and tables the
server uses, and the marker blocks they fill:

    <!-- generated:begin NAME -->
    ...replaced by `fill`...
    <!-- generated:end -->

so the document's tables of fields, error codes and close codes cannot drift from the
code (`python -m streamseg.protocol.publish --check` fails when they differ)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

END = "<!-- generated:end -->"
_BLOCK = re.compile(
    r"(<!-- generated:begin (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- generated:end -->)",
    re.DOTALL,
)


class MarkerError(ValueError):
    """A marker without a block to fill it, or a block without its marker."""


def fill(text: str, blocks: Mapping[str, str]) -> str:
    """`text` with each marked block replaced by `blocks[name]`; every block must have
    exactly one marker and every marker a block."""
    seen: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in blocks:
            raise MarkerError(f"no generated block named {name!r}")
        seen.append(name)
        body = blocks[name].rstrip("\n") + "\n"
        return f"{match.group(1)}{body}{END}"

    out = _BLOCK.sub(replace, text)
    missing = sorted(set(blocks) - set(seen))
    twice = sorted({n for n in seen if seen.count(n) > 1})
    if missing or twice:
        raise MarkerError(f"markers missing for {missing}, repeated for {twice}")
    return out


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _resolve(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _resolve(defs[ref.rsplit("/", 1)[-1]], defs)
    return schema


def _range(schema: Mapping[str, Any]) -> str:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is None and high is None:
        return ""
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    return f" ≥ {low}" if low is not None else f" ≤ {high}"


def type_text(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> str:
    """A short human reading of a JSON Schema type: `integer ≥ 0`, `[number, number]`,
    `"rle" | "png"`, `Track[]`, `string or null`."""
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = _resolve(schema, defs)
        return type_text(target, defs) if "enum" in target else ref.rsplit("/", 1)[-1]
    if "anyOf" in schema:
        parts = [type_text(s, defs) for s in schema["anyOf"]]
        nullable = "null" in parts
        parts = [p for p in parts if p != "null"]
        return " or ".join(parts) + _bounds(schema) + (" or null" if nullable else "")
    if "enum" in schema:
        return " | ".join(f"`{_literal(v)}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{_literal(schema['const'])}`"
    kind = schema.get("type")
    if kind == "array":
        item = type_text(schema.get("items", {}), defs)
        if " | " in item or " or " in item:
            item = f"({item})"
        count = schema.get("minItems")
        if count is not None and count == schema.get("maxItems"):
            return "[" + ", ".join([item] * count) + "]"
        return f"{item}[]" + _bounds(schema)
    if kind == "object":
        values = schema.get("additionalProperties")
        if isinstance(values, dict):
            return f"object of {type_text(values, defs)}"
        return "object"
    if isinstance(kind, str):
        return kind + _range(schema) + _bounds(schema)
    return "any"


def _bounds(schema: Mapping[str, Any]) -> str:
    """Size limits, also those stated beside an `anyOf` (they apply to its arrays or
    strings)."""
    if "maxItems" in schema and schema.get("minItems") != schema["maxItems"]:
        return f" (at most {schema['maxItems']})"
    if "maxLength" in schema:
        return f" (at most {schema['maxLength']} characters)"
    return ""


def _literal(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return str(value)


def fields_table(
    schema: Mapping[str, Any], defs: Mapping[str, Any], prefix: str = ""
) -> list[tuple[str, str, str, str]]:
    """(field, type, required, description) of an object schema, nested objects that
    are models expanded as `times.capture_ts`, lists of models as `tracks[].bbox`."""
    body = _resolve(schema, defs)
    required = set(body.get("required", ()))
    rows: list[tuple[str, str, str, str]] = []
    for name, prop in body.get("properties", {}).items():
        rows.append(
            (
                f"`{prefix}{name}`",
                type_text(prop, defs),
                "yes" if name in required else "",
                str(prop.get("description") or _resolve(prop, defs).get("description") or ""),
            )
        )
        nested = _model_of(prop, defs)
        if nested is not None:
            inner, suffix = nested
            rows += fields_table(inner, defs, f"{prefix}{name}{suffix}.")
    return rows


def _model_of(prop: Mapping[str, Any], defs: Mapping[str, Any]) -> tuple[Any, str] | None:
    """The model a property holds (directly, nullable, or as a list's items)."""
    options = prop.get("anyOf", [prop])
    for option in options:
        if "$ref" in option and "properties" in _resolve(option, defs):
            return option, ""
        items = option.get("items")
        listed = option.get("type") == "array" and isinstance(items, dict) and "$ref" in items
        if listed and "properties" in _resolve(items, defs):
            return items, "[]"
    return None
