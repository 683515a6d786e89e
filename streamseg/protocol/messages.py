"""Server -> client messages, schema version 1.

A websocket frame message is binary: a 4-byte big-endian header length, a UTF-8 JSON
header, then the encoded masks back to back, each track's header giving the offset and
length of its mask. The WebRTC data channel carries the same header as text JSON, masks
inline. Control messages (hello, error, ack) are text JSON. Every message carries
``"v"`` so a client can refuse a server it does not understand instead of misreading it.

Decoders ignore fields they do not know, so v1 can gain optional fields without a bump;
removing or changing the meaning of a field needs a new `SCHEMA_VERSION`. The wire
form of each message is declared in `streamseg.protocol.models`; decoding validates
against it, and the tests hold every encoder's output to it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import numpy as np

from streamseg.protocol import explain, models
from streamseg.protocol.control import (
    EVENT_KINDS,
    TRACK_EVENTS,
    MessageError,
    UnknownMessageType,
    ack_message,
    check_version,
    dumps,
    error_message,
    hello_message,
    internal_error_message,
    internal_error_text,
    parse_server_text,
    state_event_message,
    track_event_message,
)
from streamseg.protocol.masks import (
    MaskCodecError,
    MaskEncoding,
    decode_mask,
    encode_mask,
    mask_bbox,
    mask_grid,
    rle_decode,
    rle_encode,
    shrink_mask,
)
from streamseg.protocol.models import SCHEMA_REVISION, SCHEMA_VERSION
from streamseg.protocol.server_models import CaptureSource, MaskSource

__all__ = [
    "CLOSE_BAD_REQUEST",
    "CLOSE_FORBIDDEN",
    "CLOSE_NORMAL",
    "CLOSE_SHUTDOWN",
    "CLOSE_UNAUTHORIZED",
    "CLOSE_UNKNOWN_STREAM",
    "EVENT_KINDS",
    "HEADER_LENGTH",
    "SCHEMA_REVISION",
    "SCHEMA_VERSION",
    "TRACK_EVENTS",
    "FrameResultMessage",
    "FrameTimes",
    "MessageError",
    "TrackResultMeta",
    "UnknownMessageType",
    "ack_message",
    "decode_frame_header",
    "decode_frame_json",
    "decode_frame_message",
    "encode_frame_message",
    "encode_masks",
    "error_message",
    "frame_message_json",
    "hello_message",
    "internal_error_message",
    "internal_error_text",
    "parse_server_text",
    "reduce_masks",
    "state_event_message",
    "track_event_message",
]

HEADER_LENGTH = struct.Struct(">I")
_EMPTY_RLE = {"size": [0, 0], "counts": ""}  # a cropped empty mask on the data channel
# Websocket close codes of the mask feed (4000-4999 are the application's).
CLOSE_UNKNOWN_STREAM = 4404  # no such stream, or it was deleted
CLOSE_BAD_REQUEST = 4422  # bad query parameters
CLOSE_UNAUTHORIZED = 4401  # no token, or one the server does not know
CLOSE_FORBIDDEN = 4403  # the token lacks the scope the feed needs
CLOSE_NORMAL = 1000  # the client closed, or the server ended the feed normally
CLOSE_SHUTDOWN = 1012  # the server is shutting down or restarting: reconnect later


class TrackResultMeta(msgspec.Struct, frozen=True):
    """One track on one frame. ``score`` is the decoder's predicted IoU of the mask,
    ``object_score`` the probability the object is in the frame at all. ``source`` says
    whether the model computed the mask on this very frame or it was carried forward
    from frame ``model_seq`` (None: this frame), ``age_ms`` after that frame's capture."""

    track_id: int
    score: float
    object_score: float
    present: bool
    bbox: tuple[int, int, int, int] | None
    area: int
    source: MaskSource = "model"
    model_seq: int | None = None
    age_ms: float = 0.0
    # With cropped masks: where this track's mask lies on the mask grid, (x0, y0, x1,
    # y1) with exclusive ends; None for an empty mask (then no mask bytes are sent).
    mask_box: tuple[int, int, int, int] | None = None


