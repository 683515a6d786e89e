from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from streamseg.protocol.masks import MaskEncoding, encode_mask, rle_encode, shrink_mask
from streamseg.protocol.messages import (
    SCHEMA_REVISION,
    SCHEMA_VERSION,
    FrameResultMessage,
    FrameTimes,
    MessageError,
    TrackResultMeta,
    UnknownMessageType,
    ack_message,
    decode_frame_header,
    decode_frame_json,
    decode_frame_message,
    encode_frame_message,
    encode_masks,
    error_message,
    frame_message_json,
    hello_message,
    internal_error_message,
    parse_server_text,
    reduce_masks,
    state_event_message,
    track_event_message,
)
from streamseg.protocol.prompts import PromptLimits

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN_HEADER = (FIXTURES / "frame_header_v1.json").read_text().strip()


def _msg(encoding: MaskEncoding | None = MaskEncoding.BITPACK, **kw: Any) -> FrameResultMessage:
    fields: dict[str, Any] = {
        "stream_id": "s1",
        "seq": 7,
        "width": 4,
        "height": 3,
        "times": FrameTimes(1.0, "receive", 1.0, 1.5, 2.0, 2.5),
        "tracks": (
            TrackResultMeta(1, 0.9, 0.8, True, (1, 0, 3, 2), 4, "propagated", 5, 66.667),
            TrackResultMeta(5, 0.25, 0.125, False, None, 0),
        ),
        "dropped_frames": 3,
        "encoding": encoding,
        "stages_ms": {"encoder": 18.0, "decoder": 2.5},
        "prompt_note": "prompt r7 applied on frame 5",
    }
    return FrameResultMessage(**{**fields, **kw})


def _masks() -> list[np.ndarray]:
    m = np.zeros((3, 4), bool)
    m[0:2, 1:3] = True
    return [m, np.zeros((3, 4), bool)]


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    (size,) = struct.unpack(">I", data[:4])
    return json.loads(data[4 : 4 + size]), data[4 + size :]


