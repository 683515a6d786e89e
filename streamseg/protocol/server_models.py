"""Server -> client messages as msgspec Structs (see `streamseg.protocol.models`).

``type`` is an ordinary field here, not a msgspec tag: each message is decoded as the
one type it must be, fields a decoder does not know are ignored (v1 grows by optional
additions), and the declared field order is the order on the wire.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal, get_args

from msgspec import UNSET, Meta, Struct, UnsetType

from streamseg.protocol.masks import MaskEncoding

MAX_SEQ: Final = 2**63 - 1


Version = Annotated[
    Literal[1],
    Meta(description="schema version: a client refuses a message of another version"),
]
StreamId = Annotated[str, Meta(description="the stream's id")]
Seconds = Annotated[float, Meta(description="wall-clock seconds since the Unix epoch")]
Seq = Annotated[int, Meta(ge=0, le=MAX_SEQ, description="frame number within this stream")]
Pixels = Annotated[int, Meta(ge=1)]
PixelBox = tuple[int, int, int, int]
MaskSource = Literal["model", "propagated"]
CaptureSource = Literal["stream", "receive"]
SourceState = Literal["connecting", "streaming", "stalled", "reconnecting", "error", "stopped"]
SOURCE_STATES: Final[tuple[SourceState, ...]] = get_args(SourceState)


class _ServerMessage(Struct, frozen=True):
    """Base of the server messages: fields a decoder does not know are ignored."""


class Times(_ServerMessage, frozen=True):
    """Wall-clock times along one frame's path, for latency accounting."""

    capture_ts: Seconds
    capture_ts_source: Annotated[
        CaptureSource,
        Meta(description="`stream`: from the stream itself (RTCP); `receive`: arrival here"),
    ]
    recv_ts: Seconds
    infer_start: Seconds
    infer_end: Seconds
    sent_ts: Annotated[float | None, Meta(description="when the message was sent")] = None


class MaskRef(_ServerMessage, frozen=True):
    """Where a track's mask lies in the payload of a binary frame message."""

    offset: Annotated[int, Meta(ge=0, description="bytes from the start of the payload")]
    length: Annotated[int, Meta(ge=0, description="bytes; 0 for an empty cropped mask")]


class InlineRle(_ServerMessage, frozen=True):
    """A COCO compressed RLE mask."""

    size: Annotated[
        tuple[Annotated[int, Meta(ge=0)], Annotated[int, Meta(ge=0)]],
        Meta(description="[height, width]"),
    ]
    counts: Annotated[str, Meta(description="COCO's compressed counts string")]


class _Track(_ServerMessage, frozen=True):
    """One track on one frame."""

    track_id: Annotated[int, Meta(ge=0)]
    score: Annotated[float, Meta(description="the mask decoder's predicted IoU of the mask")]
    object_score: Annotated[
        float, Meta(description="probability that the object is in the frame at all")
    ]
    present: Annotated[bool, Meta(description="whether the object is visible on this frame")]
    bbox: Annotated[
        PixelBox | None, Meta(description="[x0, y0, x1, y1] of the mask, exclusive ends")
    ]
    area: Annotated[int, Meta(ge=0, description="mask pixels")]
    source: Annotated[
        MaskSource,
        Meta(description="`model`: computed on this frame; `propagated`: carried forward"),
    ] = "model"
    model_seq: Annotated[
        Annotated[int, Meta(ge=0)] | None,
        Meta(description="the frame the mask was computed on; null: this one"),
    ] = None
    age_ms: Annotated[float, Meta(description="ms from `model_seq`'s capture to this frame's")] = (
        0.0
    )
    mask_box: Annotated[
        PixelBox | None,
        Meta(description="with `mask_crop`: where the mask lies on the mask grid; else null"),
    ] = None


class TrackHeader(_Track, frozen=True):
    """One track on one frame; `mask` says where its mask is when the message has masks."""

    mask: MaskRef | UnsetType = UNSET


class DataChannelTrack(_Track, frozen=True):
    """One track on one frame; its mask inline when the message has masks: `rle` or
    `mask_b64`, as the message's `encoding` says."""

    rle: InlineRle | UnsetType = UNSET
    mask_b64: Annotated[str | UnsetType, Meta(description="base64 of the bitpack or png mask")] = (
        UNSET
    )


class _Frame(_ServerMessage, frozen=True, kw_only=True):
    """One processed frame."""

    v: Version
    rev: Annotated[int, Meta(ge=1, description="revision within v1 (additions only)")] = 1
    type: Literal["frame"]
    stream_id: StreamId
    seq: Seq
    width: Annotated[Pixels, Meta(description="frame width")]
    height: Annotated[Pixels, Meta(description="frame height")]
    times: Times
    tracks: Sequence[_Track]
    dropped_frames: Annotated[
        int, Meta(ge=0, description="frames the stream skipped to stay real-time")
    ] = 0
    encoding: Annotated[
        MaskEncoding | None, Meta(description="the masks' encoding; null: no masks")
    ] = None
    stages_ms: Annotated[
        dict[str, float] | None, Meta(description="inference time per stage, ms")
    ] = None
    prompt_note: Annotated[
        str | None, Meta(description="anything surprising about prompts on this frame")
    ] = None
    mask_width: Annotated[
        Pixels | UnsetType, Meta(description="width of the mask grid; absent: `width`")
    ] = UNSET
    mask_height: Annotated[
        Pixels | UnsetType, Meta(description="height of the mask grid; absent: `height`")
    ] = UNSET
    mask_crop: Annotated[bool, Meta(description="each mask cut to its `mask_box`")] = False


