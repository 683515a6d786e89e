"""The common `/v1/segment` request and answer, as SAM deployment guides describe them,
declared as msgspec Structs next to streamseg's own shape (pure, sans-I/O).

    {"image_url": "https://example.com/image.jpg",
     "prompts": [{"type": "point", "x": 120, "y": 80, "label": 1},
                 {"type": "box", "bbox": [100, 50, 200, 150]}]}

answered by `{"masks": [{"mask", "score", "bbox"}], "inference_time_ms", ...}`.

Each prompt is one object and gets one mask, in order, as in the native shape. Every
prompt is turned into the native `AddPrompt` through `parse_client_message`, so both
shapes share one validation (box corners in order, labels 0/1), one bounds check
(`out_of_frame`) and one model path; only the field names differ. A request is told
apart from the native one by `image_url` or by typed prompts (`is_common_request`).

The native answer (`SegmentAnswer`) is declared here too, so OpenAPI shows both."""

from __future__ import annotations

import base64
import difflib
import re
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from streamseg.media.image_fetch import MAX_URL_CHARS
from streamseg.protocol import explain
from streamseg.protocol.masks import MaskEncoding, encode_mask, rle_encode
from streamseg.protocol.models import Label, dec_hook
from streamseg.protocol.prompts import AddPrompt, PromptError, PromptLimits, parse_client_message
from streamseg.protocol.schema_export import inline_refs
from streamseg.protocol.server_models import PixelBox

BASE64_PATTERN: Final = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
"""Standard base64 with padding, as the server decodes it (`validate=True`)."""
MASK_ENCODING: Final = (
    "base64 of a PNG (1 bit per pixel, the image's width x height; 1 = the object)"
)
Coordinate = Annotated[float, Meta(description="pixels of the image (as displayed, EXIF applied)")]


class _CommonPrompt(Struct, frozen=True, forbid_unknown_fields=True, tag_field="type"):
    """One object to segment: one mask in the answer."""


class PointPrompt(_CommonPrompt, frozen=True, tag="point"):
    """A click on the object (label 1) or beside it (label 0)."""

    x: Coordinate
    y: Coordinate
    label: Label = 1

    def to_native(self) -> dict[str, Any]:
        return {"points": [[self.x, self.y]], "labels": [self.label]}


class BoxPrompt(_CommonPrompt, frozen=True, tag="box"):
    """A box around the object."""

    bbox: Annotated[
        tuple[float, float, float, float],
        Meta(description="[x0, y0, x1, y1] in pixels of the image, with x0 < x1 and y0 < y1"),
    ]

    def to_native(self) -> dict[str, Any]:
        return {"box": list(self.bbox)}


CommonPrompt = PointPrompt | BoxPrompt


class CommonSegmentRequest(Struct, frozen=True, forbid_unknown_fields=True):
    """The common request: an image by URL (fetched by the server, when it allows it)
    or in base64, exactly one of them, and typed prompts."""

    prompts: Annotated[
        list[CommonPrompt],
        Meta(
            min_length=1,
            description="one object each; at most the server's `max_prompts_per_request`",
        ),
    ]
    image_url: (
        Annotated[
            str,
            Meta(
                max_length=MAX_URL_CHARS,
                description=(
                    "http(s) URL the server fetches: only when started with "
                    "--allow-image-urls (else 403 `fetch_disabled`), through its source "
                    "policy, same-host redirects only, at most `max_upload_bytes`"
                ),
            ),
        ]
        | UnsetType
    ) = UNSET
    image_base64: (
        Annotated[str, Meta(description="the image file (PNG, JPEG, ...) in base64")] | UnsetType
    ) = UNSET

    def add_prompts(self, limits: PromptLimits | None = None) -> list[AddPrompt]:
        """The native prompts, through the native validation (`PromptError` naming
        `prompts[i]`)."""
        out = []
        for i, prompt in enumerate(self.prompts):
            try:
                parsed = parse_client_message({"type": "prompt", **prompt.to_native()}, limits)
            except PromptError as exc:
                raise _in_common_terms(exc, i) from None
            assert isinstance(parsed, AddPrompt)
            out.append(parsed)
        return out


# A native prompt's fields as the common prompt names them (`box[2]` -> `bbox[2]`).
_COMMON_NAMES: Final = {"labels[0]": "label", "points[0][0]": "x", "points[0][1]": "y"}