def _join(header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return struct.pack(">I", len(head)) + head + payload


def test_golden_frame_message() -> None:
    """The exact bytes of a v1 message; if this fails the wire format changed."""
    data = encode_frame_message(_msg(), _masks())
    head = GOLDEN_HEADER.encode()
    assert data == struct.pack(">I", len(head)) + head + b"\x66\x00" + b"\x00\x00"


@pytest.mark.parametrize("encoding", list(MaskEncoding))
def test_round_trip(encoding: MaskEncoding) -> None:
    data = encode_frame_message(_msg(encoding), _masks())
    msg, masks = decode_frame_message(data)
    assert msg == _msg(encoding)
    assert masks is not None and len(masks) == 2
    for got, want in zip(masks, _masks(), strict=True):
        assert np.array_equal(got, want)
    assert decode_frame_message(bytearray(data))[0] == msg
    assert decode_frame_message(memoryview(data))[0] == msg
    assert decode_frame_header(data) == msg


def test_header_only_decoding_leaves_the_masks_alone() -> None:
    """A corrupt mask payload is not read, a corrupt header still raises."""
    data = encode_frame_message(_msg(), _masks())
    assert decode_frame_header(data[:-1]) == _msg()
    with pytest.raises(MessageError, match="outside"):
        decode_frame_message(data[:-1])
    with pytest.raises(MessageError, match="not JSON"):
        decode_frame_header(data[:4] + b"x" + data[5:])


@pytest.mark.parametrize("encoding", list(MaskEncoding))
def test_pre_encoded_masks_give_the_same_bytes(encoding: MaskEncoding) -> None:
    shared = encode_masks(_masks(), encoding)
    assert encode_frame_message(_msg(encoding), encoded=shared) == encode_frame_message(
        _msg(encoding), _masks()
    )


def test_without_masks_and_without_tracks() -> None:
    msg, masks = decode_frame_message(encode_frame_message(_msg(None)))
    assert masks is None and msg == _msg(None)
    header, payload = _split(encode_frame_message(_msg(None)))
    assert payload == b"" and all("mask" not in t for t in header["tracks"])
    empty = _msg(MaskEncoding.RLE, tracks=())
    msg, masks = decode_frame_message(encode_frame_message(empty, []))
    assert msg == empty and masks == []
    bare = _msg(None, stages_ms=None, prompt_note=None, times=FrameTimes(1, "stream", 2, 3, 4))
    assert decode_frame_message(encode_frame_message(bare))[0] == bare


def test_numpy_scalars_are_sent_as_json_numbers() -> None:
    track = TrackResultMeta(
        np.int64(2),  # type: ignore[arg-type]
        np.float32(0.5),  # type: ignore[arg-type]
        np.float64(0.25),
        np.bool_(True),  # type: ignore[arg-type]
        (np.int64(0), np.int64(0), np.int64(1), np.int64(1)),  # type: ignore[arg-type]
        np.int64(1),  # type: ignore[arg-type]
    )
    msg = _msg(None, tracks=(track,), stages_ms={"encoder": np.float32(1.5)})
    header, _ = _split(encode_frame_message(msg))
    assert header["tracks"][0] == {
        "track_id": 2,
        "score": 0.5,
        "object_score": 0.25,
        "present": True,
        "bbox": [0, 0, 1, 1],
        "area": 1,
        "source": "model",
        "model_seq": None,
        "age_ms": 0.0,
        "mask_box": None,
    }
    assert header["stages_ms"] == {"encoder": 1.5}


def test_a_revision_1_message_still_decodes() -> None:
    """Headers from servers before revision 2 (no source/model_seq/age_ms) decode with
    the defaults: the mask came from the model on that very frame."""
    old = (FIXTURES / "frame_header_v1_rev1.json").read_text().strip()
    msg, masks = decode_frame_message(_join(json.loads(old), b"\x66\x00\x00\x00"))
    assert [t.source for t in msg.tracks] == ["model", "model"]
    assert [(t.model_seq, t.age_ms) for t in msg.tracks] == [(None, 0.0), (None, 0.0)]
    assert len(masks) == 2


@pytest.mark.parametrize(
    ("msg", "kwargs", "match"),
    [
        (_msg(None), {"masks": _masks()}, "exactly when masks"),
        (_msg(), {}, "exactly when masks"),
        (_msg(), {"masks": _masks()[:1]}, "one per track"),
        (_msg(), {"encoded": [b"\x00\x00"]}, "one per track"),
        (_msg(), {"masks": _masks(), "encoded": [b"", b""]}, "not both"),
        (_msg(), {"masks": [np.zeros((4, 3), bool)] * 2}, "the frame is"),
        (_msg(), {"masks": [np.zeros((3, 4), np.float32)] * 2}, "cannot be encoded"),
        (
            _msg(None, tracks=(TrackResultMeta(1, float("nan"), 0.5, True, None, 0),)),
            {},
            "JSON",
        ),
    ],
    ids=[
        "masks-no-encoding",
        "encoding-no-masks",
        "too-few-masks",
        "too-few-encoded",
        "both",
        "wrong-shape",
        "not-a-mask",
        "nan-score",
    ],
)
def test_encode_refuses_inconsistent_messages(
    msg: FrameResultMessage, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(MessageError, match=match):
        encode_frame_message(msg, **kwargs)


def _golden() -> dict[str, Any]:
    body: dict[str, Any] = json.loads(GOLDEN_HEADER)
    return body


def _with(path: str, value: Any) -> bytes:
    """The golden message with one header field replaced (``...`` deletes it)."""
    header = _golden()
    *parents, leaf = path.split(".")
    node: Any = header
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(leaf) if isinstance(node, list) else leaf
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return _join(header, b"\x66\x00\x00\x00")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "shorter than its length prefix"),
        (b"\x00\x00", "shorter than its length prefix"),
        (struct.pack(">I", 99) + b"{}", "exceeds"),
        (struct.pack(">I", 2) + b"{x", "not JSON"),
        (struct.pack(">I", 2) + b"\xff\xfe", "not JSON"),
        (_join([1]), "JSON object"),  # type: ignore[arg-type]
        (_join({"v": 2, "type": "frame"}), "speaks v1"),
        (_join({"type": "frame"}), "speaks v1"),
        (_with("type", "hello"), "expected a 'frame'"),
        (_with("seq", ...), "seq is missing"),
        (_with("seq", True), "seq must be an integer"),
        (_with("seq", -1), "seq must be an integer"),
        (_with("width", 0), "width must be an integer >= 1"),
        (_with("stream_id", 5), "stream_id"),
        (_with("times", []), "times must be a JSON object"),
        (_with("times.capture_ts_source", "camera"), "capture_ts_source"),
        (_with("times.recv_ts", "soon"), "recv_ts must be a finite number"),
        (_with("tracks", {}), "tracks must be a list"),
        (_with("tracks.0", 3), r"tracks\[0\] must be a JSON object"),
        (_with("tracks.0.present", 1), "present must be true or false"),
        (_with("tracks.0.bbox", [1, 2, 3]), "bbox"),
        (_with("tracks.0.source", "guessed"), "source must be"),
        (_with("tracks.0.model_seq", -1), "model_seq must be"),
        (_with("tracks.0.age_ms", "old"), "age_ms must be"),
        (_with("tracks.0.score", None), "score must be a finite number"),
        (_with("tracks.1.mask", ...), r"tracks\[1\]\.mask is missing"),
        (_with("tracks.1.mask", 4), "mask must be a JSON object"),
        (_with("tracks.1.mask.offset", 3), "outside"),
        (_with("tracks.1.mask.offset", -1), "offset must be an integer"),
        (_with("tracks.1.mask.length", 99), "outside"),
        (_with("tracks.1.mask.length", 1), r"tracks\[1\] mask is corrupt"),
        (_with("encoding", "gif"), "encoding must be one of .rle., .bitpack., .png."),
        (_with("encoding", None), "names no encoding"),
        (_with("encoding", "png"), r"tracks\[0\] mask is corrupt"),
        (_with("stages_ms", {"encoder": "fast"}), "stages_ms"),
        (_with("prompt_note", 3), "prompt_note"),
        (encode_frame_message(_msg(), _masks())[:-1], "outside"),
    ],
)
def test_malformed_messages_raise(data: bytes, match: str) -> None:
    with pytest.raises(MessageError, match=match):
        decode_frame_message(data)


