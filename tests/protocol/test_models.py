from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from streamseg.protocol import models

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
    schemas, components = models.json_schemas()
    assert set(schemas) == {t.__name__ for t in (*models.CLIENT_MESSAGES, *models.SERVER_MESSAGES)}
    for name in schemas:
        assert components[name]["description"], name
    prompt = components["Prompt"]
    assert prompt["additionalProperties"] is False
    assert prompt["properties"]["track_id"]["description"]
    assert prompt["properties"]["track_id"]["anyOf"][0] == {
        "type": "integer",
        "minimum": 0,
        "maximum": models.DEFAULT_LIMITS.max_track_id,
    }
    assert "additionalProperties" not in components["FrameHeader"]  # v1 grows