def _in_common_terms(exc: PromptError, index: int) -> RequestError:
    """A native refusal of `prompts[index]`, naming the field the client sent."""
    native = exc.field
    where = f"prompts[{index}]"
    if not native:
        return RequestError(exc.code, f"{where}: {exc}", where)
    common = _COMMON_NAMES.get(native) or re.sub(r"^box", "bbox", native)
    field = f"{where}.{common}"
    return RequestError(exc.code, str(exc).replace(f"'{native}'", f"'{field}'"), field)


# ---- answers -----------------------------------------------------------------------------

Score = Annotated[float, Meta(description="the mask decoder's predicted IoU of the mask")]
MaskBox = Annotated[
    PixelBox | None, Meta(description="[x0, y0, x1, y1], exclusive ends; null for an empty mask")
]
InferenceMs = Annotated[float, Meta(ge=0, description="model time: encoder + decoder, ms")]


class CommonMask(Struct, frozen=True, kw_only=True):
    """One prompt's mask."""

    mask: Annotated[str, Meta(description=MASK_ENCODING)]
    score: Score
    bbox: MaskBox


class CommonSegmentAnswer(Struct, frozen=True, kw_only=True):
    """The answer to the common request: one mask per prompt, in order."""

    masks: list[CommonMask]
    inference_time_ms: InferenceMs
    width: Annotated[int, Meta(ge=1, description="image width as displayed, pixels")]
    height: Annotated[int, Meta(ge=1, description="image height as displayed, pixels")]


class RleMask(Struct, frozen=True, kw_only=True):
    """COCO compressed RLE."""

    size: Annotated[tuple[int, int], Meta(description="[height, width]")]
    counts: Annotated[str, Meta(description="COCO's compressed counts string")]


class SegmentMaskAnswer(Struct, frozen=True, kw_only=True):
    """One prompt's mask in the native answer."""

    mask: Annotated[str | RleMask, Meta(description="png: base64 of a 1-bit PNG; rle: COCO RLE")]
    format: Literal["png", "rle"]
    score: Score
    object_score: Annotated[float, Meta(description="probability that the object is there")]
    bbox: MaskBox
    area: Annotated[int, Meta(ge=0, description="mask pixels")]


class SegmentAnswer(Struct, frozen=True, kw_only=True):
    """The native answer: one mask per prompt, in order, with the model's timings."""

    width: Annotated[int, Meta(ge=1)]
    height: Annotated[int, Meta(ge=1)]
    masks: list[SegmentMaskAnswer]
    cached: Annotated[bool, Meta(description="the image's embedding came from /v1/images")]
    encoder_ms: Annotated[float, Meta(ge=0)]
    decoder_ms: Annotated[float, Meta(ge=0)]
    inference_time_ms: InferenceMs


def common_mask(mask: Any, score: float, bbox: tuple[int, int, int, int] | None) -> CommonMask:
    png = encode_mask(mask, MaskEncoding.PNG)
    return CommonMask(mask=base64.b64encode(png).decode("ascii"), score=score, bbox=bbox)


def native_mask(
    mask: Any, fmt: str, score: float, object_score: float, bbox: Any, area: int
) -> SegmentMaskAnswer:
    encoded: str | RleMask
    if fmt == "rle":
        rle = rle_encode(mask)
        height, width = rle["size"]
        encoded = RleMask(size=(height, width), counts=rle["counts"])
    else:
        encoded = base64.b64encode(encode_mask(mask, MaskEncoding.PNG)).decode("ascii")
    return SegmentMaskAnswer(
        mask=encoded,
        format="rle" if fmt == "rle" else "png",
        score=score,
        object_score=object_score,
        bbox=bbox,
        area=area,
    )


# ---- decoding ----------------------------------------------------------------------------


