"""Client -> server messages (data channel, websocket, REST), validated into types.

Every refusal is a `PromptError` with a machine-readable code and a message that
names the field and what was expected. Bounds against the frame are checked by the
tracker, on the exact frame the prompt names.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from streamseg.protocol.masks import MaskEncoding


class PromptError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class PromptLimits:
    max_points: int = 32
    max_track_id: int = 2**31 - 1
    max_message_bytes: int = 64 * 1024


@dataclass(frozen=True, slots=True)
class AddPrompt:
    track_id: int | None
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None
    frame_seq: int | None = None
    clear_old_points: bool = True
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class RemoveTrack:
    track_id: int
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class ResetTracks:
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class SetOptions:
    encoding: MaskEncoding | None = None
    include_masks: bool | None = None
    request_id: str | None = None


ClientMessage = AddPrompt | RemoveTrack | ResetTracks | SetOptions
_FIELDS = {
    "prompt": {
        "type",
        "track_id",
        "points",
        "labels",
        "box",
        "frame_seq",
        "clear_old_points",
        "request_id",
    },
    "remove": {"type", "track_id", "request_id"},
    "reset": {"type", "request_id"},
    "options": {"type", "encoding", "include_masks", "request_id"},
}


def _int(body: dict[str, Any], name: str, *, low: int, high: int, optional: bool) -> int | None:
    value = body.get(name)
    if value is None:
        if optional:
            return None
        raise PromptError("bad_field", f"'{name}' is required (an integer)")
    if isinstance(value, bool) or not isinstance(value, int):
        raise PromptError("bad_field", f"'{name}' must be an integer, got {value!r}")
    if not low <= value <= high:
        raise PromptError("bad_field", f"'{name}' must be in [{low}, {high}], got {value}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PromptError("bad_field", f"{where} must be a finite number, got {value!r}")
    return float(value)


def _points(body: dict[str, Any], limits: PromptLimits) -> tuple[tuple[float, float], ...]:
    raw = body.get("points")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise PromptError("bad_field", "'points' must be a list of [x, y]")
    if len(raw) > limits.max_points:
        raise PromptError("too_many_points", f"at most {limits.max_points} points per prompt")
    out = []
    for i, p in enumerate(raw):
        if not isinstance(p, list) or len(p) != 2:
            raise PromptError("bad_field", f"points[{i}] must be [x, y], got {p!r}")
        out.append((_number(p[0], f"points[{i}][0]"), _number(p[1], f"points[{i}][1]")))
    return tuple(out)


def _parse_prompt(body: dict[str, Any], limits: PromptLimits, request_id: str | None) -> AddPrompt:
    points = _points(body, limits)
    raw_labels = body.get("labels")
    labels: tuple[int, ...] = ()
    if raw_labels is not None:
        if not isinstance(raw_labels, list) or any(
            isinstance(v, bool) or v not in (0, 1) for v in raw_labels
        ):
            raise PromptError(
                "bad_field", "'labels' must be a list of 1 (positive) or 0 (negative)"
            )
        labels = tuple(int(v) for v in raw_labels)
    if len(labels) != len(points):
        raise PromptError("bad_field", f"{len(points)} points but {len(labels)} labels")
    box = None
    if body.get("box") is not None:
        raw = body["box"]
        if not isinstance(raw, list) or len(raw) != 4:
            raise PromptError("bad_field", "'box' must be [x0, y0, x1, y1]")
        x0, y0, x1, y1 = (_number(v, f"box[{i}]") for i, v in enumerate(raw))
        if not (x0 < x1 and y0 < y1):
            raise PromptError("bad_field", "'box' must have x0 < x1 and y0 < y1")
        box = (x0, y0, x1, y1)
    if not points and box is None:
        raise PromptError("empty_prompt", "a prompt needs 'points' (with 'labels') or a 'box'")
    clear = body.get("clear_old_points", True)
    if not isinstance(clear, bool):
        raise PromptError("bad_field", "'clear_old_points' must be true or false")
    return AddPrompt(
        track_id=_int(body, "track_id", low=0, high=limits.max_track_id, optional=True),
        points=points,
        labels=labels,
        box=box,
        frame_seq=_int(body, "frame_seq", low=0, high=2**63 - 1, optional=True),
        clear_old_points=clear,
        request_id=request_id,
    )


def parse_client_message(
    raw: str | bytes | dict[str, Any], limits: PromptLimits | None = None
) -> ClientMessage:
    limits = limits or PromptLimits()
    if isinstance(raw, str | bytes):
        if len(raw) > limits.max_message_bytes:
            raise PromptError(
                "too_large", f"messages are limited to {limits.max_message_bytes} bytes"
            )
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PromptError("bad_json", f"message is not valid JSON: {exc}") from None
    else:
        body = raw
    if not isinstance(body, dict):
        raise PromptError("bad_json", "message must be a JSON object")
    kind = body.get("type")
    if kind not in _FIELDS:
        raise PromptError("unknown_type", f"'type' must be one of {sorted(_FIELDS)}, got {kind!r}")
    unknown = set(body) - _FIELDS[kind]
    if unknown:
        raise PromptError("bad_field", f"unknown field(s) {sorted(unknown)} for type {kind!r}")
    request_id = body.get("request_id")
    if request_id is not None and not isinstance(request_id, str):
        raise PromptError("bad_field", "'request_id' must be a string")
    if kind == "prompt":
        return _parse_prompt(body, limits, request_id)
    if kind == "remove":
        track_id = _int(body, "track_id", low=0, high=limits.max_track_id, optional=False)
        assert track_id is not None
        return RemoveTrack(track_id, request_id)
    if kind == "reset":
        return ResetTracks(request_id)
    encoding = body.get("encoding")
    if encoding is not None and encoding not in {e.value for e in MaskEncoding}:
        raise PromptError(
            "bad_field", f"'encoding' must be one of rle, bitpack, png; got {encoding!r}"
        )
    include = body.get("include_masks")
    if include is not None and not isinstance(include, bool):
        raise PromptError("bad_field", "'include_masks' must be true or false")
    return SetOptions(MaskEncoding(encoding) if encoding else None, include, request_id)


def peek_request_id(raw: str | bytes) -> str | None:
    """The request id of a message that may fail validation, so its error can be
    matched to the request."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError):
        return None
    rid = body.get("request_id") if isinstance(body, dict) else None
    return rid if isinstance(rid, str) else None