def test_decoder_ignores_unknown_fields_and_missing_optional_ones() -> None:
    header = _golden()
    header["future_field"] = {"anything": 1}
    header["tracks"][0]["future_track_field"] = True
    for key in ("dropped_frames", "stages_ms", "prompt_note"):
        del header[key]
    msg, masks = decode_frame_message(_join(header, b"\x66\x00\x00\x00"))
    assert msg == _msg(dropped_frames=0, stages_ms=None, prompt_note=None)
    assert masks is not None and np.array_equal(masks[0], _masks()[0])


@pytest.mark.parametrize("encoding", list(MaskEncoding))
def test_json_form_round_trip(encoding: MaskEncoding) -> None:
    text = frame_message_json(_msg(None), _masks(), {"video_pts": 9000}, encoding=encoding)
    body = json.loads(text)
    assert body["v"] == SCHEMA_VERSION and body["type"] == "frame"
    assert body["encoding"] == encoding.value and body["video_pts"] == 9000
    if encoding is MaskEncoding.RLE:
        assert body["tracks"][0]["rle"] == rle_encode(_masks()[0])
    else:
        blob = base64.b64decode(body["tracks"][0]["mask_b64"])
        assert blob == encode_mask(_masks()[0], encoding)
    msg, masks = decode_frame_json(text)
    assert msg == _msg(encoding)
    assert masks is not None
    for got, want in zip(masks, _masks(), strict=True):
        assert np.array_equal(got, want)


def test_json_form_without_masks() -> None:
    text = frame_message_json(_msg(MaskEncoding.PNG))
    body = json.loads(text)
    assert body["encoding"] is None
    assert all("rle" not in t and "mask" not in t for t in body["tracks"])
    assert decode_frame_json(text) == (_msg(None), None)
    header, _ = _split(encode_frame_message(_msg(None)))
    assert body == header


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: frame_message_json(_msg(None), _masks(), {"seq": 1}), "overwrite"),
        (lambda: frame_message_json(_msg(None), _masks()[:1]), "one per track"),
        (lambda: frame_message_json(_msg(None), _masks(), encoding="gif"), "unknown"),
        (lambda: decode_frame_json("{"), "not JSON"),
        (lambda: decode_frame_json(json.dumps({**_golden(), "encoding": "rle"})), "missing"),
        (
            lambda: decode_frame_json(json.dumps({**_golden(), "encoding": "png"})),
            "mask_b64 is missing",
        ),
    ],
)
def test_json_form_errors(call: Any, match: str) -> None:
    with pytest.raises(MessageError, match=match):
        call()


def test_json_form_corrupt_inline_masks() -> None:
    body = json.loads(frame_message_json(_msg(None), _masks(), encoding=MaskEncoding.BITPACK))
    body["tracks"][0]["mask_b64"] = "!!"
    with pytest.raises(MessageError, match="corrupt"):
        decode_frame_json(json.dumps(body))
    body = json.loads(frame_message_json(_msg(None), _masks()))
    body["tracks"][1]["rle"]["counts"] = "9"
    with pytest.raises(MessageError, match="corrupt"):
        decode_frame_json(json.dumps(body))


