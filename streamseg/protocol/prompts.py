"""Client -> server messages (websocket text, data channel, REST), validated into types.

Clients are untrusted: every refusal is a `PromptError` whose ``code`` a program can
branch on and whose message names the field and what was expected, so a person reading
it can fix the request. Unknown fields are refused rather than ignored, because a
misspelt ``lables`` silently dropped would make a prompt mean something else.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from streamseg.protocol import strictjson
from streamseg.protocol.masks import MaskEncoding

ERROR_CODES = frozenset(
    {"bad_json", "unknown_type", "bad_field", "too_many_points", "empty_prompt", "too_large"}
)
"""The codes `parse_client_message` raises; `check_prompt_in_frame` adds ``out_of_frame``."""

_MAX_SEQ = 2**63 - 1
_ENCODING_VALUES = frozenset(e.value for e in MaskEncoding)


class PromptError(ValueError):
    """A client message refused, with a machine-readable ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[type[PromptError], tuple[str, str]]:
        return type(self), (self.code, str(self))


@dataclass(frozen=True, slots=True)
class PromptLimits:
    """Bounds that keep one client from making the tracker do unbounded work."""

    max_points: int = 32
    max_track_id: int = 2**31 - 1
    max_message_bytes: int = 64 * 1024
    max_request_id_chars: int = 128


@dataclass(frozen=True, slots=True)
class AddPrompt:
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


@dataclass(frozen=True, slots=True)
class RemoveTrack:
    """Stop tracking one object."""

    track_id: int
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class ResetTracks:
    """Forget every track of the stream."""

    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class SetOptions:
    """Per-connection output options; None leaves an option as it is."""

    encoding: MaskEncoding | None = None
    include_masks: bool | None = None
    request_id: str | None = None


ClientMessage: TypeAlias = AddPrompt | RemoveTrack | ResetTracks | SetOptions


@dataclass(frozen=True, slots=True)
class NextResult:
    """Pull delivery (websocket `?delivery=pull`): send me one frame message, the newest
    I have not had. Only a mask feed knows it: there is nothing to pull elsewhere."""


FeedMessage: TypeAlias = ClientMessage | NextResult

_FIELDS: dict[str, frozenset[str]] = {
    "prompt": frozenset(
        {
            "type",
            "track_id",
            "points",
            "labels",
            "box",
            "frame_seq",
            "clear_old_points",
            "request_id",
        }
    ),
    "remove": frozenset({"type", "track_id", "request_id"}),
    "reset": frozenset({"type", "request_id"}),
    "options": frozenset({"type", "encoding", "include_masks", "request_id"}),
}
_TYPES = ", ".join(repr(t) for t in _FIELDS)
_ENCODINGS = ", ".join(repr(e.value) for e in MaskEncoding)


def _bad(message: str) -> PromptError:
    return PromptError("bad_field", message)


_EXACT_FLOAT_INT = 2**53


