from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from streamseg.protocol import messages, models, schema_export
from streamseg.protocol.catalogue import MODEL_RULES, catalogue
from streamseg.protocol.masks import MaskEncoding
from streamseg.protocol.prompts import PromptLimits

FIXTURES = Path(__file__).parent / "fixtures"
VALID = json.loads((FIXTURES / "client_messages_valid.json").read_text())
CLIENT = msgspec.json.Decoder(models.AnyClientMessage, dec_hook=models.dec_hook)


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("frame_header_v1*.json")))
def test_golden_frame_headers_decode(name: str) -> None:
    header = msgspec.json.decode((FIXTURES / name).read_bytes(), type=models.FrameHeader)
    assert header.type == "frame" and header.seq == 7 and len(header.tracks) == 2


def test_golden_hello_and_events_decode() -> None:
    hello = msgspec.json.decode((FIXTURES / "hello_v1.json").read_bytes(), type=models.Hello)
    assert hello.rev == models.SCHEMA_REVISION and hello.limits == models.Limits(
        **msgspec.structs.asdict(models.DEFAULT_LIMITS)
    )
    state, lost = (FIXTURES / "events_v1.jsonl").read_text().splitlines()
    assert msgspec.json.decode(state, type=models.StateEvent).previous == "streaming"
    assert msgspec.json.decode(lost, type=models.TrackEvent).track_id == 1


@pytest.mark.parametrize("case", VALID, ids=lambda c: str(c["case"]))
def test_valid_client_fixtures_decode(case: dict[str, Any]) -> None:
    msg = CLIENT.decode(case["raw"])
    assert type(msg).__name__.lower() in case["raw"]


def test_whole_numbers_decode_to_plain_ints() -> None:
    msg = CLIENT.decode(
        '{"type": "prompt", "track_id": 3.0, "labels": [1.0, 0], "points": [[1, 2], [3, 4]]}'
    )
    assert isinstance(msg, models.Prompt)
    assert msg.track_id == 3 and type(msg.track_id) is int
    assert msg.labels == (1, 0) and all(type(v) is int for v in msg.labels)
    for bad in ("3.5", "true", '"3"', "9.0e18"):
        with pytest.raises(msgspec.ValidationError, match=r"\$\.track_id"):
            CLIENT.decode('{"type": "remove", "track_id": ' + bad + "}")


def test_every_message_has_a_described_schema() -> None:
    _, components = schema_export.components(catalogue(), MODEL_RULES)
    for model in (*models.CLIENT_MESSAGES, *models.SERVER_MESSAGES):
        assert components[model.__name__]["description"], model.__name__
    prompt = components["Prompt"]
    assert prompt["additionalProperties"] is False
    assert prompt["properties"]["track_id"]["description"]
    assert prompt["properties"]["track_id"]["anyOf"][0] == {
        "type": "integer",
        "minimum": 0,
        "maximum": models.DEFAULT_LIMITS.max_track_id,
    }
    assert "additionalProperties" not in components["FrameHeader"]  # v1 grows


def _frame() -> tuple[messages.FrameResultMessage, list[np.ndarray]]:
    mask = np.zeros((6, 8), bool)
    mask[2:5, 1:4] = True
    tracks = (
        messages.TrackResultMeta(1, 0.9, 0.8, True, (1, 2, 4, 5), 9, "propagated", 5, 66.667),
        messages.TrackResultMeta(5, 0.25, 0.125, False, None, 0),
    )
    times = messages.FrameTimes(1.0, "stream", 1.0, 1.5, 2.0, 2.5)
    msg = messages.FrameResultMessage("s1", 7, 8, 6, times, tracks, 3, None, {"encoder": 1.5})
    return msg, [mask, np.zeros((6, 8), bool)]


@pytest.mark.parametrize("encoding", list(MaskEncoding))
@pytest.mark.parametrize("crop", [False, True])
def test_what_the_server_encodes_is_what_the_models_declare(
    encoding: MaskEncoding, crop: bool
) -> None:
    """The encoders build JSON by hand for speed; every field they write must be one
    the models declare, of the declared type (strict decoding, no unknown field)."""
    msg, masks = _frame()
    reduced, wire = messages.reduce_masks(msg, masks, scale=0.5, crop=crop)
    binary = messages.encode_frame_message(
        msgspec.structs.replace(reduced, encoding=encoding), wire
    )
    (size,) = messages.HEADER_LENGTH.unpack_from(binary)
    head = binary[4 : 4 + size]
    _strictly(head, models.FrameHeader)
    text = messages.frame_message_json(reduced, wire, {"video_pts": 9000}, encoding=encoding)
    _strictly(text, models.DataChannelFrame)


def test_control_messages_are_what_the_models_declare() -> None:
    for text, model in [
        (messages.hello_message("s1", limits=PromptLimits(), send_timeout_s=2.0), models.Hello),
        (messages.ack_message("r1", {"track_id": 1}), models.Ack),
        (messages.error_message("bad_field", "no", "r1", "points[0]"), models.Error),
        (messages.internal_error_message("0a1b", "r1"), models.Error),
        (
            messages.state_event_message("s1", "streaming", None, "frames", "ok", 1.0),
            models.StateEvent,
        ),
        (messages.track_event_message("s1", "found", 1, 2, 3.0), models.TrackEvent),
    ]:
        _strictly(text, model)
        assert messages.parse_server_text(text) == json.loads(text)


def _strictly(text: str | bytes, model: Any) -> None:
    """`text` decodes as `model` and has no field the model does not declare."""
    decoded = msgspec.json.decode(text, type=model)
    body = json.loads(text)
    declared = set(model.__struct_fields__)
    assert set(body) <= declared, set(body) - declared
    if "tracks" in body:
        track_model = type(decoded.tracks[0]) if decoded.tracks else None
        for track in body["tracks"]:
            assert track_model is not None and set(track) <= set(track_model.__struct_fields__)


def test_server_text_is_validated_against_its_model() -> None:
    ack = json.loads(messages.ack_message("r1", {}))
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    lost = json.loads(messages.track_event_message("s", "lost", 1, 1, 0.0))
    for bad, match in [
        ({**ack, "request_id": 5}, "request_id must be a string or null, got 5"),
        ({**ack, "result": {"a": deep}}, "nested"),
        ({**lost, "track_id": -1}, "track_id must be an integer >= 0"),
        ({"v": 1, "type": "hello", "stream_id": "s"}, "encodings is missing"),
    ]:
        with pytest.raises(messages.MessageError, match=match):
            messages.parse_server_text(json.dumps(bad))