def test_control_messages() -> None:
    hello = json.loads(
        hello_message(
            "s1",
            encoding=MaskEncoding.RLE,
            limits=PromptLimits(max_points=8),
            send_timeout_s=2.0,
        )
    )
    assert hello == {
        "v": 1,
        "type": "hello",
        "rev": SCHEMA_REVISION,
        "stream_id": "s1",
        "encoding": "rle",
        "encodings": ["rle", "bitpack", "png"],
        "limits": {
            "max_points": 8,
            "max_track_id": 2**31 - 1,
            "max_message_bytes": 65536,
            "max_request_id_chars": 128,
        },
        "send_timeout_s": 2.0,
    }
    assert json.loads(error_message("bad_field", "'box' must be ...")) == {
        "v": 1,
        "type": "error",
        "code": "bad_field",
        "message": "'box' must be ...",
    }
    assert json.loads(error_message("busy", "slow down", "r1"))["request_id"] == "r1"
    ack = ack_message("r7", {"track_id": np.int64(1), "created": True})
    assert json.loads(ack) == {
        "v": 1,
        "type": "ack",
        "request_id": "r7",
        "result": {"track_id": 1, "created": True},
    }
    assert json.loads(ack_message(None))["result"] is None
    with pytest.raises(MessageError, match="set by the protocol"):
        hello_message("s1", v=2)


def test_internal_error_message_names_only_its_id() -> None:
    body = parse_server_text(internal_error_message("0a1b2c3d", "r9"))
    assert body == {
        "v": 1,
        "type": "error",
        "code": "internal",
        "message": "internal error; the server log has the details under id 0a1b2c3d",
        "error_id": "0a1b2c3d",
        "request_id": "r9",
    }
    assert "request_id" not in json.loads(internal_error_message("0a1b2c3d"))


def test_parse_server_text() -> None:
    assert parse_server_text(ack_message("r1", {}))["type"] == "ack"
    assert parse_server_text(frame_message_json(_msg(None)).encode())["seq"] == 7
    for text, match in [
        ("nope", "not JSON"),
        ("[]", "JSON object"),
        ('{"v": 2, "type": "hello"}', "speaks v1"),
        ('{"v": 1, "type": "gossip"}', "unknown server message type"),
    ]:
        with pytest.raises(MessageError, match=match):
            parse_server_text(text)
    # A newer server's message type: a client can tell it from a broken message.
    with pytest.raises(UnknownMessageType):
        parse_server_text('{"v": 1, "type": "gossip"}')


def test_golden_hello_and_events() -> None:
    """Revision 3: hello carries rev, boot_id and epoch; events are text messages of
    type `event`. If this fails the wire format changed."""
    hello = hello_message(
        "dock",
        encoding="rle",
        limits=PromptLimits(),
        send_timeout_s=2.0,
        rate="model",
        state="streaming",
        width=640,
        height=480,
        boot_id="7f3a9c2e41d05b86",
        epoch="c41e0a9d7b2f6358",
        events=["state", "tracks"],
        delivery="push",
        scale=None,
        max_side=None,
        crop="none",
    )
    assert hello == (FIXTURES / "hello_v1.json").read_text().strip()
    assert parse_server_text(hello)["rev"] == SCHEMA_REVISION == 4
    state, lost = (FIXTURES / "events_v1.jsonl").read_text().splitlines()
    assert state == state_event_message(
        "dock",
        "reconnecting",
        "streaming",
        "ended",
        "the stream ended (the server closed the connection)",
        1764000000.25,
    )
    assert lost == track_event_message("dock", "lost", 1, 812, 1764000000.101)
    assert parse_server_text(state)["state"] == "reconnecting"
    assert parse_server_text(lost) == {
        "v": 1,
        "type": "event",
        "event": "lost",
        "stream_id": "dock",
        "track_id": 1,
        "seq": 812,
        "ts": 1764000000.101,
    }
    with pytest.raises(MessageError, match="source state"):
        state_event_message("dock", "dancing", None, "x", "y", 0.0)
    with pytest.raises(MessageError, match="track event"):
        track_event_message("dock", "gone", 1, 1, 0.0)


def test_a_revision_2_message_still_decodes() -> None:
    old = (FIXTURES / "frame_header_v1_rev2.json").read_text().strip()
    assert json.loads(old)["rev"] == 2
    msg, masks = decode_frame_message(_join(json.loads(old), b"\x66\x00\x00\x00"))
    assert msg == _msg()
    assert masks is not None and len(masks) == 2


