"""The AsyncAPI 3.0 document of the realtime surfaces, generated from the models.

Two channels: the websocket mask feed (`/v1/streams/{stream_id}/masks`) and the WebRTC
data channel (`streamseg`). The application described is the streamseg server, so
`send` operations are what it sends and `receive` what clients send it. Message
payloads refer to the JSON Schema components that `schema_export` generates from the
msgspec models; the binary frame message is described by its layout and the schema of
its JSON header. Pure: the document is data, rendered with sorted keys
(`render`), so the committed copy (docs/protocol/) can be checked for drift.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from streamseg.protocol.feed_contract import CLOSE_CODES, feed_query_schema
from streamseg.protocol.messages import SCHEMA_REVISION, SCHEMA_VERSION
from streamseg.protocol.schema_export import Rules, WireMessage, components

ASYNCAPI_VERSION = "3.0.0"
MASK_FEED = "maskFeed"
DATA_CHANNEL = "dataChannel"
WS_BINDING_VERSION = "0.1.0"
BINARY_FRAME = "frame"
CONTROL_MESSAGES = frozenset({"prompt", "remove", "reset"})  # need the `control` scope


_FRAME_LAYOUT = [
    {"name": "header_length", "type": "uint32", "byteOrder": "big-endian"},
    {
        "name": "header",
        "length": "header_length",
        "contentType": "application/json",
        "encoding": "utf-8",
    },
    {
        "name": "masks",
        "length": "the rest of the message",
        "description": "each track's mask at tracks[i].mask.offset (from the start of "
        "this part), tracks[i].mask.length bytes, in the header's `encoding`",
    },
]


def _security() -> dict[str, Any]:
    return {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "`Authorization: Bearer <token>` on the websocket handshake "
            "(clients that can set headers)",
        },
        "bearerSubprotocol": {
            "type": "httpApiKey",
            "in": "header",
            "name": "Sec-WebSocket-Protocol",
            "description": "browsers: offer the two subprotocols `streamseg.v1` and "
            "`streamseg.bearer.<token>`; the server answers `streamseg.v1` and never "
            "echoes the token. There is no `?token=` query parameter",
        },
    }


def _channel(name: str) -> dict[str, Any]:
    if name == MASK_FEED:
        return {
            "address": "/v1/streams/{stream_id}/masks",
            "title": "Websocket mask feed",
            "description": (
                "A camera stream's results for robots. The server sends a text `hello`, "
                "then one binary frame message per result (pushed, latest-only per "
                "client, or one per `next` with `delivery=pull`), text `ack`/`error` "
                "replies and, when asked for, text `event` messages. Clients send text "
                "JSON messages. Needs the `view` scope; `prompt`, `remove` and `reset` "
                "also need `control`. How a feed ends: `x-close-codes`."
            ),
            "parameters": {
                "stream_id": {"description": "the camera stream's id (GET /v1/streams)"}
            },
            "servers": [{"$ref": "#/servers/websocket"}],
            "bindings": {
                "ws": {
                    "method": "GET",
                    "query": feed_query_schema(),
                    "headers": {
                        "type": "object",
                        "properties": {
                            "Authorization": {"type": "string", "pattern": "^Bearer \\S+$"},
                            "Sec-WebSocket-Protocol": {
                                "type": "string",
                                "description": "`streamseg.v1, streamseg.bearer.<token>`",
                            },
                        },
                    },
                    "bindingVersion": WS_BINDING_VERSION,
                }
            },
            "x-close-codes": [
                {"code": c.code, "reason": c.reason, "meaning": c.meaning, "action": c.action}
                for c in CLOSE_CODES
            ],
        }
    return {
        "address": "streamseg",
        "title": "WebRTC data channel",
        "description": (
            "The data channel labelled `streamseg` of a peer connection made with "
            "POST /v1/webrtc/offer (a token with `control`; nothing is sent on the "
            "channel itself to authenticate). Text JSON both ways: the server sends frame "
            "metadata (masks inline on request) only when the channel has drained, and "
            "`ack`/`error` replies; clients send prompts."
        ),
        "servers": [{"$ref": "#/servers/webrtc"}],
    }


def _servers() -> dict[str, Any]:
    host = {"host": {"default": "127.0.0.1:8000", "description": "the server's address and port"}}
    return {
        "websocket": {
            "host": "{host}",
            "protocol": "ws",
            "description": "`ws://` or, behind TLS, `wss://`; the same host as the REST API",
            "variables": host,
            "security": [
                {"$ref": "#/components/securitySchemes/bearer"},
                {"$ref": "#/components/securitySchemes/bearerSubprotocol"},
            ],
        },
        "webrtc": {
            "host": "{host}",
            "protocol": "webrtc",
            "description": "signalling by POST /v1/webrtc/offer on the REST API",
            "variables": host,
        },
    }


def _payload_properties(root: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = root.get("$ref")
    target = defs.get(ref.rsplit("/", 1)[-1], {}) if isinstance(ref, str) else root
    properties: dict[str, Any] = target.get("properties", {})
    return properties


def _message(message: WireMessage, root: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": message_id(message),
        "title": "Frame" if message.binary else message.title,
        "summary": message.summary,
        "x-sender": message.sender,
    }
    if message.binary:
        out["contentType"] = "application/octet-stream"
        out["payload"] = {
            "type": "string",
            "format": "binary",
            "description": "4-byte big-endian header length N, N bytes of UTF-8 JSON "
            "header (`x-header`), then the encoded masks back to back",
        }
        out["x-layout"] = _FRAME_LAYOUT
        out["x-header"] = root
        return out
    out["contentType"] = "application/json"
    out["payload"] = root
    if "request_id" in _payload_properties(root, defs):
        out["correlationId"] = {
            "location": "$message.payload#/request_id",
            "description": "a client's `request_id`, echoed by the `ack` or `error` replying",
        }
    return out


def _operations(
    messages: Sequence[WireMessage], channel: str, replies: Sequence[str]
) -> dict[str, Any]:
    ops: dict[str, Any] = {}
    for message in messages:
        if channel not in message.channels:
            continue
        server_sends = message.sender == "server"
        verb = "Send" if server_sends else "Receive"
        op: dict[str, Any] = {
            "action": "send" if server_sends else "receive",
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": [{"$ref": f"#/channels/{channel}/messages/{message_id(message)}"}],
            "summary": message.summary,
        }
        if channel == MASK_FEED:
            scopes = ["view", "control"] if message.name in CONTROL_MESSAGES else ["view"]
            op["x-scopes"] = scopes
        if not server_sends:
            answer = [BINARY_FRAME] if message.name == "next" else list(replies)
            op["reply"] = {
                "channel": {"$ref": f"#/channels/{channel}"},
                "messages": [{"$ref": f"#/channels/{channel}/messages/{name}"} for name in answer],
            }
        ops[f"{channel}{verb}{_pascal(message_id(message))}"] = op
    return ops


def message_id(message: WireMessage) -> str:
    """The AsyncAPI message id: the schema's name, but `frame` for the binary message
    (its header's schema is `frame_header`)."""
    return BINARY_FRAME if message.binary else message.name


def _pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def asyncapi_schema(schema: Any) -> Any:
    """A JSON Schema as an AsyncAPI Schema Object, whose `discriminator` is the property
    name alone (msgspec writes OpenAPI's `{"propertyName", "mapping"}`)."""
    if isinstance(schema, list):
        return [asyncapi_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: asyncapi_schema(v) for k, v in schema.items()}
    if isinstance(out.get("discriminator"), dict):
        out["discriminator"] = out["discriminator"]["propertyName"]
    return out


def asyncapi_document(
    messages: Sequence[WireMessage], rules: Rules | None = None
) -> dict[str, Any]:
    """The whole document for `messages` (the protocol's catalogue: `catalogue()`);
    messages on no channel (schema files only) are left out."""
    messages = [m for m in messages if m.channels]
    roots, defs = (asyncapi_schema(part) for part in components(messages, rules))
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for name in (MASK_FEED, DATA_CHANNEL):
        channel = _channel(name)
        channel["messages"] = {
            message_id(m): {"$ref": f"#/components/messages/{message_id(m)}"}
            for m in messages
            if name in m.channels
        }
        channels[name] = channel
        replies = [r for r in ("ack", "error") if r in channel["messages"]]
        operations.update(_operations(messages, name, replies))
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "streamseg realtime protocol",
            "version": f"{SCHEMA_VERSION}.{SCHEMA_REVISION}",
            "description": (
                f'Schema version {SCHEMA_VERSION} (every server message carries `"v": '
                f"{SCHEMA_VERSION}`), revision {SCHEMA_REVISION} (`rev`): within a version "
                "the server only adds optional fields, which decoders ignore. Client "
                "messages are the other way round: unknown fields are refused. The prose, "
                "with examples and measurements: docs/PROTOCOL.md. Each message's JSON "
                "Schema alone: /v1/protocol/schemas/{name}.json."
            ),
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": _servers(),
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": {message_id(m): _message(m, roots[m.name], defs) for m in messages},
            "schemas": defs,
            "securitySchemes": _security(),
        },
    }


def render(document: Any) -> str:
    """The committed form: sorted keys, two-space indent, one trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