class FrameTimes(msgspec.Struct, frozen=True):
    """Wall-clock seconds since the epoch along one frame's path, for latency accounting.

    ``capture_ts_source`` says whether ``capture_ts`` came from the stream itself
    (e.g. RTCP sender reports) or is the server's receive time.
    """

    capture_ts: float
    capture_ts_source: CaptureSource
    recv_ts: float
    infer_start: float
    infer_end: float
    sent_ts: float | None = None


class FrameResultMessage(msgspec.Struct, frozen=True):
    """Everything a client learns about one processed frame except the mask pixels.

    ``encoding`` is set exactly when masks travel with the message. ``dropped_frames``
    counts frames the stream skipped so far to stay real-time; ``prompt_note`` explains
    anything surprising about prompts on this frame (e.g. one applied late).
    """

    stream_id: str
    seq: int
    width: int
    height: int
    times: FrameTimes
    tracks: tuple[TrackResultMeta, ...]
    dropped_frames: int = 0
    encoding: MaskEncoding | None = None
    stages_ms: dict[str, float] | None = None
    prompt_note: str | None = None
    # (height, width) of the grid the masks are on; None: the frame's own size.
    mask_size: tuple[int, int] | None = None
    mask_crop: bool = False

    @property
    def grid(self) -> tuple[int, int]:
        """(height, width) of the decoded masks."""
        return self.mask_size or (self.height, self.width)


def _times_header(t: FrameTimes, numbers: list[float]) -> dict[str, Any]:
    times = (float(t.capture_ts), float(t.recv_ts), float(t.infer_start), float(t.infer_end))
    sent = None if t.sent_ts is None else float(t.sent_ts)
    numbers.extend(times)
    if sent is not None:
        numbers.append(sent)
    return {
        "capture_ts": times[0],
        "capture_ts_source": t.capture_ts_source,
        "recv_ts": times[1],
        "infer_start": times[2],
        "infer_end": times[3],
        "sent_ts": sent,
    }


def _track_header(t: TrackResultMeta, numbers: list[float]) -> dict[str, Any]:
    score, object_score, age = float(t.score), float(t.object_score), float(t.age_ms)
    numbers += (score, object_score, age)
    return {
        "track_id": int(t.track_id),
        "score": score,
        "object_score": object_score,
        "present": bool(t.present),
        "bbox": None if t.bbox is None else [int(v) for v in t.bbox],
        "area": int(t.area),
        "source": t.source,
        "model_seq": None if t.model_seq is None else int(t.model_seq),
        "age_ms": round(age, 3) if math.isfinite(age) else age,
        "mask_box": None if t.mask_box is None else [int(v) for v in t.mask_box],
    }


def _header(msg: FrameResultMessage, encoding: MaskEncoding | None) -> dict[str, Any]:
    """The frame header as JSON-ready values; every number in it is checked finite."""
    numbers: list[float] = []
    header = {
        "v": SCHEMA_VERSION,
        "rev": SCHEMA_REVISION,
        "type": "frame",
        "stream_id": msg.stream_id,
        "seq": int(msg.seq),
        "width": int(msg.width),
        "height": int(msg.height),
        "times": _times_header(msg.times, numbers),
        "tracks": [_track_header(t, numbers) for t in msg.tracks],
        "dropped_frames": int(msg.dropped_frames),
        "encoding": None if encoding is None else encoding.value,
        "stages_ms": msg.stages_ms,
        "prompt_note": msg.prompt_note,
        "mask_width": int(msg.grid[1]),
        "mask_height": int(msg.grid[0]),
        "mask_crop": bool(msg.mask_crop),
    }
    if msg.stages_ms:
        numbers.extend(msg.stages_ms.values())
    if not all(map(math.isfinite, numbers)):
        raise MessageError("message cannot be sent as JSON: a number is NaN or infinite")
    return header


def _wire_shape(msg: FrameResultMessage, track: TrackResultMeta) -> tuple[int, int]:
    """The shape of one track's mask as it travels: the grid, or its box when cropped
    ((0, 0): an empty mask, sent as no bytes)."""
    if not msg.mask_crop:
        return msg.grid
    if track.mask_box is None:
        return 0, 0
    x0, y0, x1, y1 = track.mask_box
    return y1 - y0, x1 - x0


