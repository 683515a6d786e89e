from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from streamseg.protocol.masks import MaskEncoding
from streamseg.protocol.messages import (
    FrameResultMessage,
    FrameTimes,
    MessageError,
    TrackResultMeta,
    decode_frame_message,
    encode_frame_message,
    frame_message_json,
)

GOLDEN_HEADER = (
    '{"v":1,"type":"frame","stream_id":"s1","seq":7,"width":4,"height":3,'
    '"times":{"capture_ts":1.0,"capture_ts_source":"receive","recv_ts":1.0,'
    '"infer_start":1.5,"infer_end":2.0,"sent_ts":2.5},"tracks":[{"track_id":1,'
    '"score":0.9,"object_score":0.8,"present":true,"bbox":[1,0,3,2],"area":4,'
    '"mask":{"offset":0,"length":2}}],"dropped_frames":3,"encoding":"bitpack","stages_ms":null}'
)


def _msg(encoding: MaskEncoding | None = MaskEncoding.BITPACK) -> FrameResultMessage:
    return FrameResultMessage(
        stream_id="s1",
        seq=7,
        width=4,
        height=3,
        times=FrameTimes(1.0, "receive", 1.0, 1.5, 2.0, 2.5),
        tracks=(TrackResultMeta(1, 0.9, 0.8, True, (1, 0, 3, 2), 4),),
        dropped_frames=3,
        encoding=encoding,
    )


def _mask() -> np.ndarray:
    m = np.zeros((3, 4), bool)
    m[0:2, 1:3] = True
    return m


def test_golden_header() -> None:
    data = encode_frame_message(_msg(), [_mask()])
    (size,) = struct.unpack(">I", data[:4])
    assert data[4 : 4 + size].decode() == GOLDEN_HEADER


@pytest.mark.parametrize("encoding", list(MaskEncoding))
def test_round_trip(encoding: MaskEncoding) -> None:
    msg, masks = decode_frame_message(encode_frame_message(_msg(encoding), [_mask()]))
    assert msg == _msg(encoding)
    assert masks is not None and np.array_equal(masks[0], _mask())
    msg, masks = decode_frame_message(encode_frame_message(_msg(None)))
    assert masks is None and msg.tracks == _msg().tracks


def test_json_form_has_inline_rle() -> None:
    body = json.loads(frame_message_json(_msg(MaskEncoding.RLE), [_mask()]))
    assert body["tracks"][0]["rle"]["size"] == [3, 4]


@pytest.mark.parametrize(
    "data",
    [
        b"\x00",
        struct.pack(">I", 99) + b"{}",
        struct.pack(">I", 2) + b"{x",
        struct.pack(">I", 8) + b'{"v": 2}',
        encode_frame_message(_msg(), [_mask()])[:-1],
    ],
)
def test_malformed(data: bytes) -> None:
    with pytest.raises(MessageError):
        decode_frame_message(data)
