from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import MappingProxyType
from typing import Any

import msgspec
import pytest

from streamseg.protocol.client_schema import request_schema
from streamseg.protocol.masks import MaskEncoding
from streamseg.protocol.prompts import (
    ERROR_CODES,
    AddPrompt,
    NextResult,
    PromptError,
    PromptLimits,
    RemoveTrack,
    ResetTracks,
    SetOptions,
    check_prompt_in_frame,
    parse_client_message,
    parse_feed_message,
    peek_request_id,
)

FIXTURES = Path(__file__).parent / "fixtures"
VALID = json.loads((FIXTURES / "client_messages_valid.json").read_text())
INVALID = json.loads((FIXTURES / "client_messages_invalid.json").read_text())
KINDS = {c.__name__: c for c in (AddPrompt, RemoveTrack, ResetTracks, SetOptions)}


def _case_id(case: dict[str, Any]) -> str:
    return str(case["case"])


@pytest.mark.parametrize("case", VALID, ids=_case_id)
def test_valid_messages(case: dict[str, Any]) -> None:
    for raw in (case["raw"], case["raw"].encode(), json.loads(case["raw"])):
        msg = parse_client_message(raw)
        assert type(msg) is KINDS[case["kind"]]
        assert json.loads(msgspec.json.encode(msg)) == case["expect"]


def test_parsed_types_are_exact() -> None:
    msg = parse_client_message(VALID[0]["raw"])
    assert msg == AddPrompt(3, ((1.0, 2.5), (10.0, 20.0)), (1, 0), None, 10, True, "r1")
    assert isinstance(msg, AddPrompt)
    assert all(type(v) is float for p in msg.points for v in p)
    options = parse_client_message('{"type": "options", "encoding": "bitpack"}')
    assert options == SetOptions(MaskEncoding.BITPACK)
    assert isinstance(options, SetOptions) and options.encoding is MaskEncoding.BITPACK


@pytest.mark.parametrize("case", INVALID, ids=_case_id)
def test_invalid_messages(case: dict[str, Any]) -> None:
    inputs: list[Any] = [case["raw"], case["raw"].encode()]
    try:
        body = json.loads(case["raw"])  # Python's lenient parser: NaN, any depth
    except ValueError:
        body = None
    if isinstance(body, dict):
        inputs.append(body)
    for raw in inputs:
        with pytest.raises(PromptError) as info:
            parse_client_message(raw)
        # Text is refused by the strict parser; a mapping someone else parsed is still
        # checked field by field (`code_parsed`).
        expected = case.get("code_parsed", case["code"]) if raw is body else case["code"]
        assert info.value.code == expected, (raw, str(info.value))
        assert info.value.code in ERROR_CODES
        assert str(info.value)


def test_every_error_code_has_a_fixture() -> None:
    assert {c["code"] for c in INVALID} | {"too_large"} == ERROR_CODES


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"type": "prompt", "points": [[1, 1]], "lables": [1]}, ["'lables'", "'labels'"]),
        ({"type": "prompt", "box": [0, 0, 1, 1], "colour": 1}, ["'colour'", "allowed"]),
        ({"type": "prompt", "track_id": True, "box": [0, 0, 1, 1]}, ["'track_id'", "integer"]),
        ({"type": "prompt", "points": [[1, float("nan")]], "labels": [1]}, ["points[0][1]"]),
        ({"type": "prompt", "box": [0, 0, float("inf"), 1]}, ["box[2]", "finite"]),
        ({"type": "prompt", "points": [[1, 1]], "labels": [1, 0]}, ["'labels'", "'points'"]),
        ({"type": "prompt", "points": [[1, 1]], "labels": [5]}, ["labels[0]", "1 (positive)"]),
        ({"type": "remove"}, ["'track_id'", "required"]),
        ({"type": "options", "encoding": "gif"}, ["'encoding'", "'rle'", "'png'"]),
        ({"type": "zoom"}, ["'type'", "'prompt'", "'zoom'"]),
    ],
)
def test_messages_name_the_field_and_what_was_expected(raw: Any, words: list[str]) -> None:
    with pytest.raises(PromptError) as info:
        parse_client_message(raw)
    for word in words:
        assert word in str(info.value)


def test_python_floats_nan_and_inf_from_a_dict() -> None:
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(PromptError) as info:
            parse_client_message({"type": "prompt", "points": [[bad, 1]], "labels": [1]})
        assert info.value.code == "bad_field"


