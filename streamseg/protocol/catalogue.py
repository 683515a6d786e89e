"""Which model is which published message: name, sender and channels of every wire
message, and the tables docs/PROTOCOL.md shows of them."""

from __future__ import annotations

from typing import Any

from streamseg.protocol import models
from streamseg.protocol.asyncapi import DATA_CHANNEL, MASK_FEED
from streamseg.protocol.doc_tables import fields_table, table
from streamseg.protocol.error_codes import ERROR_CODES
from streamseg.protocol.schema_export import Rules, WireMessage, components

BOTH = (MASK_FEED, DATA_CHANNEL)
FEED = (MASK_FEED,)
_ENVELOPE = frozenset({"`v`", "`type`"})  # every message has them; the prose says so


MODEL_RULES: Rules = {"Prompt": models.PROMPT_RULES}
"""What JSON Schema can say beyond a model's fields, merged into its schema."""


def catalogue() -> tuple[WireMessage, ...]:
    """Every message, clients' first, in the order the documents list them."""
    return (
        WireMessage("prompt", models.Prompt, "Prompt",
                    "Start or correct a track with points and/or a box", "client", BOTH),
        WireMessage("remove", models.Remove, "Remove", "Stop tracking one object", "client", BOTH),
        WireMessage("reset", models.Reset, "Reset", "Forget every track of the stream",
                    "client", BOTH),
        WireMessage("options", models.Options, "Options",
                    "Change this connection's mask encoding or switch masks off", "client", BOTH),
        WireMessage("next", models.Next, "Next",
                    "Ask for one frame message (`delivery=pull` feeds only)", "client", FEED),
        WireMessage("hello", models.Hello, "Hello",
                    "The first message on a feed: the stream, encodings, limits", "server", FEED),
        WireMessage("frame_header", models.FrameHeader, "FrameHeader",
                    "One result: the JSON header of a binary frame message", "server", FEED,
                    binary=True),
        WireMessage("data_channel_frame", models.DataChannelFrame, "DataChannelFrame",
                    "One result on the data channel, masks inline on request", "server",
                    (DATA_CHANNEL,)),
        WireMessage("state_event", models.StateEvent, "StateEvent",
                    "The camera's source changed state (`?events=state`)", "server", FEED),
        WireMessage("track_event", models.TrackEvent, "TrackEvent",
                    "A track was lost or found (`?events=tracks`)", "server", FEED),
        WireMessage("ack", models.Ack, "Ack", "A client request succeeded", "server", BOTH),
        WireMessage("error", models.Error, "Error", "A refusal, with a machine-readable code",
                    "server", BOTH),
        WireMessage("client_message", models.AnyClientMessage, "ClientMessage",
                    "Any client message every surface takes (REST prompts body included)",
                    "client", ()),
    )  # fmt: skip


def doc_tables() -> dict[str, str]:
    """The generated blocks of docs/PROTOCOL.md that come from the models and the
    error-code table."""
    messages = catalogue()
    roots, defs = components(messages, MODEL_RULES)
    rows: list[tuple[str, ...]] = []
    for message in messages:
        if message.sender != "client" or not message.channels:
            continue
        fields = [r for r in fields_table(roots[message.name], defs) if r[0] != "`type`"]
        if not fields:
            rows.append((f"`{message.name}`", "none", "", "", message.summary))
        rows += [(f"`{message.name}`", *row) for row in fields]
    return {
        "client-fields": table(("message", "field", "type", "required", "meaning"), rows),
        "frame-fields": _fields(roots["frame_header"], defs),
        "hello-fields": _fields(roots["hello"], defs),
        "error-codes": _error_codes(),
    }


def _fields(root: dict[str, Any], defs: dict[str, Any]) -> str:
    rows = [(f, k, m) for f, k, _, m in fields_table(root, defs) if f not in _ENVELOPE]
    return table(("field", "type", "meaning"), rows)


def _error_codes() -> str:
    rows = [
        (f"`{code}`", ", ".join(str(s) for s in entry.statuses), entry.group, entry.when)
        for code, entry in ERROR_CODES.items()
    ]
    return table(("code", "HTTP status", "where", "when"), rows)
