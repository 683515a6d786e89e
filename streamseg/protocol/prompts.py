"""Client -> server messages (websocket text, data channel, REST), validated into types.

Clients are untrusted: every refusal is a `PromptError` whose ``code`` a program can
branch on and whose message names the field and what was expected, so a person reading
it can fix the request. Unknown fields are refused rather than ignored, because a
misspelt ``lables`` silently dropped would make a prompt mean something else.

The messages are declared in `streamseg.protocol.models`, which msgspec decodes and
validates in one pass; what is left here is what a schema cannot say: limits a server
configures at run time, rules that tie fields together, and refusals worded for people.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias, get_args

import msgspec

from streamseg.protocol import explain, models, strictjson
from streamseg.protocol.error_codes import PARSE_CODES
from streamseg.protocol.masks import MaskEncoding

ERROR_CODES = PARSE_CODES
"""The codes `parse_client_message` raises; `check_prompt_in_frame` adds ``out_of_frame``."""


class PromptError(ValueError):
    """A client message refused, with a machine-readable ``code`` and, when one field
    is to blame, its name as the protocol writes it (``points[0][1]``)."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field

    def __reduce__(self) -> tuple[type[PromptError], tuple[str, str, str | None]]:
        return type(self), (self.code, str(self), self.field)


@dataclass(frozen=True, slots=True)
class PromptLimits:
    """Bounds that keep one client from making the tracker do unbounded work."""

    max_points: int = models.DEFAULT_LIMITS.max_points
    max_track_id: int = models.DEFAULT_LIMITS.max_track_id
    max_message_bytes: int = models.DEFAULT_LIMITS.max_message_bytes
    max_request_id_chars: int = models.DEFAULT_LIMITS.max_request_id_chars


_DEFAULT_LIMITS = PromptLimits()


class AddPrompt(msgspec.Struct, frozen=True):
    """Points and/or a box in pixel coordinates of frame ``frame_seq`` (None: the newest).

    ``track_id`` None asks the server for a new track; ``clear_old_points`` False adds
    the points to the track's earlier ones on that frame instead of replacing them.
    """

    track_id: int | None
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None
    frame_seq: int | None = None
    clear_old_points: bool = True
    request_id: str | None = None


class RemoveTrack(msgspec.Struct, frozen=True):
    """Stop tracking one object."""

    track_id: int
    request_id: str | None = None


class ResetTracks(msgspec.Struct, frozen=True):
    """Forget every track of the stream."""

    request_id: str | None = None


class SetOptions(msgspec.Struct, frozen=True):
    """Per-connection output options; None leaves an option as it is."""

    encoding: MaskEncoding | None = None
    include_masks: bool | None = None
    request_id: str | None = None


ClientMessage: TypeAlias = AddPrompt | RemoveTrack | ResetTracks | SetOptions


class NextResult(msgspec.Struct, frozen=True):
    """Pull delivery (websocket `?delivery=pull`): send me one frame message, the newest
    I have not had. Only a mask feed knows it: there is nothing to pull elsewhere."""


FeedMessage: TypeAlias = ClientMessage | NextResult

_CLIENT = msgspec.json.Decoder(models.AnyClientMessage, dec_hook=models.dec_hook)
_FEED = msgspec.json.Decoder(models.AnyFeedMessage, dec_hook=models.dec_hook)
_TAGS: dict[Any, dict[str, type[msgspec.Struct]]] = {
    union: {cls.__struct_config__.tag: cls for cls in get_args(union)}
    for union in (models.AnyClientMessage, models.AnyFeedMessage)
}
# A run of 33 digits may be an integer longer than strict JSON allows (typed decoding
# would take it, as a float where a number is expected): only then is the message
# parsed again, by the strict parser, to tell.
_DIGITS_AS_D = bytes(ord("d") if 0x30 <= i <= 0x39 else ord(" ") for i in range(256))
_LONG_DIGIT_RUN = b"d" * (strictjson.MAX_INT_DIGITS + 1)


def _bad(message: str, field: str | None = None) -> PromptError:
    return PromptError("bad_field", message, field)


def _strict(raw: str | bytes | bytearray) -> Any:
    try:
        return strictjson.loads(raw)
    except strictjson.JSONRefused as exc:
        raise PromptError("bad_json", f"message refused: {exc}") from None