def test_a_revision_3_message_still_decodes() -> None:
    """Before revision 4 headers had no mask grid or crop: masks are frame-sized."""
    old = (FIXTURES / "frame_header_v1_rev3.json").read_text().strip()
    assert json.loads(old)["rev"] == 3
    msg, masks = decode_frame_message(_join(json.loads(old), b"\x66\x00\x00\x00"))
    assert msg == _msg() and msg.grid == (3, 4) and not msg.mask_crop
    assert masks is not None and np.array_equal(masks[0], _masks()[0])


def _object_mask() -> tuple[FrameResultMessage, list[np.ndarray]]:
    mask = np.zeros((6, 8), bool)
    mask[2:6, 2:6] = True
    tracks = (
        TrackResultMeta(1, 0.9, 0.8, True, (2, 2, 6, 6), 16),
        TrackResultMeta(5, 0.25, 0.125, False, None, 0),
    )
    return _msg(MaskEncoding.RLE, width=8, height=6, tracks=tracks), [mask, np.zeros((6, 8), bool)]


def test_golden_reduced_message() -> None:
    """Revision 4: masks at half size, each cropped to its box on that grid; an empty
    mask has no box and no bytes. If this fails the wire format changed."""
    msg, masks = _object_mask()
    reduced, wire = reduce_masks(msg, masks, scale=0.5, crop=True)
    assert [w.shape for w in wire] == [(2, 2), (0, 0)]
    data = encode_frame_message(reduced, wire)
    head = (FIXTURES / "frame_header_v1_reduced.json").read_text().strip().encode()
    assert data == struct.pack(">I", len(head)) + head + b"04"
    got, decoded = decode_frame_message(data)
    assert got == reduced and got.grid == (3, 4) and got.tracks[0].mask_box == (1, 1, 3, 3)
    assert decoded is not None
    want = np.zeros((3, 4), bool)
    want[1:3, 1:3] = True
    assert np.array_equal(decoded[0], want) and not decoded[1].any()
    assert decoded[1].shape == (3, 4)


@pytest.mark.parametrize("encoding", list(MaskEncoding))
@pytest.mark.parametrize(
    "view",
    [{}, {"scale": 0.5}, {"max_side": 3}, {"crop": True}, {"scale": 0.5, "crop": True}],
    ids=["full", "half", "max-side", "crop", "half-crop"],
)
def test_reduced_masks_round_trip(encoding: MaskEncoding, view: dict[str, Any]) -> None:
    msg, masks = _object_mask()
    reduced, wire = reduce_masks(msgspec.structs.replace(msg, encoding=encoding), masks, **view)
    got, decoded = decode_frame_message(encode_frame_message(reduced, wire))
    assert got == reduced
    assert decoded is not None and all(m.shape == got.grid for m in decoded)
    small = shrink_mask(masks[0], *got.grid)
    assert np.array_equal(decoded[0], small) and not decoded[1].any()
    # The data channel's text form carries the same masks.
    text = frame_message_json(
        msgspec.structs.replace(reduced, encoding=None), wire, encoding=encoding
    )
    assert decode_frame_json(text)[0] == got
    assert np.array_equal(decode_frame_json(text)[1][0], small)  # type: ignore[index]


def _reduced_header() -> dict[str, Any]:
    body: dict[str, Any] = json.loads((FIXTURES / "frame_header_v1_reduced.json").read_text())
    return body


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"mask_width": 9}, "larger than the frame"),
        ({"mask_height": 0}, "mask_height must be an integer >= 1"),
        ({"mask_crop": "yes"}, "mask_crop must be true or false"),
        ({"mask_crop": False}, "only with mask_crop"),
        ({"tracks.0.mask_box": [1, 1, 5, 3]}, "must lie on the 4x3 mask grid"),
        ({"tracks.0.mask_box": [1, 1, 1, 3]}, "must lie on"),
        ({"tracks.0.mask_box": [1, 1, 3]}, "mask_box must be a list of 4 items or null"),
        ({"tracks.1.mask.offset": 0, "tracks.1.mask.length": 1}, "empty cropped mask has no"),
    ],
)
def test_malformed_reduced_messages_raise(change: dict[str, Any], match: str) -> None:
    header = _reduced_header()
    for path, value in change.items():
        *parents, leaf = path.split(".")
        node: Any = header
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[leaf] = value
    with pytest.raises(MessageError, match=match):
        decode_frame_message(_join(header, b"04"))


def test_reduce_refuses_bad_views_and_sizes() -> None:
    msg, masks = _object_mask()
    with pytest.raises(MessageError, match="scale must be in"):
        reduce_masks(msg, masks, scale=0.0)
    with pytest.raises(MessageError, match="the frame is"):
        reduce_masks(msg, [m[:3] for m in masks], scale=0.5)
