"""The wire protocol declared once, as msgspec Structs: every message a client sends
(websocket, data channel, REST) and every message the server sends.

Each declaration is the decoder, the validation and the documentation at once:
`msgspec.json.Decoder(AnyClientMessage, dec_hook=dec_hook)` validates a client message
in C, and `msgspec.json.schema_components(...)` turns the same classes into JSON Schema
with the docstrings and field descriptions below (`schema_export` does that for every
message). Field names and order are those on the wire.

Client messages are a tagged union on ``type`` and refuse unknown fields. Server
messages carry ``type`` as an ordinary field (they are decoded one type at a time) and
ignore fields they do not know, so v1 can grow optional fields.

Two rules JSON Schema states and msgspec's strict mode does not: an integer is any
whole number (``3`` or ``3.0``, never ``true`` or ``"3"``), which `WholeNumber`
implements; and limits a server may configure (``max_points`` and the like) are
published at their defaults (`DEFAULT_LIMITS`) and checked at run time
(`streamseg.protocol.prompts`), so the schema never refuses what a server accepts.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, Final

from msgspec import Meta, Struct

from streamseg.protocol.masks import MaskEncoding
from streamseg.protocol.server_models import (
    MAX_SEQ,
    SERVER_MESSAGES,
    Ack,
    DataChannelFrame,
    DataChannelTrack,
    Error,
    FrameHeader,
    Hello,
    InlineRle,
    Limits,
    MaskRef,
    StateEvent,
    Times,
    TrackEvent,
    TrackHeader,
)

__all__ = [
    "CLIENT_MESSAGES",
    "DEFAULT_LIMITS",
    "SCHEMA_REVISION",
    "SCHEMA_VERSION",
    "SERVER_MESSAGES",
    "Ack",
    "AnyClientMessage",
    "AnyFeedMessage",
    "DataChannelFrame",
    "DataChannelTrack",
    "Error",
    "FrameHeader",
    "Hello",
    "InlineRle",
    "Limits",
    "MaskRef",
    "Next",
    "Options",
    "Prompt",
    "Remove",
    "Reset",
    "StateEvent",
    "Times",
    "TrackEvent",
    "TrackHeader",
    "WholeNumber",
    "dec_hook",
    "whole_number",
]

SCHEMA_VERSION: Final = 1
# Optional additions within v1, which older v1 clients ignore: 2 = per-track `source`,
# `model_seq` and `age_ms` (masks carried forward between model steps); 3 = `hello`
# carries `rev`, `boot_id` and `epoch`, and `event` messages (state, lost/found) for
# clients that ask for them with `?events=` (so older clients never see the new type);
# 4 = frame headers carry `mask_width`/`mask_height` (the grid masks are sent on, smaller
# than the frame with `?scale=`/`?max_side=`), `mask_crop` and per-track `mask_box` (each
# mask cropped to its box with `?crop=bbox`); `hello` says `delivery`, `scale`,
# `max_side` and `crop`. Full-frame masks, as before, unless a client asks.
SCHEMA_REVISION: Final = 4

EXACT_FLOAT_INT: Final = 2**53
"""A number with a fraction part names an integer only up to here: beyond, neighbouring
integers share one float."""


class DefaultLimits(Struct, frozen=True):
    """The bounds of a default server, as published in the schema."""

    max_points: int = 32
    max_track_id: int = 2**31 - 1
    max_message_bytes: int = 64 * 1024
    max_request_id_chars: int = 128


DEFAULT_LIMITS: Final = DefaultLimits()


# ---- integers as JSON Schema means them ---------------------------------------------------


class _IsPlainInt(type):
    def __instancecheck__(cls, value: object) -> bool:
        return type(value) is int


if TYPE_CHECKING:
    WholeNumber = int
else:

    class WholeNumber(metaclass=_IsPlainInt):
        """An integer as JSON Schema defines it: ``3``, or ``3.0`` (which JavaScript
        cannot tell from ``3``) exactly representable; never ``true`` or ``"3.5"``.

        A msgspec custom type: a plain `int` is one already (the metaclass says so,
        and msgspec keeps it as it is); anything else goes through `dec_hook`, which
        turns a whole float into an `int`. Decoded values are therefore always `int`.
        """


def whole_number(value: Any) -> int:
    """`value` as an `int` when it is a JSON Schema integer, else `ValueError`."""
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer() and abs(value) <= EXACT_FLOAT_INT:
        return int(value)
    raise ValueError(f"Expected an integer, got {value!r}")


def dec_hook(type_: type, value: Any) -> Any:
    """msgspec's hook for `WholeNumber`; pass it to every decoder of these models."""
    if type_ is WholeNumber:
        return whole_number(value)
    raise NotImplementedError(f"no decoder for {type_!r}")


def _integer_schema(low: int, high: int, **more: Any) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high, **more}


# ---- client -> server -----------------------------------------------------------------------

