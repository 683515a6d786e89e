"""The strict JSON parser every surface uses for client input."""

from __future__ import annotations

import pytest

from streamseg.protocol.prompts import PromptError, parse_client_message, peek_request_id
from streamseg.protocol.strictjson import MAX_DEPTH, JSONRefused, loads


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("NaN", "finite"),
        ('{"x": [Infinity]}', "finite"),
        ('{"x": -Infinity}', "finite"),
        ("[1e999]", "finite"),
        ("-1e400", "finite"),
        ("1" * 5000, "5000 digits"),
        ("-" + "7" * 33, "33 digits"),
        ("[" * 100_000, "nested"),  # deeper than the interpreter's recursion limit
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested"),
        ('{"a": ' * 40 + "1" + "}" * 40, "nested"),
        (b"\xff\xfe", "UTF-8"),
        ('{"a": 1} x', "not valid JSON"),
        ("", "not valid JSON"),
    ],
)
def test_refused(raw: str | bytes, words: str) -> None:
    with pytest.raises(JSONRefused, match=words):
        loads(raw)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("[" * MAX_DEPTH + "]" * MAX_DEPTH, None),
        ("9" * 32, 10**32 - 1),
        ("-2.5e3", -2500.0),
        ('{"a": [1, 2.0, "NaN", null, true]}', {"a": [1, 2.0, "NaN", None, True]}),
        (b' {"k": "\\u00e9"} ', {"k": "é"}),
        (memoryview(b"[1]"), [1]),
    ],
)
def test_accepted(raw: str | bytes | memoryview, value: object) -> None:
    parsed = loads(raw)
    if value is not None:
        assert parsed == value
    assert type(loads("3")) is int and type(loads("3.0")) is float


def test_limits_are_parameters() -> None:
    assert loads("[[1]]", max_depth=2) == [[1]]
    with pytest.raises(JSONRefused):
        loads("[[1]]", max_depth=1)
    with pytest.raises(JSONRefused):
        loads("1234", max_int_digits=3)


def test_client_messages_use_it() -> None:
    deep = '{"type": "reset", "request_id": "r1", "x": ' + "[" * 5000 + "]" * 5000 + "}"
    for raw in (deep, '{"type": "remove", "track_id": ' + "1" * 5000 + "}"):
        with pytest.raises(PromptError) as info:
            parse_client_message(raw)
        assert info.value.code == "bad_json"
        assert peek_request_id(raw) is None
