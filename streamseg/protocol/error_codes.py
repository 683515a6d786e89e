"""Every error code streamseg answers with, on every surface: one table.

A refusal carries the same ``code`` whichever way the request came: in a websocket or
data-channel ``error`` message, in a REST body ``{"detail": {"code", ...}}`` with the
HTTP status listed here, and, for a websocket that must close, as close code
4000 + that status (``unknown_stream`` closes with 4404). The REST layer
(`streamseg.server.api_errors`) and docs/PROTOCOL.md read their codes from here, and a
test holds them to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """One code: the HTTP status(es) it is answered with and when it happens."""

    statuses: tuple[int, ...]
    when: str
    group: str

    @property
    def status(self) -> int:
        return self.statuses[0]


PROMPT = "client messages"
TRACKER = "prompts on a stream"
FEED = "websocket feed"
ACCESS = "access and load"
HTTP = "HTTP"
ROUTES = "REST routes"

_TABLE: dict[str, ErrorCode] = {
    # parse_client_message, in the order it checks
    "too_large": ErrorCode(
        (413,),
        "a message or body over its byte limit (`max_message_bytes`, 64 KiB, counted in "
        "UTF-8 bytes), checked before parsing; an image over the upload limit",
        PROMPT,
    ),
    "bad_json": ErrorCode(
        (422,),
        "not JSON, not UTF-8, or not a JSON object; JSON this server refuses: `NaN`/"
        "`Infinity` or a number beyond float range, an integer of more than 32 digits, "
        "nesting deeper than 32 levels",
        PROMPT,
    ),
    "unknown_type": ErrorCode(
        (422,), "`type` missing or not a client message type (`prompt`, `remove`, ...)", PROMPT
    ),
    "bad_field": ErrorCode(
        (422,),
        'a field the message does not have (with a "did you mean" hint and the allowed '
        "fields), a required field missing, or a value of the wrong type or out of range; "
        "`field` names it (`points[0][1]`)",
        PROMPT,
    ),
    "too_many_points": ErrorCode(
        (422,),
        "more than `max_points` (32) points in one prompt, or more than 64 accumulated on "
        "one frame of a track with `clear_old_points: false`",
        PROMPT,
    ),
    "empty_prompt": ErrorCode((422,), "a prompt with neither points nor a box", PROMPT),
    # the stream's tracker
    "out_of_frame": ErrorCode(
        (422,),
        "a point or box corner outside [0, width] x [0, height] of the frame it is on",
        TRACKER,
    ),
    "future_frame": ErrorCode(
        (422,), "`frame_seq` beyond the newest frame the stream has received", TRACKER
    ),
    "invalid_prompt": ErrorCode(
        (422,), "a box added to earlier points on a frame (`clear_old_points: false`)", TRACKER
    ),
    "too_many_tracks": ErrorCode((422,), "the stream tracks as many objects as it may", TRACKER),
    "unknown_track": ErrorCode((404,), "`track_id` names no track of the stream", TRACKER),
    "no_frame_yet": ErrorCode((409,), "the stream has not processed a frame yet", TRACKER),
    # the websocket mask feed (query parameters close with 4422)
    "unknown_stream": ErrorCode((404,), "no such stream, or it was deleted", FEED),
    "bad_encoding": ErrorCode((422,), "`?encoding=` is not `rle`, `bitpack` or `png`", FEED),
    "bad_rate": ErrorCode((422,), "`?rate=` is not `model` or `source`", FEED),
    "bad_events": ErrorCode((422,), "`?events=` names an unknown event kind", FEED),
    "bad_delivery": ErrorCode(
        (422,), "`?delivery=` is not `push` or `pull`; `next` on a push feed", FEED
    ),
    "bad_scale": ErrorCode((422,), "`?scale=` or `?max_side=` out of range", FEED),
    "bad_crop": ErrorCode((422,), "`?crop=` is not `none` or `bbox`", FEED),
    # every surface
    "unauthorized": ErrorCode((401,), "no token, or one the server does not know", ACCESS),
    "forbidden": ErrorCode((403,), "the token lacks the scope the request needs", ACCESS),
    "busy": ErrorCode(
        (503, 429),
        "the inference thread or its queue is full (too many requests or `next`s waiting); "
        "retry shortly",
        ACCESS,
    ),
    "shutting_down": ErrorCode((503,), "the server is stopping", ACCESS),
    "not_ready": ErrorCode((503,), "the model is still loading, or the server is stopping", ACCESS),
    "internal": ErrorCode(
        (500,), "an unexpected failure; `error_id` finds it in the server log", ACCESS
    ),
    "rate_limited": ErrorCode((429,), "this client sent too many requests", ACCESS),
    "limit": ErrorCode((429,), "a server-wide limit (streams, peers) is reached", ACCESS),
    "too_many_connections": ErrorCode(
        (429,), "too many connections at once from one client address", ACCESS
    ),
    "bad_host": ErrorCode((421,), "the Host header names no host this server answers for", ACCESS),
    "bad_origin": ErrorCode((403,), "a browser request from another site's Origin", ACCESS),
    # HTTP itself (FastAPI's and Starlette's own answers, in the one shape)
    "bad_request": ErrorCode((400,), "a malformed HTTP request", HTTP),
    "not_found": ErrorCode((404,), "no such path", HTTP),
    "method_not_allowed": ErrorCode((405,), "a method the path does not take; see `Allow`", HTTP),
    "conflict": ErrorCode((409,), "conflicts with the current state", HTTP),
    "unsupported_media_type": ErrorCode((415,), "a body of a type the route does not take", HTTP),
    "unavailable": ErrorCode((503,), "the service is unavailable", HTTP),
    # individual REST routes
    "bad_offer": ErrorCode((400,), "the WebRTC offer's SDP is refused", ROUTES),
    "missing_image": ErrorCode((422,), "no image in the request", ROUTES),
    "bad_base64": ErrorCode((422,), "`image_base64` is not valid base64", ROUTES),
    "bad_multipart": ErrorCode((422,), "a multipart body that cannot be read", ROUTES),
    "not_an_image": ErrorCode((415,), "the image cannot be decoded", ROUTES),
    "missing_prompts": ErrorCode((422,), "`prompts` missing or empty", ROUTES),
    "too_many_prompts": ErrorCode((422,), "more prompts than the server takes at once", ROUTES),
    "unknown_image": ErrorCode((404,), "no cached image of that id", ROUTES),
    "stream_exists": ErrorCode((409,), "a stream of that id exists", ROUTES),
    "no_streams_file": ErrorCode((409,), "`persist` without a streams file", ROUTES),
    "bad_url": ErrorCode((422,), "a source or image URL the source policy refuses", ROUTES),
    "id_required": ErrorCode((422,), "a persisted stream needs an `id`", ROUTES),
    "secret_in_url": ErrorCode(
        (422,), "a persisted stream's URL carries credentials; use a secret reference", ROUTES
    ),
    "persist_failed": ErrorCode((500,), "the streams file could not be written", ROUTES),
    "unknown_schema": ErrorCode((404,), "no published schema of that name", ROUTES),
    "fetch_disabled": ErrorCode((403,), "`image_url` is given but fetching is disabled", ROUTES),
    "source_forbidden": ErrorCode((403,), "`image_url`'s host is not allowed", ROUTES),
    "redirect_refused": ErrorCode((422,), "`image_url` redirects elsewhere", ROUTES),
    "fetch_failed": ErrorCode((422,), "`image_url` could not be fetched", ROUTES),
    "timeout": ErrorCode((422,), "`image_url` did not answer in time", ROUTES),
}

ERROR_CODES: Final = MappingProxyType(_TABLE)
"""code -> `ErrorCode`: every code any surface answers with."""

PARSE_CODES: Final = frozenset(c for c, e in _TABLE.items() if e.group == PROMPT)
"""The codes `parse_client_message` raises."""

PROMPT_CODES: Final = (
    *(c for c, e in _TABLE.items() if e.group in (PROMPT, TRACKER) and 422 in e.statuses),
)
"""The 422 codes of a client message sent to a stream (any surface)."""


def http_status(code: str) -> int:
    """The HTTP status a REST route answers `code` with (422 for a code not listed)."""
    entry = _TABLE.get(code)
    return entry.status if entry is not None else 422