def test_mappings_and_tuples_are_accepted_from_python_callers() -> None:
    body = MappingProxyType({"type": "prompt", "points": ((1, 2),), "labels": (1,)})
    assert parse_client_message(body) == AddPrompt(None, ((1.0, 2.0),), (1,))


def test_huge_messages_are_refused_before_parsing() -> None:
    limit = PromptLimits().max_message_bytes
    padding = "x" * limit
    text = json.dumps({"type": "reset", "request_id": padding})
    for raw in (text, text.encode(), "{" * 70_000, b"\xff" * (limit + 1)):
        with pytest.raises(PromptError) as info:
            parse_client_message(raw)
        assert info.value.code == "too_large"
    # Characters are not bytes: 20,000 four-byte characters are 80 KB on the wire.
    wide = '{"type": "reset", "request_id": "' + "\U0001f600" * 20_000 + '"}'
    assert len(wide) < limit
    with pytest.raises(PromptError) as info:
        parse_client_message(wide)
    assert info.value.code == "too_large"


def test_deep_nesting_and_bad_utf8_are_bad_json() -> None:
    for raw in ("[" * 50_000, b'{"type": "\xff"}'):
        with pytest.raises(PromptError) as info:
            parse_client_message(raw)
        assert info.value.code == "bad_json"


def test_limits_are_configurable() -> None:
    three = {"type": "prompt", "points": [[0, 0]] * 3, "labels": [1] * 3}
    assert isinstance(parse_client_message(three), AddPrompt)
    with pytest.raises(PromptError) as info:
        parse_client_message(three, PromptLimits(max_points=2))
    assert info.value.code == "too_many_points"
    with pytest.raises(PromptError) as info:
        parse_client_message({"type": "remove", "track_id": 11}, PromptLimits(max_track_id=10))
    assert info.value.code == "bad_field"
    assert parse_client_message({"type": "remove", "track_id": 10}, PromptLimits(max_track_id=10))
    with pytest.raises(PromptError) as info:
        parse_client_message('{"type": "reset"}', PromptLimits(max_message_bytes=8))
    assert info.value.code == "too_large"
    with pytest.raises(PromptError) as info:
        parse_client_message({"type": "reset", "request_id": "r" * 129})
    assert info.value.code == "bad_field"


@pytest.mark.parametrize(
    "prompt",
    [
        AddPrompt(None, ((0.0, 0.0), (640.0, 480.0), (320.5, 0.0)), (1, 0, 1)),
        AddPrompt(None, box=(0.0, 0.0, 640.0, 480.0)),
        AddPrompt(1, ((10.0, 10.0),), (1,), (5.0, 5.0, 20.0, 20.0)),
    ],
)
def test_prompts_inside_the_frame_pass(prompt: AddPrompt) -> None:
    check_prompt_in_frame(prompt, 640, 480)


@pytest.mark.parametrize(
    ("prompt", "words"),
    [
        (AddPrompt(None, ((640.5, 10.0),), (1,)), ["points[0]", "640x480"]),
        (AddPrompt(None, ((1.0, 1.0), (10.0, -0.1)), (1, 1)), ["points[1]"]),
        (AddPrompt(None, ((10.0, 481.0),), (1,)), ["points[0]"]),
        (AddPrompt(None, box=(-1.0, 0.0, 10.0, 10.0)), ["box"]),
        (AddPrompt(None, box=(0.0, 0.0, 10.0, 500.0)), ["box", "y in [0, 480]"]),
        (AddPrompt(None, ((float("nan"), 1.0),), (1,)), ["points[0]"]),
    ],
)
def test_prompts_outside_the_frame_fail(prompt: AddPrompt, words: list[str]) -> None:
    with pytest.raises(PromptError) as info:
        check_prompt_in_frame(prompt, 640, 480)
    assert info.value.code == "out_of_frame"
    for word in words:
        assert word in str(info.value)
    assert "outside" in str(info.value)


def test_frame_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        check_prompt_in_frame(AddPrompt(None, box=(0, 0, 1, 1)), 0, 10)


def test_prompt_error_pickles_with_its_code() -> None:
    error = pickle.loads(pickle.dumps(PromptError("too_large", "big")))
    assert isinstance(error, PromptError) and error.code == "too_large" and str(error) == "big"


