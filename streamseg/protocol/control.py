"""Server -> client text messages other than frames (hello, ack, error, events), the
JSON writer every server message shares, and the client's check of any server text
message against its model (`parse_server_text`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import msgspec
import numpy as np

from streamseg.protocol import explain, models, strictjson
from streamseg.protocol.masks import MaskEncoding
from streamseg.protocol.models import SCHEMA_REVISION, SCHEMA_VERSION
from streamseg.protocol.prompts import PromptLimits
from streamseg.protocol.server_models import SOURCE_STATES

# Events a websocket client may ask for with `?events=`.
EVENT_KINDS = ("state", "tracks")
TRACK_EVENTS = ("lost", "found")
_SERVER_TYPES: dict[str, type[msgspec.Struct]] = {
    "hello": models.Hello,
    "error": models.Error,
    "ack": models.Ack,
    "frame": models.DataChannelFrame,
}
_TEXT = msgspec.json.Decoder()


class MessageError(ValueError):
    """A message that is malformed, of another schema version, or cannot be encoded."""


class UnknownMessageType(MessageError):
    """A server text message of a type this version does not know: a client may skip
    it (a newer server's addition) rather than fail."""


def _numpy_item(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_ENCODER = msgspec.json.Encoder(enc_hook=_numpy_item)


def _finite(value: Any) -> bool:
    """No NaN or infinity anywhere in `value` (msgspec would write them as null)."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, float | np.floating):
            if not np.isfinite(node):
                return False
        elif isinstance(node, Mapping):
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return True


def dumps(body: Mapping[str, Any], *, checked: bool = False) -> bytes:
    """Strict JSON (no NaN, which browsers' JSON.parse rejects), compact, UTF-8.
    ``checked``: the caller has made sure every number in `body` is finite."""
    if not (checked or _finite(body)):
        raise MessageError("message cannot be sent as JSON: a number is NaN or infinite")
    try:
        return _ENCODER.encode(body)
    except (TypeError, OverflowError) as exc:
        raise MessageError(f"message cannot be sent as JSON: {exc}") from None


def check_version(body: Mapping[str, Any]) -> None:
    version = body.get("v")
    if version != SCHEMA_VERSION:
        raise MessageError(
            f"message has schema version {version!r} but this streamseg speaks "
            f"v{SCHEMA_VERSION}; use a client and server of matching versions"
        )


def _control(kind: str, fields: Mapping[str, Any], extra: Mapping[str, Any]) -> str:
    clash = sorted({"v", "type"} & set(extra))
    if clash:
        raise MessageError(f"fields {clash} are set by the protocol")
    return dumps({"v": SCHEMA_VERSION, "type": kind, **fields, **extra}).decode()


def hello_message(
    stream_id: str,
    *,
    encoding: MaskEncoding | str | None = None,
    encodings: Sequence[MaskEncoding | str] = tuple(MaskEncoding),
    limits: PromptLimits | None = None,
    **extra: Any,
) -> str:
    """The first text message on a connection: which stream, which mask encoding is in
    use and which are offered, and the prompt limits, so a client can stay inside them.
    ``extra`` adds server facts (e.g. ``send_timeout_s``, ``boot_id``, ``epoch``)."""
    fields: dict[str, Any] = {
        "rev": SCHEMA_REVISION,
        "stream_id": stream_id,
        "encoding": None if encoding is None else MaskEncoding(encoding).value,
        "encodings": [MaskEncoding(e).value for e in encodings],
    }
    if limits is not None:
        fields["limits"] = asdict(limits)
    return _control("hello", fields, extra)


def error_message(
    code: str, message: str, request_id: str | None = None, field: str | None = None
) -> str:
    """A refusal; ``request_id`` (when the request had one) ties it to the request,
    ``field`` names the refused field (``bad_field``, as on REST)."""
    fields: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        fields["field"] = field
    if request_id is not None:
        fields["request_id"] = request_id
    return _control("error", fields, {})


def internal_error_text(error_id: str) -> str:
    """What a client is told about an unexpected failure: nothing but where to look."""
    return f"internal error; the server log has the details under id {error_id}"


def internal_error_message(error_id: str, request_id: str | None = None) -> str:
    """An unexpected failure (code ``internal``). ``error_id`` names the traceback in the
    server log; the exception's text is never sent, it may hold paths or credentials."""
    fields: dict[str, Any] = {
        "code": "internal",
        "message": internal_error_text(error_id),
        "error_id": error_id,
    }
    if request_id is not None:
        fields["request_id"] = request_id
    return _control("error", fields, {})


def state_event_message(
    stream_id: str, state: str, previous: str | None, reason: str, message: str, ts: float
) -> str:
    """The camera's source entered `state` (from `previous`, null for the state at
    subscription); `reason` is a code, `message` a sentence for people."""
    if state not in SOURCE_STATES or (previous is not None and previous not in SOURCE_STATES):
        raise MessageError(f"unknown source state {state!r} (from {previous!r})")
    fields = {
        "event": "state",
        "stream_id": stream_id,
        "state": state,
        "previous": previous,
        "reason": reason,
        "message": message,
        "ts": float(ts),
    }
    return _control("event", fields, {})


def track_event_message(stream_id: str, event: str, track_id: int, seq: int, ts: float) -> str:
    """Track `track_id` became visible (`found`) or not (`lost`) on frame `seq`,
    captured at `ts`."""
    if event not in TRACK_EVENTS:
        raise MessageError(f"unknown track event {event!r}")
    fields = {
        "event": event,
        "stream_id": stream_id,
        "track_id": int(track_id),
        "seq": int(seq),
        "ts": float(ts),
    }
    return _control("event", fields, {})


def ack_message(request_id: str | None, result: Mapping[str, Any] | None = None) -> str:
    """Success for a client request, with what it did (e.g. the new track id)."""
    return _control("ack", {"request_id": request_id, "result": result}, {})


def parse_server_text(text: str | bytes) -> dict[str, Any]:
    """A server text message as a dict, after checking it is JSON of this schema version,
    a known type and valid for that type's model (free-form parts nested at most
    `strictjson.MAX_DEPTH` deep), so a client fails clearly against a newer server."""
    try:
        body = _TEXT.decode(text)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise MessageError(f"server message is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MessageError(f"server message must be a JSON object, got {type(body).__name__}")
    check_version(body)
    kind = body.get("type")
    model: Any = _SERVER_TYPES.get(kind) if isinstance(kind, str) else None
    if kind == "event":
        model = models.StateEvent if body.get("event") == "state" else models.TrackEvent
    if model is None:
        raise UnknownMessageType(f"unknown server message type {kind!r}")
    if strictjson.too_deep(body, strictjson.MAX_DEPTH):
        raise MessageError(f"server message nested more than {strictjson.MAX_DEPTH} levels deep")
    try:
        msgspec.convert(body, model)
    except msgspec.ValidationError as exc:
        raise MessageError(
            f"{kind} message: {explain.explain(exc, model, body, quote=False)[1]}"
        ) from None
    return body