def _check_masks(msg: FrameResultMessage, masks: Sequence[np.ndarray]) -> None:
    if len(masks) != len(msg.tracks):
        raise MessageError(f"{len(msg.tracks)} tracks but {len(masks)} masks; one per track")
    for i, (m, track) in enumerate(zip(masks, msg.tracks, strict=True)):
        want = _wire_shape(msg, track)
        if getattr(m, "shape", None) != want:
            shape = getattr(m, "shape", type(m).__name__)
            what = "its mask_box" if msg.mask_crop else "the frame"
            raise MessageError(f"mask {i} is {shape}, {what} is {want}")


def encode_masks(masks: Sequence[np.ndarray], encoding: MaskEncoding | str) -> list[bytes]:
    """Masks encoded once, to be shared by every client that asked for ``encoding``.
    An empty array (a cropped empty mask) is sent as no bytes."""
    return [b"" if m.size == 0 else encode_mask(m, encoding) for m in masks]


def reduce_masks(
    msg: FrameResultMessage,
    masks: Sequence[np.ndarray],
    *,
    scale: float | None = None,
    max_side: int | None = None,
    crop: bool = False,
) -> tuple[FrameResultMessage, list[np.ndarray]]:
    """Frame-sized masks made smaller for the wire: resampled onto the grid that
    ``scale``/``max_side`` give (`mask_grid`) and, with ``crop``, each cut to its own
    box on that grid. Returns the message saying so and the masks to encode."""
    _check_masks(msgspec.structs.replace(msg, mask_size=None, mask_crop=False), masks)
    try:
        grid = mask_grid(msg.height, msg.width, scale, max_side)
        small = [shrink_mask(m, *grid) for m in masks]
    except MaskCodecError as exc:
        raise MessageError(f"masks cannot be reduced: {exc}") from None
    tracks, wire = [], []
    for track, m in zip(msg.tracks, small, strict=True):
        box = mask_bbox(m) if crop else None
        if crop:
            m = m[0:0, 0:0] if box is None else m[box[1] : box[3], box[0] : box[2]]
        tracks.append(msgspec.structs.replace(track, mask_box=box))
        wire.append(m)
    reduced = msgspec.structs.replace(
        msg,
        tracks=tuple(tracks),
        mask_size=None if grid == (msg.height, msg.width) else grid,
        mask_crop=crop,
    )
    return reduced, wire


def encode_frame_message(
    msg: FrameResultMessage,
    masks: Sequence[np.ndarray] | None = None,
    encoded: Sequence[bytes] | None = None,
) -> bytes:
    """The binary websocket message. Pass ``masks`` (encoded here with ``msg.encoding``)
    or ``encoded`` (already encoded with it, e.g. by `encode_masks`), one per track, or
    neither; masks need ``msg.encoding`` and ``msg.encoding`` needs masks."""
    if masks is not None and encoded is not None:
        raise MessageError("pass masks or encoded masks, not both")
    with_masks = masks is not None or encoded is not None
    if with_masks != (msg.encoding is not None):
        raise MessageError("msg.encoding must be set exactly when masks are sent")
    header = _header(msg, msg.encoding)
    blobs: Sequence[bytes] = ()
    if masks is not None and msg.encoding is not None:
        _check_masks(msg, masks)
        try:
            blobs = encode_masks(masks, msg.encoding)
        except MaskCodecError as exc:
            raise MessageError(f"mask cannot be encoded: {exc}") from None
    elif encoded is not None:
        blobs = encoded
        if len(blobs) != len(msg.tracks):
            raise MessageError(f"{len(msg.tracks)} tracks but {len(blobs)} masks; one per track")
    if with_masks:
        offset = 0
        for track, blob in zip(header["tracks"], blobs, strict=True):
            track["mask"] = {"offset": offset, "length": len(blob)}
            offset += len(blob)
    head = dumps(header, checked=True)
    return b"".join((HEADER_LENGTH.pack(len(head)), head, *blobs))