def _check_size(raw: str | bytes | bytearray, limits: PromptLimits) -> None:
    size = len(raw)
    # A str's UTF-8 form is at most 4 bytes a character: encode only when it could matter.
    if isinstance(raw, str) and limits.max_message_bytes // 4 < size <= limits.max_message_bytes:
        size = len(raw.encode("utf-8", "surrogatepass"))
    if size > limits.max_message_bytes:
        raise PromptError(
            "too_large",
            f"message is {size} bytes; messages are limited to {limits.max_message_bytes}",
        )


def _decode(
    raw: str | bytes | bytearray, limits: PromptLimits, decoder: msgspec.json.Decoder[Any]
) -> Any:
    """Text decoded and validated by the models (in C); the slow strict parser runs
    only to explain a refusal or to rule out an over-long integer."""
    _check_size(raw, limits)
    try:
        wire = decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise _refusal(exc, _strict(raw), decoder.type, limits) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        _strict(raw)  # its reason, when it has one, says more than msgspec's
        raise PromptError("bad_json", f"message refused: not valid JSON: {exc}") from None
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if _LONG_DIGIT_RUN in data.translate(_DIGITS_AS_D):
        _strict(raw)
    return wire


def _convert(body: Mapping[str, Any], union: Any, limits: PromptLimits) -> Any:
    """An already-parsed message (REST bodies, Python callers) through the same models;
    Python's own floats may be NaN or infinite, which JSON text cannot."""
    if not isinstance(body, Mapping):
        raise PromptError("bad_json", f"message must be a JSON object, got {type(body).__name__}")
    try:
        wire = msgspec.convert(dict(body), union, dec_hook=models.dec_hook)
    except msgspec.ValidationError as exc:
        raise _refusal(exc, body, union, limits) from None
    if isinstance(wire, models.Prompt):
        numbers = [
            (f"points[{i}][{j}]", v)
            for i, p in enumerate(wire.points or ())
            for j, v in enumerate(p)
        ]
        numbers += [(f"box[{i}]", v) for i, v in enumerate(wire.box or ())]
        for where, value in numbers:
            if not math.isfinite(value):
                raise _bad(f"'{where}' must be a finite number, got {value!r}", where)
    return wire


def _refusal(
    exc: msgspec.ValidationError, body: Any, union: Any, limits: PromptLimits
) -> PromptError:
    """The refusal of a message the models did not take, found in the order a client
    fixes things: the JSON, the type, unknown fields, then the field msgspec names."""
    if not isinstance(body, Mapping):
        return PromptError("bad_json", f"message must be a JSON object, got {type(body).__name__}")
    tags = _TAGS[union]
    kind = body.get("type")
    cls = tags.get(kind) if isinstance(kind, str) else None
    if cls is None or not isinstance(kind, str):
        allowed = ", ".join(repr(t) for t in tags)
        return PromptError("unknown_type", f"'type' must be one of {allowed}, got {kind!r}")
    unknown = _unknown_fields(kind, cls, body)
    if unknown is not None:
        return unknown
    points = body.get("points")
    if isinstance(points, list | tuple) and len(points) > limits.max_points:
        return _too_many_points(len(points), limits)
    field, message = explain.explain(exc, union, body, quote=True, tag=kind)
    return _bad(message, field or None)


def _unknown_fields(
    kind: str, cls: type[msgspec.Struct], body: Mapping[str, Any]
) -> PromptError | None:
    allowed = {"type", *cls.__struct_fields__}
    unknown = sorted(str(k) for k in body if k not in allowed)
    if not unknown:
        return None
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, allowed, n=1)
        hints.append(f"'{name}' (did you mean '{close[0]}'?)" if close else f"'{name}'")
    return _bad(
        f"unknown field {', '.join(hints)} in a {kind!r} message; "
        f"allowed: {', '.join(sorted(allowed))}",
        unknown[0],
    )


def _too_many_points(count: int, limits: PromptLimits) -> PromptError:
    return PromptError(
        "too_many_points",
        f"'points' has {count} points; at most {limits.max_points} per prompt",
        "points",
    )


def _in_range(value: int | None, name: str, high: int) -> int | None:
    if value is not None and not 0 <= value <= high:
        raise _bad(f"'{name}' must be in [0, {high}], got {value}", name)
    return value


