"""The websocket mask feed's contract beyond its messages: the query parameters a client
may set (as JSON Schema) and every way a feed ends (close codes), for the AsyncAPI
document and docs/PROTOCOL.md. The server's parsers (server/mask_views.py,
stream_events.py, feed_delivery.py, source_rate_feed.py) are held to these by
tests/protocol/test_published_schemas.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamseg.protocol.masks import MaskEncoding
from streamseg.protocol.messages import (
    CLOSE_BAD_REQUEST,
    CLOSE_FORBIDDEN,
    CLOSE_NORMAL,
    CLOSE_SHUTDOWN,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNKNOWN_STREAM,
    EVENT_KINDS,
)

FEED_RATES = ("model", "source")
FEED_DELIVERIES = ("push", "pull")
FEED_CROPS = ("none", "bbox")
MIN_SCALE = 1 / 64
MAX_SIDE_RANGE = (8, 65536)


@dataclass(frozen=True, slots=True)
class CloseCode:
    """How a mask feed can end, as the client sees it."""

    code: int | None
    reason: str
    meaning: str
    action: str


CLOSE_CODES: tuple[CloseCode, ...] = (
    CloseCode(
        CLOSE_NORMAL,
        "",
        "the feed ended normally (the client closed, or the server ended it after an "
        "internal failure, which it logs)",
        "reconnect if you still want the feed",
    ),
    CloseCode(
        CLOSE_SHUTDOWN,
        "`server shutting down`",
        "the server is stopping or restarting (`streamseg serve`, `running_server`; an app "
        "served by plain uvicorn gets uvicorn's 1012 without a reason). With "
        "`events=state` a `stopped` event with reason `shutdown` comes first",
        "reconnect with backoff; the next `hello` has a new `boot_id`",
    ),
    CloseCode(
        CLOSE_UNAUTHORIZED,
        "the error's message",
        "no token, or one the server does not know (revoked tokens included); an `error` "
        "`unauthorized` comes first",
        "do not retry with the same token",
    ),
    CloseCode(
        CLOSE_FORBIDDEN,
        "the error's message",
        "the token lacks the `view` scope (`forbidden`)",
        "do not retry with the same token",
    ),
    CloseCode(
        CLOSE_UNKNOWN_STREAM,
        "`the stream was deleted` or `no stream '…'`",
        "no such stream, or it was deleted while connected (an `error` `unknown_stream` "
        "first; with `events=state` a `stopped` event with reason `deleted` before that)",
        "it may be created again (an operator, a restart with a streams file): retry with "
        "backoff, or give up after a while",
    ),
    CloseCode(
        CLOSE_BAD_REQUEST,
        "the error's message",
        "bad query parameters: `bad_encoding`, `bad_rate`, `bad_events`, `bad_delivery`, "
        "`bad_scale`, `bad_crop`",
        "fix the URL",
    ),
    CloseCode(
        None,
        "",
        "the connection was reset: a message did not leave the server within "
        "`send_timeout_s` (the client stopped reading, or its library stopped taking "
        "data: `max_queue` full), or the network failed",
        "reconnect, and keep reading (or use `delivery=pull`)",
    ),
)


def _events_pattern() -> str:
    kind = "(?:" + "|".join(EVENT_KINDS) + ")"
    return f"^(?:|all|none|{kind}(?:,{kind})*)$"


def feed_query_schema() -> dict[str, Any]:
    """The mask feed's query parameters; a bad value closes the feed with 4422."""
    encodings = [e.value for e in MaskEncoding]
    low, high = MAX_SIDE_RANGE
    return {
        "type": "object",
        "properties": {
            "encoding": {
                "enum": encodings,
                "default": MaskEncoding.RLE.value,
                "description": "mask encoding of the binary frame messages (`bad_encoding`)",
            },
            "rate": {
                "enum": list(FEED_RATES),
                "default": FEED_RATES[0],
                "description": "one message per frame the model processed (`model`) or per "
                "camera frame with the newest masks moved onto it (`source`) (`bad_rate`)",
            },
            "events": {
                "type": "string",
                "pattern": _events_pattern(),
                "default": "none",
                "description": "event kinds to receive: a comma list of "
                + ", ".join(EVENT_KINDS)
                + ", or `all`, or `none` (`bad_events`)",
            },
            "delivery": {
                "enum": list(FEED_DELIVERIES),
                "default": FEED_DELIVERIES[0],
                "description": "`push`: the newest result once the last message left the "
                "server; `pull`: one frame message per `next` (`bad_delivery`)",
            },
            "scale": {
                "type": "number",
                "minimum": MIN_SCALE,
                "maximum": 1,
                "description": "masks on a grid this many times the frame's size (`bad_scale`)",
            },
            "max_side": {
                "type": "integer",
                "minimum": low,
                "maximum": high,
                "description": "the mask grid's longer side at most this (`bad_scale`)",
            },
            "crop": {
                "enum": list(FEED_CROPS),
                "default": FEED_CROPS[0],
                "description": "`bbox`: each mask sent as its box on the grid only (`bad_crop`)",
            },
        },
    }
