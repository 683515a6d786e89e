"""JSON Schema of client messages for a given server: the models' schema with the
limits that server is configured with in place of the published defaults, written
without references so it can sit inside another document (an OpenAPI request body)."""

from __future__ import annotations

import copy
import functools
import operator
from typing import Any, get_args

import msgspec

from streamseg.protocol import models
from streamseg.protocol.prompts import PromptLimits
from streamseg.protocol.schema_export import inline_refs

_BY_TAG = {cls.__struct_config__.tag: cls for cls in get_args(models.AnyClientMessage)}


def request_schema(limits: PromptLimits, types: tuple[str, ...]) -> dict[str, Any]:
    """A JSON Schema of the client messages `types` (e.g. a REST body), from the
    models, with `limits` in place of the published defaults; self-contained (no
    references), so it can sit in any document (an OpenAPI request body)."""
    union = functools.reduce(operator.or_, [_BY_TAG[t] for t in types])
    (root,), defs = msgspec.json.schema_components([union], ref_template="{name}")
    if "Prompt" in defs:
        defs["Prompt"].update(copy.deepcopy(dict(models.PROMPT_RULES)))
    for schema in defs.values():
        props = schema.get("properties", {})
        for name, bound in (
            ("points", ("maxItems", limits.max_points)),
            ("labels", ("maxItems", limits.max_points)),
            ("request_id", ("maxLength", limits.max_request_id_chars)),
            ("track_id", ("maximum", limits.max_track_id)),
        ):
            if name in props:
                _set_bound(props[name], *bound)
    inlined: dict[str, Any] = inline_refs(root, defs)
    return inlined


def _set_bound(schema: dict[str, Any], key: str, value: int) -> None:
    """Replace the published default `key` wherever it stands in a property's schema
    (beside its description, or inside the non-null branch of an `anyOf`)."""
    if key in schema:
        schema[key] = value
    for branch in schema.get("anyOf", ()):
        _set_bound(branch, key, value)
