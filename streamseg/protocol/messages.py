"""Server -> client messages, schema version 1.

A websocket frame message is binary: a 4-byte big-endian header length, a UTF-8
JSON header, then the encoded masks back to back (each track's header says where
its mask lies). The WebRTC data channel carries the same header as text JSON,
with RLE masks inline when asked for.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from streamseg.protocol.masks import MaskCodecError, MaskEncoding, decode_mask, encode_mask
from streamseg.protocol.masks import rle_encode as _rle

SCHEMA_VERSION = 1
_LEN = struct.Struct(">I")


class MessageError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class TrackResultMeta:
    track_id: int
    score: float  # decoder's predicted IoU
    object_score: float  # probability the object is visible
    present: bool
    bbox: tuple[int, int, int, int] | None  # x0, y0, x1, y1 (exclusive)
    area: int


@dataclass(frozen=True, slots=True)
class FrameTimes:
    capture_ts: float
    capture_ts_source: Literal["stream", "receive"]
    recv_ts: float
    infer_start: float
    infer_end: float
    sent_ts: float | None = None


@dataclass(frozen=True, slots=True)
class FrameResultMessage:
    stream_id: str
    seq: int
    width: int
    height: int
    times: FrameTimes
    tracks: tuple[TrackResultMeta, ...]
    dropped_frames: int = 0
    encoding: MaskEncoding | None = None
    stages_ms: dict[str, float] | None = None


def _header(msg: FrameResultMessage) -> dict[str, Any]:
    body = asdict(msg)
    body["tracks"] = [asdict(t) for t in msg.tracks]
    body["encoding"] = msg.encoding.value if msg.encoding else None
    return {"v": SCHEMA_VERSION, "type": "frame", **body}


def encode_masks(masks: Sequence[np.ndarray], encoding: MaskEncoding) -> list[bytes]:
    return [encode_mask(m, encoding) for m in masks]


def encode_frame_message(
    msg: FrameResultMessage,
    masks: Sequence[np.ndarray] | None = None,
    encoded: Sequence[bytes] | None = None,
) -> bytes:
    """`encoded`: masks already encoded with `msg.encoding` (shared by many clients)."""
    header = _header(msg)
    payload = bytearray()
    if masks is not None or encoded is not None:
        if msg.encoding is None:
            raise MessageError("masks need an encoding")
        blobs = list(encoded) if encoded is not None else encode_masks(masks or [], msg.encoding)
        if len(blobs) != len(msg.tracks):
            raise MessageError("one mask per track is needed")
        for track, blob in zip(header["tracks"], blobs, strict=True):
            track["mask"] = {"offset": len(payload), "length": len(blob)}
            payload += blob
    head = json.dumps(header, separators=(",", ":")).encode()
    return _LEN.pack(len(head)) + head + bytes(payload)


def decode_frame_message(data: bytes) -> tuple[FrameResultMessage, list[np.ndarray] | None]:
    if len(data) < _LEN.size:
        raise MessageError("message shorter than its length prefix")
    (size,) = _LEN.unpack_from(data)
    if _LEN.size + size > len(data):
        raise MessageError("header length exceeds the message")
    try:
        header = json.loads(data[_LEN.size : _LEN.size + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("v") != SCHEMA_VERSION:
        raise MessageError(f"unsupported schema version; this client speaks v{SCHEMA_VERSION}")
    payload = data[_LEN.size + size :]
    try:
        encoding = MaskEncoding(header["encoding"]) if header.get("encoding") else None
        tracks, masks = [], []
        for t in header["tracks"]:
            bbox = tuple(t["bbox"]) if t["bbox"] is not None else None
            tracks.append(
                TrackResultMeta(
                    t["track_id"], t["score"], t["object_score"], t["present"], bbox, t["area"]
                )
            )
            if "mask" in t and encoding is not None:
                off, length = t["mask"]["offset"], t["mask"]["length"]
                if off < 0 or off + length > len(payload):
                    raise MessageError("mask offset out of range")
                masks.append(
                    decode_mask(
                        payload[off : off + length], encoding, header["height"], header["width"]
                    )
                )
        msg = FrameResultMessage(
            stream_id=header["stream_id"],
            seq=header["seq"],
            width=header["width"],
            height=header["height"],
            times=FrameTimes(**header["times"]),
            tracks=tuple(tracks),
            dropped_frames=header.get("dropped_frames", 0),
            encoding=encoding,
            stages_ms=header.get("stages_ms"),
        )
    except (KeyError, TypeError, ValueError, MaskCodecError) as exc:
        if isinstance(exc, MessageError):
            raise
        raise MessageError(f"malformed frame header: {exc}") from None
    return msg, (masks if masks else None)


def frame_message_json(
    msg: FrameResultMessage,
    masks: Sequence[np.ndarray] | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Text form for the data channel; masks (if given) inline as COCO RLE; `extra`
    adds transport fields (e.g. the overlay frame's `video_pts`)."""
    header = {**_header(msg), **(extra or {})}
    if masks is not None:
        for track, mask in zip(header["tracks"], masks, strict=True):
            track["rle"] = _rle(mask)
    return json.dumps(header, separators=(",", ":"))


def hello_message(**info: Any) -> str:
    return json.dumps({"v": SCHEMA_VERSION, "type": "hello", **info})


def error_message(code: str, message: str, request_id: str | None = None) -> str:
    body: dict[str, Any] = {"v": SCHEMA_VERSION, "type": "error", "code": code, "message": message}
    if request_id is not None:
        body["request_id"] = request_id
    return json.dumps(body)


def ack_message(request_id: str | None, result: dict[str, Any]) -> str:
    return json.dumps(
        {"v": SCHEMA_VERSION, "type": "ack", "request_id": request_id, "result": result}
    )