def frame_message_json(
    msg: FrameResultMessage,
    masks: Sequence[np.ndarray] | None = None,
    extra: Mapping[str, Any] | None = None,
    *,
    encoding: MaskEncoding | str = MaskEncoding.RLE,
) -> str:
    """The text form for the WebRTC data channel. With ``masks`` each track carries its
    mask inline: ``"rle": {"size", "counts"}`` for RLE, else ``"mask_b64"`` (base64 of
    the bytes); ``"encoding"`` names which, and is null without masks. ``extra`` adds
    transport fields (e.g. the overlay frame's ``video_pts``); it may not shadow one."""
    try:
        enc = MaskEncoding(encoding)
    except ValueError:
        raise MessageError(f"unknown mask encoding {encoding!r}") from None
    header = _header(msg, enc if masks is not None else None)
    if masks is not None:
        _check_masks(msg, masks)
        try:
            for track, mask in zip(header["tracks"], masks, strict=True):
                if enc is MaskEncoding.RLE:
                    track["rle"] = rle_encode(mask) if mask.size else _EMPTY_RLE
                else:
                    track["mask_b64"] = base64.b64encode(encode_masks([mask], enc)[0]).decode()
        except MaskCodecError as exc:
            raise MessageError(f"mask cannot be encoded: {exc}") from None
    if extra:
        clash = sorted(set(extra) & set(header))
        if clash:
            raise MessageError(f"extra fields {clash} would overwrite protocol fields")
        header.update(extra)
        return dumps(header).decode()
    return dumps(header, checked=True).decode()


# ---- decoding (Python client, tests) ----------------------------------------------------

_BINARY_HEADER = msgspec.json.Decoder(models.FrameHeader)
_DATA_CHANNEL = msgspec.json.Decoder(models.DataChannelFrame)


def _refused(exc: msgspec.ValidationError, data: Any, model: Any, what: str) -> MessageError:
    """A message the model refused, explained: a version or type mismatch first (the
    likeliest cause), else the field and what it must be."""
    try:
        body = json.loads(bytes(data) if isinstance(data, memoryview) else data)
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        return MessageError(f"{what} must be a JSON object, got {type(body).__name__}")
    check_version(body)
    kind = explain.type_at(model, ("type",))
    expected = kind.values[0] if isinstance(kind, msgspec.inspect.LiteralType) else None
    if expected is not None and body.get("type") != expected:
        return MessageError(f"expected a {expected!r} message, got type {body.get('type')!r}")
    return MessageError(explain.explain(exc, model, body, quote=False)[1])


def _decoded(decoder: msgspec.json.Decoder[Any], data: Any, what: str) -> Any:
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _refused(exc, data, decoder.type, what) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise MessageError(f"{what} is not JSON: {exc}") from None


def _message(wire: models.FrameHeader | models.DataChannelFrame) -> FrameResultMessage:
    """The wire header as the message type the rest of the code uses, after the rules
    that tie fields together (the mask grid, the crop boxes)."""
    t = wire.times
    height = wire.height if wire.mask_height is msgspec.UNSET else wire.mask_height
    width = wire.width if wire.mask_width is msgspec.UNSET else wire.mask_width
    if height > wire.height or width > wire.width:
        raise MessageError(f"mask grid {(height, width)} is larger than the frame")
    tracks = []
    for i, w in enumerate(wire.tracks):
        box = w.mask_box
        if box is not None and not (
            wire.mask_crop and 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height
        ):
            raise MessageError(
                f"tracks[{i}].mask_box {list(box)} must lie on the {width}x{height} mask "
                "grid, and only with mask_crop"
            )
        tracks.append(
            TrackResultMeta(
                w.track_id,
                w.score,
                w.object_score,
                w.present,
                w.bbox,
                w.area,
                w.source,
                w.model_seq,
                w.age_ms,
                box,
            )
        )
    return FrameResultMessage(
        stream_id=wire.stream_id,
        seq=wire.seq,
        width=wire.width,
        height=wire.height,
        times=FrameTimes(
            t.capture_ts, t.capture_ts_source, t.recv_ts, t.infer_start, t.infer_end, t.sent_ts
        ),
        tracks=tuple(tracks),
        dropped_frames=wire.dropped_frames,
        encoding=wire.encoding,
        stages_ms=wire.stages_ms,
        prompt_note=wire.prompt_note,
        mask_size=None if (height, width) == (wire.height, wire.width) else (height, width),
        mask_crop=wire.mask_crop,
    )


def _on_grid(msg: FrameResultMessage, track: TrackResultMeta, mask: np.ndarray) -> np.ndarray:
    """A track's decoded mask on the whole mask grid (a cropped one pasted at its box)."""
    if not msg.mask_crop:
        return mask
    full = np.zeros(msg.grid, np.bool_)
    if track.mask_box is not None:
        x0, y0, x1, y1 = track.mask_box
        full[y0:y1, x0:x1] = mask
    return full


