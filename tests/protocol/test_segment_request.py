"""The common /v1/segment request and answer (pure): decoding into native prompts, the
refusals, and the published schemas against real bodies."""

from __future__ import annotations

from typing import Any

import jsonschema
import msgspec
import numpy as np
import pytest

from streamseg.protocol.masks import MaskEncoding, decode_mask
from streamseg.protocol.prompts import AddPrompt
from streamseg.protocol.segment_request import (
    CommonSegmentAnswer,
    CommonSegmentRequest,
    RequestError,
    answer_schema,
    common_mask,
    decode_request,
    is_common_request,
    request_schema,
)

PROMPTS: list[dict[str, Any]] = [
    {"type": "point", "x": 120, "y": 80, "label": 1},
    {"type": "box", "bbox": [100, 50, 200, 150]},
]
GUIDE: dict[str, Any] = {"image_url": "https://example.com/image.jpg", "prompts": PROMPTS}


def test_the_guides_request_becomes_native_prompts() -> None:
    request = decode_request(GUIDE, max_prompts=32)
    assert request.image_url == GUIDE["image_url"]
    assert request.add_prompts() == [
        AddPrompt(track_id=None, points=((120.0, 80.0),), labels=(1,)),
        AddPrompt(track_id=None, box=(100.0, 50.0, 200.0, 150.0)),
    ]
    jsonschema.Draft202012Validator(request_schema(32)).validate(GUIDE)


def test_label_defaults_to_positive_and_whole_floats_are_integers() -> None:
    body = {"image_base64": "AAAA", "prompts": [{"type": "point", "x": 1, "y": 2.5}]}
    assert decode_request(body, 4).add_prompts()[0].labels == (1,)
    body["prompts"] = [{"type": "point", "x": 1, "y": 2, "label": 0.0}]
    assert decode_request(body, 4).add_prompts()[0].labels == (0,)


@pytest.mark.parametrize(
    ("body", "code", "field", "words"),
    [
        ({"prompts": GUIDE["prompts"]}, "missing_image", "image_url", "'image_base64'"),
        ({**GUIDE, "image_base64": "AAAA"}, "bad_field", "image_base64", "not both"),
        ({**GUIDE, "imagee_url": "x"}, "bad_field", "imagee_url", "did you mean 'image_url'"),
        ({**GUIDE, "prompts": []}, "missing_prompts", "prompts", "non-empty"),
        ({**GUIDE, "prompts": PROMPTS * 3}, "too_many_prompts", "prompts", "at most 4"),
        (
            {**GUIDE, "prompts": [{"type": "point", "x": 1, "y": 2, "lable": 1}]},
            "bad_field",
            "prompts[0].lable",
            "did you mean 'label'",
        ),
        (
            {**GUIDE, "prompts": [{"type": "box", "box": [1, 2, 3, 4]}]},
            "bad_field",
            "prompts[0].box",
            "did you mean 'bbox'",
        ),
        (
            {**GUIDE, "prompts": [{"type": "polygon"}]},
            "bad_field",
            "prompts[0].type",
            "'point' or 'box'",
        ),
        ({**GUIDE, "prompts": [{"x": 1, "y": 2}]}, "bad_field", "prompts[0].type", "'point' or"),
        (
            {**GUIDE, "prompts": [{"type": "box", "bbox": [9, 1, 3, 4]}]},
            "bad_field",
            "prompts[0].bbox",
            "'prompts[0].bbox' must have x0 < x1 and y0 < y1",
        ),
        (
            {**GUIDE, "prompts": [{"type": "point", "x": 1, "y": 2, "label": 3}]},
            "bad_field",
            "prompts[0].label",
            "'prompts[0].label' must be 1 (positive) or 0 (negative)",
        ),
        (
            {**GUIDE, "prompts": [{"type": "point", "x": 1, "y": 2, "label": 0.5}]},
            "bad_field",
            "prompts[0].label",
            "got 0.5",
        ),
        (
            {**GUIDE, "prompts": [{"type": "point", "x": float("nan"), "y": 2}]},
            "bad_field",
            "prompts[0].x",
            "finite",
        ),
        ({**GUIDE, "image_url": 7}, "bad_field", "image_url", "must be a string"),
        (
            {**GUIDE, "prompts": [{"type": "box", "bbox": [0, 0, float("inf"), 1]}]},
            "bad_field",
            "prompts[0].bbox[2]",
            "finite",
        ),
        ({**GUIDE, "prompts": ["point"]}, "bad_field", "prompts[0]", "'point' or 'box'"),
        (
            {**GUIDE, "prompts": [{"type": "point", "y": 1}]},
            "bad_field",
            "prompts[0].x",
            "required",
        ),
        ({**GUIDE, "image_url": "h" * 5000}, "bad_field", "image_url", "4096"),
    ],
)
def test_refusals_name_the_field(body: dict[str, Any], code: str, field: str, words: str) -> None:
    with pytest.raises(RequestError) as info:
        decode_request(body, max_prompts=4).add_prompts()
    error = info.value
    assert (error.code, error.field) == (code, field), error
    assert words in str(error), error