TrackIdInt = Annotated[
    WholeNumber, Meta(extra_json_schema=_integer_schema(0, DEFAULT_LIMITS.max_track_id))
]
SeqInt = Annotated[WholeNumber, Meta(extra_json_schema=_integer_schema(0, MAX_SEQ))]
Label = Annotated[
    WholeNumber,
    Meta(
        description="1: a positive point (on the object); 0: a negative one",
        extra_json_schema=_integer_schema(0, 1, enum=[0, 1]),
        extra={"expected": "1 (positive) or 0 (negative)"},
    ),
]
Point = Annotated[
    tuple[float, float], Meta(description="[x, y] in pixels", extra={"expected": "[x, y]"})
]
RequestId = Annotated[
    str | None,
    Meta(
        description="any string; echoed in the `ack` or `error` that answers the message",
        extra_json_schema={"maxLength": DEFAULT_LIMITS.max_request_id_chars},
    ),
]
_MAX_POINTS = {"maxItems": DEFAULT_LIMITS.max_points}


class _ClientMessage(Struct, frozen=True, forbid_unknown_fields=True, tag_field="type"):
    """Base of the client messages: tagged on ``type``, unknown fields refused."""


class Prompt(_ClientMessage, frozen=True, tag="prompt"):
    """Points and/or a box on one frame: a new track, or a correction of one.

    Needs `points` (with one label each) or a `box`, or both, in pixels of frame
    `frame_seq`, inside it. A `null` field is the same as an absent one.
    """

    track_id: Annotated[
        TrackIdInt | None,
        Meta(description="the track to correct; absent or null: a new track"),
    ] = None
    points: Annotated[
        tuple[Point, ...] | None,
        Meta(
            description="clicks, [[x, y], ...]; at most `max_points` (hello `limits`)",
            extra_json_schema=_MAX_POINTS,
            extra={"expected": "a list of [x, y] pixel coordinates"},
        ),
    ] = None
    labels: Annotated[
        tuple[Label, ...] | None,
        Meta(
            description="one per point: 1 positive, 0 negative",
            extra_json_schema=_MAX_POINTS,
            extra={"expected": "a list of 1 (positive) or 0 (negative), one per point"},
        ),
    ] = None
    box: Annotated[
        tuple[float, float, float, float] | None,
        Meta(
            description="[x0, y0, x1, y1] in pixels, x0 < x1 and y0 < y1",
            extra={"expected": "[x0, y0, x1, y1] pixel coordinates"},
        ),
    ] = None
    frame_seq: Annotated[
        SeqInt | None,
        Meta(
            description=(
                "the `seq` of the frame the coordinates are on, one this stream has "
                "received; absent or null: the newest"
            )
        ),
    ] = None
    clear_old_points: Annotated[
        bool | None,
        Meta(
            description=(
                "true (the default): replace the track's earlier points on that frame; "
                "false: add to them"
            )
        ),
    ] = None
    request_id: RequestId = None


class Remove(_ClientMessage, frozen=True, tag="remove"):
    """Stop tracking one object."""

    track_id: Annotated[TrackIdInt, Meta(description="the track to remove")]
    request_id: RequestId = None


class Reset(_ClientMessage, frozen=True, tag="reset"):
    """Forget every track of the stream."""

    request_id: RequestId = None


class Options(_ClientMessage, frozen=True, tag="options"):
    """This connection's output options; a `null` (or absent) option is left as it is."""

    encoding: Annotated[
        MaskEncoding | None, Meta(description="mask encoding of the frame messages")
    ] = None
    include_masks: Annotated[
        bool | None, Meta(description="whether frame messages carry masks")
    ] = None
    request_id: RequestId = None


class Next(_ClientMessage, frozen=True, tag="next"):
    """Pull delivery (websocket `?delivery=pull` only): send one frame message, the
    newest this client has not had. Answered by that frame message, not an `ack`."""


AnyClientMessage = Prompt | Remove | Reset | Options
"""What every surface takes: websocket, data channel, `POST /v1/streams/{id}/prompts`."""
AnyFeedMessage = Prompt | Remove | Reset | Options | Next
"""What a websocket mask feed takes."""
CLIENT_MESSAGES: Final = (Prompt, Remove, Reset, Options, Next)
"""Every message a client may send."""

_SOME_POINTS = {"required": ["points"], "properties": {"points": {"type": "array", "minItems": 1}}}
_SOME_LABELS = {"required": ["labels"], "properties": {"labels": {"type": "array", "minItems": 1}}}
PROMPT_RULES: Final = MappingProxyType(
    {
        # if/then rather than dependentRequired: a null or empty list is an absent one
        # (`{"points": null, "box": [...]}` is a box prompt), and null labels with
        # points are refused like absent ones.
        "allOf": [
            {"if": _SOME_POINTS, "then": _SOME_LABELS},
            {"if": _SOME_LABELS, "then": _SOME_POINTS},
        ],
        "anyOf": [_SOME_POINTS, {"required": ["box"], "properties": {"box": {"type": "array"}}}],
    }
)
"""What JSON Schema can say of `Prompt` beyond its fields, merged into its schema:
points come with labels, and a prompt has points or a box. (One label per point, and
x0 < x1 in a box, compare values: the server checks them.)"""