def test_peek_request_id() -> None:
    assert peek_request_id('{"type": "fly", "request_id": "r9"}') == "r9"
    assert peek_request_id(b'{"request_id": "r9"}') == "r9"
    assert peek_request_id('{"request_id": 9}') is None
    assert peek_request_id("[1]") is None
    assert peek_request_id("{") is None
    assert peek_request_id("[" * 50_000) is None
    assert peek_request_id('{"request_id": "' + "r" * 200 + '"}') is None
    assert peek_request_id(" " * 70_000 + '{"request_id": "r"}') is None


def test_whole_numbers_are_integers_as_json_schema_says() -> None:
    """JSON Schema's `integer` (the OpenAPI contract) admits 3.0, and JavaScript cannot
    tell it from 3: both mean the same track and frame; 3.5 and true never do."""
    body = (
        '{"type": "prompt", "track_id": 3.0, "frame_seq": 12.0, '
        '"points": [[1, 1]], "labels": [1.0]}'
    )
    msg = parse_client_message(body)
    assert isinstance(msg, AddPrompt)
    assert (msg.track_id, msg.frame_seq, msg.labels) == (3, 12, (1,))
    assert all(type(v) is int for v in (msg.track_id, msg.frame_seq, *msg.labels))
    for bad in ("3.5", "true", "9.0e18"):  # 9e18 is past 2**53: not exactly that integer
        with pytest.raises(PromptError) as info:
            parse_client_message('{"type": "remove", "track_id": ' + bad + "}")
        assert info.value.code == "bad_field" and "track_id" in str(info.value)


def test_next_is_a_feed_message_only() -> None:
    """`next` (pull delivery) exists on the mask feed; every other surface refuses it
    as an unknown type, and the feed still takes every other message."""
    assert parse_feed_message('{"type": "next"}') == NextResult()
    assert parse_feed_message(b'{"type":"next"}') == NextResult()
    assert parse_feed_message('{"type": "reset"}') == ResetTracks()
    with pytest.raises(PromptError) as refused:
        parse_client_message('{"type": "next"}')
    assert refused.value.code == "unknown_type"
    for raw, code in [
        ('{"type": "next", "count": 2}', "bad_field"),
        ('{"type": "next", "request_id": "r1"}', "bad_field"),
        ('{"type": "nxet"}', "unknown_type"),
        ("[1]", "bad_json"),
        ('{"type": "next"', "bad_json"),
        ('{"type": "next", "pad": "' + "x" * 70000 + '"}', "too_large"),
    ]:
        with pytest.raises(PromptError) as refused:
            parse_feed_message(raw)
        assert refused.value.code == code, raw


def test_refusals_name_the_field_for_programs() -> None:
    for raw, field in [
        ({"type": "prompt", "points": [[1, "x"]], "labels": [1]}, "points[0][1]"),
        ({"type": "prompt", "points": [[1, 1]], "lables": [1]}, "lables"),
        ({"type": "remove"}, "track_id"),
        ({"type": "prompt", "points": [[1, 1]] * 33, "labels": [1] * 33}, "points"),
        ('{"type": "prompt", "box": [0, 0, 1, 1], "track_id": -1}', "track_id"),
        ({"type": "prompt"}, None),
    ]:
        with pytest.raises(PromptError) as info:
            parse_client_message(raw)
        assert info.value.field == field, (raw, str(info.value))


def test_request_schema_is_the_models_with_the_configured_limits() -> None:
    """A REST body's schema: self-contained (it sits inside the OpenAPI document), the
    server's own limits in place of the published defaults, and refusing what the
    parser refuses for those limits."""
    jsonschema = pytest.importorskip("jsonschema")
    limits = PromptLimits(max_points=2, max_track_id=9)
    schema = request_schema(limits, ("prompt", "remove", "reset"))
    assert "$ref" not in json.dumps(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for body in [
        {"type": "prompt", "box": [0, 0, 1, 1]},
        {"type": "prompt", "points": [[1, 1], [2, 2]], "labels": [1, 0], "track_id": 9},
        {"type": "remove", "track_id": 3.0},
        {"type": "reset", "request_id": "r"},
    ]:
        assert validator.is_valid(body), body
        parse_client_message(body, limits)
    for body in [
        {"type": "prompt", "points": [[1, 1]] * 3, "labels": [1] * 3},
        {"type": "remove", "track_id": 10},
        {"type": "prompt"},
        {"type": "reset", "colour": "red"},
    ]:
        assert not validator.is_valid(body), body
        with pytest.raises(PromptError):
            parse_client_message(body, limits)
    assert not validator.is_valid({"type": "options"})  # set on the websocket, not by REST