def _prompt(wire: models.Prompt, limits: PromptLimits) -> AddPrompt:
    """What the schema cannot say: limits configured at run time, and rules that tie
    fields together."""
    points = wire.points or ()
    if len(points) > limits.max_points:
        raise _too_many_points(len(points), limits)
    labels = wire.labels or ()
    for i, label in enumerate(labels):
        if label not in (0, 1):
            raise _bad(
                f"'labels[{i}]' must be 1 (positive) or 0 (negative), got {label!r}", f"labels[{i}]"
            )
    if len(labels) != len(points):
        raise _bad(
            f"'labels' has {len(labels)} entries but 'points' has {len(points)}; "
            "give one label per point",
            "labels",
        )
    box = wire.box
    if box is not None and not (box[0] < box[2] and box[1] < box[3]):
        raise _bad(f"'box' must have x0 < x1 and y0 < y1, got {list(box)}", "box")
    if not points and box is None:
        raise PromptError("empty_prompt", "a prompt needs 'points' (with 'labels') or a 'box'")
    return AddPrompt(
        track_id=_in_range(wire.track_id, "track_id", limits.max_track_id),
        points=points,
        labels=labels,
        box=box,
        frame_seq=_in_range(wire.frame_seq, "frame_seq", models.MAX_SEQ),
        clear_old_points=wire.clear_old_points is not False,
        request_id=wire.request_id,
    )


def _checked(wire: models.AnyClientMessage, limits: PromptLimits) -> ClientMessage:
    request_id = wire.request_id
    if request_id is not None and len(request_id) > limits.max_request_id_chars:
        raise _bad(
            f"'request_id' is limited to {limits.max_request_id_chars} characters", "request_id"
        )
    if isinstance(wire, models.Prompt):
        return _prompt(wire, limits)
    if isinstance(wire, models.Remove):
        track_id = _in_range(wire.track_id, "track_id", limits.max_track_id)
        assert track_id is not None
        return RemoveTrack(track_id, request_id)
    if isinstance(wire, models.Reset):
        return ResetTracks(request_id)
    return SetOptions(wire.encoding, wire.include_masks, request_id)


def parse_client_message(
    raw: str | bytes | bytearray | Mapping[str, Any], limits: PromptLimits | None = None
) -> ClientMessage:
    """Validate one client message into its typed form or raise `PromptError`.

    Text and bytes are size-checked against ``limits.max_message_bytes`` before parsing;
    an already-parsed mapping is trusted to have been bounded by its transport.
    """
    limits = limits or _DEFAULT_LIMITS
    if isinstance(raw, str | bytes | bytearray):
        wire = _decode(raw, limits, _CLIENT)
    else:
        wire = _convert(raw, models.AnyClientMessage, limits)
    return _checked(wire, limits)


def parse_feed_message(
    raw: str | bytes | bytearray, limits: PromptLimits | None = None
) -> FeedMessage:
    """A websocket mask-feed message: `{"type": "next"}` (no other field) or any
    message `parse_client_message` takes, refused the same way."""
    limits = limits or _DEFAULT_LIMITS
    wire = _decode(raw, limits, _FEED)
    if isinstance(wire, models.Next):
        return NextResult()
    return _checked(wire, limits)


def check_prompt_in_frame(prompt: AddPrompt, width: int, height: int) -> None:
    """Raise `PromptError` ``out_of_frame`` when a point or box corner lies outside
    [0, width] x [0, height]; the one bounds check, shared by every surface and the
    tracker, so they cannot disagree on edge pixels."""
    if width < 1 or height < 1:
        raise ValueError(f"frame size must be positive, got {width}x{height}")

    def inside(x: float, y: float) -> bool:
        return 0 <= x <= width and 0 <= y <= height

    for i, (x, y) in enumerate(prompt.points):
        if not inside(x, y):
            raise PromptError(
                "out_of_frame",
                f"points[{i}] ({x:g}, {y:g}) lies outside the {width}x{height} frame "
                f"(x in [0, {width}], y in [0, {height}])",
            )
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        if not (inside(x0, y0) and inside(x1, y1)):
            raise PromptError(
                "out_of_frame",
                f"box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] lies outside the {width}x{height} "
                f"frame (x in [0, {width}], y in [0, {height}])",
            )


class _RequestIdOnly(msgspec.Struct):
    request_id: str | None = None


_PEEK = msgspec.json.Decoder(_RequestIdOnly)


def peek_request_id(raw: str | bytes | bytearray, limits: PromptLimits | None = None) -> str | None:
    """The request id of a message that may fail validation, so its error reply can be
    matched to the request; None when there is none to be had."""
    limits = limits or _DEFAULT_LIMITS
    if len(raw) > limits.max_message_bytes:
        return None
    try:
        rid = _PEEK.decode(raw).request_id
    except (msgspec.DecodeError, RecursionError):
        return None
    if rid is not None and len(rid) <= limits.max_request_id_chars:
        return rid
    return None