def _mask_error(index: int, exc: MaskCodecError) -> MessageError:
    return MessageError(f"tracks[{index}] mask is corrupt: {exc}")


def _split_binary(
    data: bytes | bytearray | memoryview,
) -> tuple[models.FrameHeader, memoryview]:
    view = memoryview(data).cast("B")
    if len(view) < HEADER_LENGTH.size:
        raise MessageError(f"message is {len(view)} bytes, shorter than its length prefix")
    (size,) = HEADER_LENGTH.unpack_from(view)
    end = HEADER_LENGTH.size + size
    if end > len(view):
        raise MessageError(f"header length {size} exceeds the {len(view)}-byte message")
    header = _decoded(_BINARY_HEADER, view[HEADER_LENGTH.size : end], "frame header")
    return header, view[end:]


def decode_frame_header(data: bytes | bytearray | memoryview) -> FrameResultMessage:
    """The header of a binary frame message, masks left undecoded (for clients that only
    need times, boxes and scores)."""
    return _message(_split_binary(data)[0])


def decode_frame_message(
    data: bytes | bytearray | memoryview,
) -> tuple[FrameResultMessage, list[np.ndarray] | None]:
    """Parse a binary websocket frame message into the header and its masks (None when
    the message carries none), each on the mask grid (`msg.grid`: the frame's size
    unless the client asked for smaller masks; cropped masks pasted back at their
    box); anything malformed raises `MessageError`."""
    header, payload = _split_binary(data)
    msg = _message(header)
    if msg.encoding is None:
        if any(t.mask is not msgspec.UNSET for t in header.tracks):
            raise MessageError("tracks carry masks but the header names no encoding")
        return msg, None
    masks: list[np.ndarray] = []
    for i, track in enumerate(header.tracks):
        where = track.mask
        if where is msgspec.UNSET:
            raise MessageError(f"tracks[{i}].mask is missing")
        offset, length = where.offset, where.length
        if offset + length > len(payload):
            raise MessageError(
                f"tracks[{i}] mask [{offset}, {offset + length}) lies outside the "
                f"{len(payload)}-byte payload"
            )
        chunk = payload[offset : offset + length]
        height, width = _wire_shape(msg, msg.tracks[i])
        try:
            if height == 0:  # a cropped empty mask: no bytes
                if length:
                    raise MaskCodecError(f"an empty cropped mask has no bytes, got {length}")
                mask = np.zeros((0, 0), np.bool_)
            else:
                mask = decode_mask(chunk, msg.encoding, height, width)
        except MaskCodecError as exc:
            raise _mask_error(i, exc) from None
        masks.append(_on_grid(msg, msg.tracks[i], mask))
    return msg, masks


def decode_frame_json(text: str | bytes) -> tuple[FrameResultMessage, list[np.ndarray] | None]:
    """Parse the data-channel text form (`frame_message_json`); transport extras such as
    ``video_pts`` are ignored."""
    header = _decoded(_DATA_CHANNEL, text, "frame message")
    msg = _message(header)
    if msg.encoding is None:
        return msg, None
    masks: list[np.ndarray] = []
    for i, track in enumerate(header.tracks):
        shape = _wire_shape(msg, msg.tracks[i])
        try:
            if msg.encoding is MaskEncoding.RLE:
                rle = track.rle
                if rle is msgspec.UNSET:
                    raise MessageError(f"tracks[{i}].rle is missing")
                empty = shape == (0, 0) and rle.size == (0, 0) and rle.counts == ""
                mask = np.zeros((0, 0)) if empty else rle_decode(msgspec.structs.asdict(rle))
            else:
                raw = track.mask_b64
                if raw is msgspec.UNSET:
                    raise MessageError(f"tracks[{i}].mask_b64 is missing")
                data = base64.b64decode(raw, validate=True)
                mask = decode_mask(data, msg.encoding, *shape) if data else np.zeros((0, 0))
        except (MaskCodecError, binascii.Error) as exc:
            raise MessageError(f"tracks[{i}] mask is corrupt: {exc}") from None
        if mask.shape != shape:
            raise MessageError(f"tracks[{i}] mask is {mask.shape}, expected {shape}")
        masks.append(_on_grid(msg, msg.tracks[i], mask.astype(np.bool_, copy=False)))
    return msg, masks
