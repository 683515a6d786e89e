from __future__ import annotations

import json
from typing import Any

import pytest

from streamseg.protocol.masks import MaskEncoding
from streamseg.protocol.prompts import (
    AddPrompt,
    PromptError,
    PromptLimits,
    RemoveTrack,
    ResetTracks,
    SetOptions,
    parse_client_message,
)


def test_valid_messages() -> None:
    msg = parse_client_message(
        '{"type": "prompt", "track_id": 3, "points": [[1, 2.5]], "labels": [1],'
        ' "frame_seq": 10, "request_id": "r1"}'
    )
    assert msg == AddPrompt(3, ((1.0, 2.5),), (1,), None, 10, True, "r1")
    box = parse_client_message({"type": "prompt", "box": [0, 0, 5, 5]})
    assert isinstance(box, AddPrompt) and box.track_id is None and box.box == (0, 0, 5, 5)
    assert parse_client_message(b'{"type": "remove", "track_id": 1}') == RemoveTrack(1)
    assert parse_client_message('{"type": "reset"}') == ResetTracks()
    assert parse_client_message('{"type": "options", "encoding": "png"}') == SetOptions(
        MaskEncoding.PNG
    )


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{", "bad_json"),
        ("[1]", "bad_json"),
        ('{"type": "fly"}', "unknown_type"),
        ({"type": "prompt"}, "empty_prompt"),
        ({"type": "prompt", "points": [[1, 1]]}, "bad_field"),
        ({"type": "prompt", "points": [[1, 1]], "labels": [True]}, "bad_field"),
        ({"type": "prompt", "points": [[1, 1]], "labels": [2]}, "bad_field"),
        ({"type": "prompt", "track_id": True, "box": [0, 0, 1, 1]}, "bad_field"),
        ({"type": "prompt", "track_id": 1.5, "box": [0, 0, 1, 1]}, "bad_field"),
        ({"type": "prompt", "box": [0, 0, 1, float("nan")]}, "bad_field"),
        ({"type": "prompt", "box": [5, 0, 1, 1]}, "bad_field"),
        ({"type": "prompt", "box": [0, 0, 1, 1], "colour": "red"}, "bad_field"),
        ({"type": "prompt", "points": [[0, 0]] * 40, "labels": [1] * 40}, "too_many_points"),
        ({"type": "remove"}, "bad_field"),
        ({"type": "remove", "track_id": -1}, "bad_field"),
        ({"type": "options", "encoding": "gif"}, "bad_field"),
        ("x" * 70_000, "too_large"),
    ],
)
def test_errors(raw: Any, code: str) -> None:
    with pytest.raises(PromptError) as info:
        parse_client_message(raw if not isinstance(raw, dict) else json.dumps(raw))
    assert info.value.code == code


def test_limits_are_configurable() -> None:
    with pytest.raises(PromptError):
        parse_client_message(
            {"type": "prompt", "points": [[0, 0]] * 3, "labels": [1] * 3},
            PromptLimits(max_points=2),
        )