def test_json_that_no_parser_should_take_is_refused_by_the_structs_too() -> None:
    decoder = msgspec.json.Decoder(CommonSegmentRequest)
    for raw in (
        b'{"image_url": "u", "prompts": [{"type": "point", "x": NaN, "y": 1}]}',
        b'{"image_url": "u", "prompts": [{"type": "point", "x": 1e400, "y": 1}]}',
    ):
        with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
            decoder.decode(raw)


@pytest.mark.parametrize(
    ("body", "common"),
    [
        (GUIDE, True),
        ({"image_base64": "AAAA", "prompts": [{"type": "box", "bbox": [1, 2, 3, 4]}]}, True),
        ({"image_base64": "AAAA", "prompts": [{"box": [1, 2, 3, 4]}]}, False),
        ({"image_base64": "AAAA", "prompts": []}, False),
        ({"image_base64": "AAAA"}, False),
    ],
)
def test_the_shape_is_told_by_image_url_or_typed_prompts(
    body: dict[str, Any], common: bool
) -> None:
    assert is_common_request(body) is common


def test_answer_encodes_each_mask_as_a_base64_png_and_matches_its_schema() -> None:
    mask = np.zeros((6, 9), bool)
    mask[1:4, 2:7] = True
    answer = CommonSegmentAnswer(
        masks=[common_mask(mask, 0.5, (2, 1, 7, 4)), common_mask(mask & False, 0.1, None)],
        inference_time_ms=3.5,
        width=9,
        height=6,
    )
    body = msgspec.json.decode(msgspec.json.encode(answer))
    jsonschema.Draft202012Validator(answer_schema()).validate(body)
    assert body["masks"][1]["bbox"] is None
    png = msgspec.convert(body["masks"][0]["mask"], bytes)
    assert np.array_equal(decode_mask(png, MaskEncoding.PNG, 6, 9), mask)


def test_published_request_schema_says_exactly_one_image_and_the_limits() -> None:
    schema = request_schema(5)
    validator = jsonschema.Draft202012Validator(schema)
    assert schema["properties"]["prompts"]["maxItems"] == 5
    assert not validator.is_valid({"prompts": GUIDE["prompts"]})
    assert not validator.is_valid({**GUIDE, "image_base64": "AAAA"})
    assert not validator.is_valid({**GUIDE, "prompts": [{"type": "point", "x": 1}]})
    assert not validator.is_valid({**GUIDE, "extra": 1})
    assert validator.is_valid({"image_base64": "AAAA", "prompts": GUIDE["prompts"]})
    assert not validator.is_valid({"image_base64": "!!", "prompts": GUIDE["prompts"]})