class FrameHeader(_Frame, frozen=True, kw_only=True):
    """One processed frame: the JSON header of a binary websocket frame message, whose
    payload (the masks back to back) follows it."""

    tracks: list[TrackHeader]


class DataChannelFrame(_Frame, frozen=True, kw_only=True):
    """One processed frame as a WebRTC data-channel text message, masks inline."""

    tracks: list[DataChannelTrack]
    video_pts: Annotated[
        int | UnsetType, Meta(description="pts (90 kHz clock) of the overlay video frame")
    ] = UNSET


class Limits(_ServerMessage, frozen=True):
    """The bounds client messages must stay inside on this connection."""

    max_points: Annotated[int, Meta(ge=0, description="points in one prompt")]
    max_track_id: Annotated[int, Meta(ge=0)]
    max_message_bytes: Annotated[int, Meta(ge=1, description="UTF-8 bytes of one message")]
    max_request_id_chars: Annotated[int, Meta(ge=0)]


class Hello(_ServerMessage, frozen=True, kw_only=True):
    """The first text message on a websocket mask feed: the stream, the connection's
    settings and the limits client messages must stay inside."""

    v: Version
    type: Literal["hello"]
    rev: Annotated[int, Meta(ge=1, description="revision within v1 (additions only)")] = 1
    stream_id: StreamId
    encoding: Annotated[MaskEncoding | None, Meta(description="the encoding in use")] = None
    encodings: Annotated[list[MaskEncoding], Meta(description="the encodings offered")]
    limits: Limits | UnsetType = UNSET
    send_timeout_s: Annotated[
        float | UnsetType,
        Meta(description="a message not sent within this many seconds ends the feed"),
    ] = UNSET
    rate: Annotated[
        Literal["model", "source"] | UnsetType,
        Meta(description="one frame message per model step or per camera frame"),
    ] = UNSET
    state: Annotated[SourceState | UnsetType, Meta(description="the source's state")] = UNSET
    width: Annotated[Pixels | UnsetType | None, Meta(description="frame width, once known")] = UNSET
    height: Annotated[Pixels | UnsetType | None, Meta(description="frame height, once known")] = (
        UNSET
    )
    boot_id: Annotated[str | UnsetType, Meta(description="new at every server start")] = UNSET
    epoch: Annotated[str | UnsetType, Meta(description="new at every creation of the stream")] = (
        UNSET
    )
    events: Annotated[
        list[Literal["state", "tracks"]] | UnsetType,
        Meta(description="the event kinds this connection gets"),
    ] = UNSET
    delivery: Annotated[
        Literal["push", "pull"] | UnsetType,
        Meta(description="`pull`: one frame message per `next`"),
    ] = UNSET
    scale: Annotated[
        Annotated[float, Meta(gt=0, le=1)] | UnsetType | None,
        Meta(description="mask grid scale asked for; null: none"),
    ] = UNSET
    max_side: Annotated[
        Pixels | UnsetType | None, Meta(description="longest mask grid side asked for")
    ] = UNSET
    crop: Annotated[
        Literal["none", "bbox"] | UnsetType, Meta(description="`bbox`: masks cut to their box")
    ] = UNSET


class Ack(_ServerMessage, frozen=True, kw_only=True):
    """Success of a client request, with what it did."""

    v: Version
    type: Literal["ack"]
    request_id: Annotated[str | None, Meta(description="the request's `request_id`")]
    result: Annotated[
        dict[str, Any] | None,
        Meta(
            description=(
                "prompt: track_id, created, requested_seq, applied_seq, exact, "
                "motion_compensated, caught_up_frames, score, bbox; remove: removed; "
                "reset: reset; options: the options now in force"
            )
        ),
    ]


class Error(_ServerMessage, frozen=True, kw_only=True):
    """A refusal: `code` for programs (docs/PROTOCOL.md lists them), `message` for people."""

    v: Version
    type: Literal["error"]
    code: Annotated[str, Meta(description="machine-readable reason")]
    message: Annotated[str, Meta(description="what was refused and what is expected instead")]
    field: Annotated[
        str | UnsetType,
        Meta(description="the refused field, as the protocol writes it (`points[0][1]`)"),
    ] = UNSET
    request_id: Annotated[
        str | UnsetType, Meta(description="the refused request's `request_id`, if it had one")
    ] = UNSET
    error_id: Annotated[
        str | UnsetType, Meta(description="`internal`: the failure's id in the server log")
    ] = UNSET


class StateEvent(_ServerMessage, frozen=True, kw_only=True):
    """The camera's source entered `state`."""

    v: Version
    type: Literal["event"]
    event: Literal["state"]
    stream_id: StreamId
    state: SourceState
    previous: Annotated[
        SourceState | None, Meta(description="the state before; null: at subscription")
    ]
    reason: Annotated[str, Meta(description="a code, e.g. `ended`, `timeout`, `shutdown`")]
    message: Annotated[str, Meta(description="the reason in words")]
    ts: Annotated[float, Meta(description="server time of the change, s since the epoch")]


class TrackEvent(_ServerMessage, frozen=True, kw_only=True):
    """A track became visible (`found`) or not (`lost`) on frame `seq`."""

    v: Version
    type: Literal["event"]
    event: Literal["lost", "found"]
    stream_id: StreamId
    track_id: Annotated[int, Meta(ge=0)]
    seq: Seq
    ts: Annotated[float, Meta(description="capture time of frame `seq`, s since the epoch")]


SERVER_MESSAGES: Final = (Hello, Ack, Error, StateEvent, TrackEvent, FrameHeader, DataChannelFrame)
"""Server text messages and the binary frame message's header."""