def _as_int(value: Any) -> int | None:
    """An integer as JSON Schema means it: `3`, or a number with no fractional part
    (`3.0`, which JavaScript cannot tell from `3`), exactly representable; never
    `true`. None when `value` is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_FLOAT_INT:
        return int(value)
    return None


def _int(body: Mapping[str, Any], name: str, high: int) -> int | None:
    raw = body.get(name)
    if raw is None:
        return None
    value = _as_int(raw)
    if value is None:
        raise _bad(f"'{name}' must be an integer, got {raw!r}")
    if not 0 <= value <= high:
        raise _bad(f"'{name}' must be in [0, {high}], got {value}")
    return int(value)


def _bool(body: Mapping[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise _bad(f"'{name}' must be true or false, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(f"'{where}' must be a finite number, got {value!r}")
    return float(value)


def _list(value: Any, name: str, expected: str) -> Sequence[Any]:
    if not isinstance(value, list | tuple):
        raise _bad(f"'{name}' must be {expected}, got {value!r}")
    return value


def _points(body: Mapping[str, Any], limits: PromptLimits) -> tuple[tuple[float, float], ...]:
    raw = body.get("points")
    if raw is None:
        return ()
    items = _list(raw, "points", "a list of [x, y] pixel coordinates")
    if len(items) > limits.max_points:
        raise PromptError(
            "too_many_points",
            f"'points' has {len(items)} points; at most {limits.max_points} per prompt",
        )
    out: list[tuple[float, float]] = []
    for i, p in enumerate(items):
        if not isinstance(p, list | tuple) or len(p) != 2:
            raise _bad(f"'points[{i}]' must be [x, y], got {p!r}")
        out.append((_number(p[0], f"points[{i}][0]"), _number(p[1], f"points[{i}][1]")))
    return tuple(out)


def _labels(body: Mapping[str, Any]) -> tuple[int, ...]:
    raw = body.get("labels")
    if raw is None:
        return ()
    items = _list(raw, "labels", "a list of 1 (positive) or 0 (negative), one per point")
    for i, v in enumerate(items):
        if _as_int(v) not in (0, 1):
            raise _bad(f"'labels[{i}]' must be 1 (positive) or 0 (negative), got {v!r}")
    return tuple(int(v) for v in items)


def _box(body: Mapping[str, Any]) -> tuple[float, float, float, float] | None:
    raw = body.get("box")
    if raw is None:
        return None
    items = _list(raw, "box", "[x0, y0, x1, y1] pixel coordinates")
    if len(items) != 4:
        raise _bad(f"'box' must be [x0, y0, x1, y1], got {len(items)} numbers")
    x0, y0, x1, y1 = (_number(v, f"box[{i}]") for i, v in enumerate(items))
    if not (x0 < x1 and y0 < y1):
        raise _bad(f"'box' must have x0 < x1 and y0 < y1, got {[x0, y0, x1, y1]}")
    return x0, y0, x1, y1


def _parse_prompt(
    body: Mapping[str, Any], limits: PromptLimits, request_id: str | None
) -> AddPrompt:
    points = _points(body, limits)
    labels = _labels(body)
    if len(labels) != len(points):
        raise _bad(
            f"'labels' has {len(labels)} entries but 'points' has {len(points)}; "
            "give one label per point"
        )
    box = _box(body)
    if not points and box is None:
        raise PromptError("empty_prompt", "a prompt needs 'points' (with 'labels') or a 'box'")
    clear = _bool(body, "clear_old_points")
    return AddPrompt(
        track_id=_int(body, "track_id", limits.max_track_id),
        points=points,
        labels=labels,
        box=box,
        frame_seq=_int(body, "frame_seq", _MAX_SEQ),
        clear_old_points=True if clear is None else clear,
        request_id=request_id,
    )


def _parse_options(body: Mapping[str, Any], request_id: str | None) -> SetOptions:
    raw = body.get("encoding")
    encoding = None
    if raw is not None:
        if not isinstance(raw, str) or raw not in _ENCODING_VALUES:
            raise _bad(f"'encoding' must be one of {_ENCODINGS}, got {raw!r}")
        encoding = MaskEncoding(raw)
    return SetOptions(encoding, _bool(body, "include_masks"), request_id)


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


def _unknown_fields(kind: str, body: Mapping[str, Any]) -> PromptError | None:
    allowed = _FIELDS[kind]
    unknown = sorted(str(k) for k in body if k not in allowed)
    if not unknown:
        return None
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, allowed, n=1)
        hints.append(f"'{name}' (did you mean '{close[0]}'?)" if close else f"'{name}'")
    return _bad(
        f"unknown field {', '.join(hints)} in a {kind!r} message; "
        f"allowed: {', '.join(sorted(allowed))}"
    )


def parse_client_message(
    raw: str | bytes | bytearray | Mapping[str, Any], limits: PromptLimits | None = None
) -> ClientMessage:
    """Validate one client message into its typed form or raise `PromptError`.

    Text and bytes are size-checked against ``limits.max_message_bytes`` before parsing;
    an already-parsed mapping is trusted to have been bounded by its transport.
    """
    limits = limits or PromptLimits()
    if isinstance(raw, str | bytes | bytearray):
        _check_size(raw, limits)
        try:
            body: Any = strictjson.loads(raw)
        except strictjson.JSONRefused as exc:
            raise PromptError("bad_json", f"message refused: {exc}") from None
    else:
        body = raw
    if not isinstance(body, Mapping):
        raise PromptError("bad_json", f"message must be a JSON object, got {type(body).__name__}")
    kind = body.get("type")
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise PromptError("unknown_type", f"'type' must be one of {_TYPES}, got {kind!r}")
    unknown = _unknown_fields(kind, body)
    if unknown is not None:
        raise unknown
    request_id = body.get("request_id")
    if request_id is not None:
        if not isinstance(request_id, str):
            raise _bad(f"'request_id' must be a string, got {request_id!r}")
        if len(request_id) > limits.max_request_id_chars:
            raise _bad(f"'request_id' is limited to {limits.max_request_id_chars} characters")
    if kind == "prompt":
        return _parse_prompt(body, limits, request_id)
    if kind == "remove":
        track_id = _int(body, "track_id", limits.max_track_id)
        if track_id is None:
            raise _bad("'track_id' is required: the integer id of the track to remove")
        return RemoveTrack(track_id, request_id)
    if kind == "reset":
        return ResetTracks(request_id)
    return _parse_options(body, request_id)


def parse_feed_message(
    raw: str | bytes | bytearray, limits: PromptLimits | None = None
) -> FeedMessage:
    """A websocket mask-feed message: `{"type": "next"}` (no other field) or any
    message `parse_client_message` takes, refused the same way."""
    limits = limits or PromptLimits()
    _check_size(raw, limits)
    try:
        body: Any = strictjson.loads(raw)
    except strictjson.JSONRefused as exc:
        raise PromptError("bad_json", f"message refused: {exc}") from None
    if isinstance(body, Mapping) and body.get("type") == "next":
        extra = sorted(str(k) for k in body if k != "type")
        if extra:
            raise _bad(f"a 'next' message has no other field, got {', '.join(extra)}")
        return NextResult()
    return parse_client_message(body, limits)


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


def peek_request_id(raw: str | bytes | bytearray, limits: PromptLimits | None = None) -> str | None:
    """The request id of a message that may fail validation, so its error reply can be
    matched to the request; None when there is none to be had."""
    limits = limits or PromptLimits()
    if len(raw) > limits.max_message_bytes:
        return None
    try:
        body = strictjson.loads(raw)
    except (strictjson.JSONRefused, TypeError):
        return None
    rid = body.get("request_id") if isinstance(body, dict) else None
    if isinstance(rid, str) and len(rid) <= limits.max_request_id_chars:
        return rid
    return None
