"""msgspec's validation errors said in the protocol's words.

msgspec reports ``Expected `int | null`, got `bool` - at `$.track_id` ``; a client is
told ``'track_id' must be an integer or null, got True``: the field as the protocol
names it, what the model expects there (read from the model itself, so the message
cannot drift from the schema) and the value that was sent.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import msgspec.inspect as mi

from streamseg.protocol.models import WholeNumber

_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]+)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<name>[^`]+)`$")
_ABSENT = object()

Path = tuple[str | int, ...]


def error_path(exc: msgspec.ValidationError) -> tuple[str, Path]:
    """(msgspec's reason, the path it names as segments: names and list indices)."""
    match = _AT.match(str(exc))
    assert match is not None  # the pattern matches any text
    raw = match["path"] or ""
    path = tuple(name if name else int(index) for name, index in _SEGMENT.findall(raw))
    return match["what"], path


def path_text(path: Path) -> str:
    """`('tracks', 0, 'mask')` -> `tracks[0].mask`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


@functools.cache
def _info(root: Any) -> mi.Type:
    return mi.type_info(root)


def _unwrap(t: mi.Type) -> mi.Type:
    while isinstance(t, mi.Metadata):
        t = t.type
    return t


def _step(t: mi.Type, part: str | int, tag: Any) -> mi.Type | None:
    t = _unwrap(t)
    if isinstance(t, mi.UnionType):
        for member in t.types:
            found = _step(member, part, tag)
            if found is not None:
                return found
        return None
    if isinstance(part, str):
        if isinstance(t, mi.StructType) and (tag is None or t.tag in (None, tag)):
            for field in t.fields:
                if field.encode_name == part:
                    return field.type
        if isinstance(t, mi.DictType):
            return t.value_type
        return None
    if isinstance(t, mi.ListType | mi.VarTupleType):
        return t.item_type
    if isinstance(t, mi.TupleType) and part < len(t.item_types):
        return t.item_types[part]
    return None


def type_at(root: Any, path: Path, tag: Any = None) -> mi.Type | None:
    """The model's type at `path` (`tag`: the ``type`` of a tagged union's member)."""
    t: mi.Type | None = _info(root)
    for part in path:
        if t is None:
            return None
        t = _step(t, part, tag)
    return t


def _bounds(t: mi.IntType | mi.FloatType) -> str:
    low = t.ge if t.ge is not None else t.gt
    high = t.le if t.le is not None else t.lt
    if low is not None and high is not None:
        return f" in [{low}, {high}]" if t.gt is None and t.lt is None else f" in ({low}, {high})"
    if low is not None:
        return f" >= {low}" if t.gt is None else f" > {low}"
    if high is not None:
        return f" <= {high}" if t.lt is None else f" < {high}"
    return ""


def _choices(values: Sequence[Any]) -> str:
    listed = ", ".join(repr(v) for v in values)
    return listed if len(values) == 1 else f"one of {listed}"


def describe(t: mi.Type) -> str:
    """What a value of model type `t` is, in words: ``an integer >= 0``."""
    if isinstance(t, mi.Metadata):
        expected = (t.extra or {}).get("expected")
        return str(expected) if expected else describe(t.type)
    if isinstance(t, mi.UnionType):
        text = " or ".join(describe(m) for m in t.types if not isinstance(m, mi.NoneType))
        if any(isinstance(m, mi.NoneType) for m in t.types):
            text += ", or null" if " or " in text else " or null"
        return text
    if isinstance(t, mi.CustomType) and t.cls is WholeNumber:
        return "an integer"
    if isinstance(t, mi.IntType):
        return "an integer" + _bounds(t)
    if isinstance(t, mi.FloatType):
        return "a finite number" + _bounds(t)
    if isinstance(t, mi.BoolType):
        return "true or false"
    if isinstance(t, mi.StrType):
        limit = f" of at most {t.max_length} characters" if t.max_length is not None else ""
        return "a string" + limit
    if isinstance(t, mi.LiteralType):
        return _choices(t.values)
    if isinstance(t, mi.EnumType):
        return _choices([m.value for m in t.cls])
    if isinstance(t, mi.StructType | mi.DictType):
        return "a JSON object"
    if isinstance(t, mi.TupleType):
        return f"a list of {len(t.item_types)} items"
    if isinstance(t, mi.ListType | mi.VarTupleType):
        return "a list"
    if isinstance(t, mi.NoneType):
        return "null"
    return "something else"


def value_at(body: Any, path: Path) -> Any:
    """The value `path` names in the parsed `body`, or `_ABSENT`."""
    node = body
    for part in path:
        indexed = isinstance(part, int) and isinstance(node, list | tuple) and part < len(node)
        if not (indexed or (isinstance(part, str) and isinstance(node, Mapping) and part in node)):
            return _ABSENT
        node = node[part]
    return node


def shown(value: Any, limit: int = 60) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def explain(
    exc: msgspec.ValidationError, root: Any, body: Any, *, quote: bool, tag: Any = None
) -> tuple[str, str]:
    """(the field, one sentence for a client: the field (quoted with `quote`), what it
    must be, what it was). `root` is the type that was decoded, `body` the same message
    parsed as plain JSON; `tag` picks the member of a tagged union."""
    reason, path = error_path(exc)
    for pattern, verb in ((_MISSING, "is required"), (_UNKNOWN, "is not a known field")):
        found = pattern.match(reason)
        if found:
            path = (*path, found["name"])
            field = path_text(path)
            name = f"'{field}'" if quote else field
            if verb == "is required" and not quote:
                return field, f"{name} is missing"
            t = type_at(root, path, tag)
            described = _described(t) if t is not None else ""
            return field, f"{name} {verb}" + (f": {described}" if described else "")
    field = path_text(path)
    where = (f"'{field}'" if quote else field) if field else "the message"
    t = type_at(root, path, tag)
    value = value_at(body, path)
    if t is None:
        return field, f"{where} is refused: {reason}"
    got = "" if value is _ABSENT else f", got {shown(value)}"
    return field, f"{where} must be {describe(t)}{got}"


def _described(t: mi.Type) -> str:
    """A field's description from its Meta, if the model gives one."""
    while isinstance(t, mi.Metadata):
        text = (t.extra_json_schema or {}).get("description")
        if text:
            return str(text)
        t = t.type
    return ""
