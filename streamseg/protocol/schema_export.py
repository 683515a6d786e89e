"""JSON Schema of every wire message, generated from the msgspec models.

One schema per message (`message_schema`, a standalone JSON Schema 2020-12 document
that code generators and validators read on their own) and all of them as shared
components (`components`, what the AsyncAPI document refers to). Output is plain data
in the models' own order (field tables follow it); `asyncapi.render` writes files with
sorted keys, so the published copies can be committed and diffed.

Fixed-length arrays of one item type (a box, a point) are written with `items` plus
`minItems`/`maxItems` rather than msgspec's `prefixItems`: both mean the same to a
2020-12 validator, and draft-07 tools (json-schema-to-typescript, older quicktype)
misread `prefixItems` (json-schema-to-typescript makes a box `never[]`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
COMPONENT_REF = "#/components/schemas/{name}"
Sender = Literal["client", "server"]


@dataclass(frozen=True, slots=True)
class WireMessage:
    """One message of the protocol: its published name (file name, AsyncAPI message
    id), the msgspec type that decodes it, who sends it and on which channels."""

    name: str
    model: Any
    title: str
    summary: str
    sender: Sender
    channels: tuple[str, ...]
    binary: bool = False  # the websocket frame: length prefix + this header + mask bytes


def portable(schema: Any) -> Any:
    """`schema` with every homogeneous fixed-length `prefixItems` tuple written as
    `items` + `minItems`/`maxItems` (same meaning; readable by draft-07 tools)."""
    if isinstance(schema, list):
        return [portable(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: portable(v) for k, v in schema.items()}
    prefix = out.get("prefixItems")
    if (
        isinstance(prefix, list)
        and prefix
        and all(p == prefix[0] for p in prefix)
        and out.get("items") is False
        and out.get("minItems") == out.get("maxItems") == len(prefix)
    ):
        del out["prefixItems"]
        out["items"] = prefix[0]
    return out


Rules = Mapping[str, Mapping[str, Any]]
"""Keywords added to a model's schema by the model's name: rules across fields that a
msgspec type cannot carry (a prompt needs points or a box)."""


def _with_rules(defs: dict[str, Any], rules: Rules) -> dict[str, Any]:
    return {name: {**schema, **rules.get(name, {})} for name, schema in defs.items()}


def components(
    messages: Sequence[WireMessage], rules: Rules | None = None, ref_template: str = COMPONENT_REF
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the schema of each message by name, the shared component schemas), with
    references written with `ref_template`."""
    roots, defs = msgspec.json.schema_components(
        [m.model for m in messages], ref_template=ref_template
    )
    by_name = {m.name: portable(root) for m, root in zip(messages, roots, strict=True)}
    return by_name, _with_rules(portable(defs), rules or {})


def inline_refs(schema: Any, defs: Mapping[str, Any]) -> Any:
    """`schema` with every reference (written with ref_template ``{name}``) replaced by
    its definition and OpenAPI's `discriminator` (whose mapping named the references)
    left out, to sit inside another document as it is (an OpenAPI body). The models
    are not recursive."""
    if isinstance(schema, list):
        return [inline_refs(s, defs) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: inline_refs(v, defs) for k, v in schema.items() if k not in ("$ref", "discriminator")}
    if "$ref" in schema:
        out = {**inline_refs(defs[schema["$ref"]], defs), **out}
    return out


def _references(value: Any, ref: str) -> bool:
    if isinstance(value, dict):
        return value.get("$ref") == ref or any(_references(v, ref) for v in value.values())
    if isinstance(value, list):
        return any(_references(v, ref) for v in value)
    return False


def message_schema(message: WireMessage, rules: Rules | None = None) -> dict[str, Any]:
    """A standalone JSON Schema document for one message: the root is the message's
    own schema (inlined when it is one model), the models it uses under `$defs`."""
    (root,), defs = (
        portable(part)
        for part in msgspec.json.schema_components([message.model], ref_template="#/$defs/{name}")
    )
    defs = _with_rules(defs, rules or {})
    target = root.get("$ref", "") if set(root) == {"$ref"} else ""
    name = target.removeprefix("#/$defs/")
    if name in defs and not _references(defs, target):
        root = defs.pop(name)
    document: dict[str, Any] = {
        "$schema": JSON_SCHEMA_DIALECT,
        **root,
        "title": message.title,
        "description": _description(message, root),
    }
    if defs:
        document["$defs"] = defs
    return document


def _description(message: WireMessage, root: dict[str, Any]) -> str:
    own = root.get("description")
    return message.summary if not own else f"{message.summary}\n\n{own}"