class RequestError(ValueError):
    """A refused request: `code` of the one error table, the dotted `field`."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field


def is_common_request(body: Mapping[str, Any]) -> bool:
    """An `image_url`, or a prompt with a `type`: the native shape has neither."""
    if "image_url" in body:
        return True
    prompts = body.get("prompts")
    return isinstance(prompts, list) and any(isinstance(p, dict) and "type" in p for p in prompts)


def decode_request(body: Mapping[str, Any], max_prompts: int) -> CommonSegmentRequest:
    """The request or `RequestError` (codes as the native shape's: `missing_prompts`,
    `too_many_prompts`, `missing_image`, `bad_field` naming the field)."""
    prompts = body.get("prompts")
    if not isinstance(prompts, list) or not prompts:
        raise RequestError("missing_prompts", "'prompts' must be a non-empty list", "prompts")
    if len(prompts) > max_prompts:
        raise RequestError(
            "too_many_prompts", f"at most {max_prompts} prompts per request", "prompts"
        )
    try:
        request = msgspec.convert(body, CommonSegmentRequest, dec_hook=dec_hook)
    except msgspec.ValidationError as exc:
        raise _field_error(exc, body) from None
    has_url, has_data = request.image_url is not UNSET, request.image_base64 is not UNSET
    if not (has_url or has_data):
        raise RequestError("missing_image", "give 'image_url' or 'image_base64'", "image_url")
    if has_url and has_data:
        raise RequestError(
            "bad_field", "give one of 'image_url' and 'image_base64', not both", "image_base64"
        )
    return request


_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<name>[^`]*)`$")
_MISSING_TYPE = "Object missing required field `type`"
_TAGS: Final = {"point": PointPrompt, "box": BoxPrompt}


def _prompt_tag(path: explain.Path, body: Mapping[str, Any]) -> str | None:
    """The `type` of the prompt a path leads into (`prompts[2].x` -> that prompt's)."""
    if len(path) < 2 or path[0] != "prompts" or not isinstance(path[1], int):
        return None
    entry = explain.value_at(body, path[:2])
    tag = entry.get("type") if isinstance(entry, dict) else None
    return tag if isinstance(tag, str) and tag in _TAGS else None


def _field_error(exc: msgspec.ValidationError, body: Mapping[str, Any]) -> RequestError:
    """msgspec's refusal in the protocol's words (`explain`), the field dotted; a
    misspelt field name gets a hint, a prompt's `type` the two it may be."""
    reason, path = explain.error_path(exc)
    tag = _prompt_tag(path, body)
    where = explain.path_text(path)
    if unknown := _UNKNOWN.match(reason):
        name = unknown["name"]
        struct = _TAGS[tag] if tag else CommonSegmentRequest
        allowed = sorted({*struct.__struct_fields__, *(("type",) if tag else ())})
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        inside = f" in {where}" if where else ""
        message = f"unknown field '{name}'{inside}{hint}; allowed: {', '.join(allowed)}"
        return RequestError("bad_field", message, f"{where}.{name}" if where else name)
    if reason == _MISSING_TYPE or (path[-1:] == ("type",) and tag is None):
        field = f"{where}.type" if reason == _MISSING_TYPE else where
        return RequestError("bad_field", f"'{field}' must be 'point' or 'box'", field)
    if len(path) == 2 and path[0] == "prompts" and tag is None:  # not an object at all
        got = explain.shown(explain.value_at(body, path))
        message = f"'{where}' must be an object whose 'type' is 'point' or 'box', got {got}"
        return RequestError("bad_field", message, where)
    field, message = explain.explain(exc, CommonSegmentRequest, body, quote=True, tag=tag)
    return RequestError("bad_field", message, field or None)


# ---- OpenAPI -----------------------------------------------------------------------------


def inline_schema(struct: Any) -> dict[str, Any]:
    """The JSON Schema of `struct` without references, to sit inside an OpenAPI
    operation as it is."""
    (root,), defs = msgspec.json.schema_components([struct], ref_template="{name}")
    resolved: dict[str, Any] = inline_refs(root, defs)
    return resolved


def request_schema(max_prompts: int) -> dict[str, Any]:
    """The common request's JSON Schema: exactly one image field, this server's limits."""
    schema = inline_schema(CommonSegmentRequest)
    schema["properties"]["prompts"]["maxItems"] = max_prompts
    schema["properties"]["image_base64"].update(
        pattern=BASE64_PATTERN, contentEncoding="base64", contentMediaType="image/*"
    )
    schema["oneOf"] = [{"required": ["image_url"]}, {"required": ["image_base64"]}]
    return schema


def answer_schema() -> dict[str, Any]:
    """Either answer of /v1/segment: the native one, or the common one for a common
    request."""
    return {"anyOf": [inline_schema(SegmentAnswer), inline_schema(CommonSegmentAnswer)]}
