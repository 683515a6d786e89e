"""The seed's cloud API: segment an image from points and boxes, optionally keeping
its embedding so follow-up prompts skip the image encoder.

/v1/segment also takes the common request shape of SAM deployment guides (`image_url`
or `image_base64`, typed prompts; `protocol/segment_request.py`) and answers it in
the common answer shape; an `image_url` is fetched by `media/image_fetch.py` when the
server allows it. Both shapes share the limits, the prompt validation and the model
path.

Every refusal is `{"detail": {"code": ..., "message": ...}}` with a 4xx status."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
from typing import Any, NoReturn

import msgspec
import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import HTTPException
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from streamseg.media.image_fetch import FetchError, FetchLimits, fetch_image, shown_url
from streamseg.media.source_policy import policy_from_settings
from streamseg.model.errors import InvalidPromptError
from streamseg.model.segmenter import ImageEmbedding, ImagePrompt, SegmentMask
from streamseg.pipeline.worker import RestQueueFullError, WorkerBusyError, WorkerStoppedError
from streamseg.protocol import strictjson
from streamseg.protocol.prompts import AddPrompt, PromptError, PromptLimits, parse_client_message
from streamseg.protocol.segment_request import (
    CommonSegmentAnswer,
    CommonSegmentRequest,
    RequestError,
    SegmentAnswer,
    answer_schema,
    common_mask,
    decode_request,
    inline_schema,
    is_common_request,
    native_mask,
)
from streamseg.server.rest_limits import caller_key, rest_admission
from streamseg.server.runtime import Runtime
from streamseg.server.security import requires

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["segment"])
MASK_FORMATS = ("png", "rle")
IMAGE_PROMPT_FIELDS = {"points", "labels", "box"}  # no frames or tracks on an image
# JSON bodies larger than this (base64 images) are parsed off the event loop.
LOOP_PARSE_BYTES = 256 * 1024
EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the turn that shows the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _refuse(
    runtime: Runtime, status: int, code: str, message: str, **extra: str | None
) -> NoReturn:
    runtime.metrics.requests_rejected.labels(code).inc()
    detail = {"code": code, "message": message}
    detail.update({k: v for k, v in extra.items() if v is not None})
    raise HTTPException(status, detail)


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    if not runtime.ready or runtime.segmenter is None:
        _refuse(runtime, 503, "not_ready", "the model is still loading; retry when /readyz is 200")
    return runtime


async def _read_body(request: Request, runtime: Runtime) -> bytes:
    """Read at most `max_upload_bytes`, refusing early on a larger Content-Length."""
    limit = runtime.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        _refuse(runtime, 413, "too_large", f"uploads are limited to {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            _refuse(runtime, 413, "too_large", f"uploads are limited to {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # lets Starlette's form parser reuse the bounded body
    return body


def _decode_image(data: bytes, max_side: int) -> np.ndarray:
    """Pixels as displayed: the size is checked on the header before any decoding, then
    the EXIF orientation is applied (phones store portrait photos sideways), so prompt
    coordinates mean what the user saw."""
    with Image.open(io.BytesIO(data)) as img:
        if max(img.size) > max_side:
            raise ValueError(f"image is {img.size[0]}x{img.size[1]}; the limit is {max_side} px")
        return np.asarray(_upright(img).convert("RGB"))


def _upright(img: Image.Image) -> Image.Image:
    """The image turned by its EXIF orientation. Only the pixels are turned (the EXIF
    block is not rewritten, nothing reads it later); unreadable EXIF is ignored, as
    browsers ignore it."""
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION)
    except Exception:
        return img
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return img if method is None else img.transpose(method)


async def _json(runtime: Runtime, raw: str | bytes, what: str) -> Any:
    """Client JSON through the one strict parser (422 `bad_json`)."""
    try:
        if len(raw) > LOOP_PARSE_BYTES:
            return await asyncio.to_thread(strictjson.loads, raw)
        return strictjson.loads(raw)
    except strictjson.JSONRefused as exc:
        _refuse(runtime, 422, "bad_json", f"{what} is refused: {exc}")


async def _body_fields(request: Request, runtime: Runtime) -> tuple[bool, Any]:
    """(multipart?, the parsed JSON body): the body is read once, bounded; a multipart
    body is parsed by `_inputs` from the bytes kept on the request."""
    body = await _read_body(request, runtime)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return True, None
    return False, await _json(runtime, body, "the body")


async def _inputs(
    request: Request, runtime: Runtime, need_prompts: bool, multipart: bool, fields: Any
) -> tuple[np.ndarray, list[ImagePrompt], str]:
    allowed = {"image", "prompts", "mask_format"} if need_prompts else {"image"}
    if multipart:
        try:
            form = await request.form()
        except StarletteHTTPException as exc:  # its 400 "Invalid multipart data."
            _refuse(runtime, 422, "bad_multipart", f"the multipart body is refused: {exc.detail}")
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            _refuse(runtime, 422, "missing_image", "multipart field 'image' (a file) is required")
        raw_image = await upload.read()
        _only(runtime, form.keys(), allowed, "multipart field")
        fields = {k: form.get(k) for k in ("prompts", "mask_format")}
        if isinstance(fields["prompts"], UploadFile):  # a JSON part sent with a file name
            fields["prompts"] = (await fields["prompts"].read()).decode("utf-8", "replace")
        if isinstance(fields["prompts"], str):
            fields["prompts"] = await _json(runtime, fields["prompts"], "'prompts'")
    else:
        if not isinstance(fields, dict) or not isinstance(fields.get("image_base64"), str):
            _refuse(runtime, 422, "missing_image", "JSON body needs 'image_base64'")
        _only(runtime, fields, {"image_base64", *allowed} - {"image"}, "field")
        raw_image = _base64(runtime, fields["image_base64"])
    image = await _decoded(runtime, raw_image, "the upload")
    prompts = _prompts(runtime, fields.get("prompts"), need_prompts)
    return image, prompts, _mask_format(runtime, fields.get("mask_format"))


def _base64(runtime: Runtime, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        _refuse(runtime, 422, "bad_base64", "'image_base64' is not valid base64")


async def _decoded(runtime: Runtime, raw_image: bytes, what: str) -> np.ndarray:
    """The image's pixels off the loop: 413 beyond the size limit, 415 if not an image."""
    try:
        return await asyncio.to_thread(_decode_image, raw_image, runtime.settings.max_frame_side)
    except ValueError as exc:
        _refuse(runtime, 413, "too_large", str(exc))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        _refuse(runtime, 415, "not_an_image", f"{what} is not a decodable image")


def _only(runtime: Runtime, names: Any, allowed: set[str], what: str) -> None:
    """Unknown fields are refused, as in every client message: a misspelt
    `mask_fromat` must not silently mean the default."""
    unknown = sorted(str(n) for n in names if n not in allowed)
    if unknown:
        known = ", ".join(sorted(allowed))
        _refuse(runtime, 422, "bad_field", f"unknown {what} {unknown[0]!r}; allowed: {known}")


def _mask_format(runtime: Runtime, value: Any) -> str:
    value = "png" if value is None else value
    if not isinstance(value, str) or value not in MASK_FORMATS:
        _refuse(runtime, 422, "bad_field", f"'mask_format' must be one of {MASK_FORMATS}")
    return str(value)


def _prompts(runtime: Runtime, raw: Any, required: bool) -> list[ImagePrompt]:
    if raw is None and not required:
        return []
    limit = runtime.settings.max_prompts_per_request
    if not isinstance(raw, list) or not raw:
        _refuse(runtime, 422, "missing_prompts", "'prompts' must be a non-empty list")
    if len(raw) > limit:
        _refuse(runtime, 422, "too_many_prompts", f"at most {limit} prompts per request")
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            _refuse(runtime, 422, "bad_field", f"prompts[{i}] must be an object")
        _only(runtime, entry, IMAGE_PROMPT_FIELDS, f"field in prompts[{i}]:")
        try:
            parsed = parse_client_message({**entry, "type": "prompt"}, PromptLimits())
        except PromptError as exc:
            _refuse(runtime, 422, exc.code, f"prompts[{i}]: {exc}")
        assert isinstance(parsed, AddPrompt)
        out.append(ImagePrompt(parsed.points, parsed.labels, parsed.box))
    return out


async def _on_worker(runtime: Runtime, fn: Any) -> Any:
    assert runtime.worker is not None
    try:
        return await runtime.worker.submit_rest(fn)
    except RestQueueFullError as exc:  # bounded REST queue, policy `reject`
        runtime.metrics.requests_rejected.labels("rest_queue").inc()
        raise HTTPException(
            429, {"code": "busy", "message": str(exc)}, headers={"Retry-After": "1"}
        ) from None
    except WorkerBusyError as exc:
        runtime.metrics.requests_rejected.labels("busy").inc()
        raise HTTPException(
            503, {"code": "busy", "message": str(exc)}, headers={"Retry-After": "1"}
        ) from None
    except WorkerStoppedError as exc:
        _refuse(runtime, 503, "shutting_down", str(exc))
    except InvalidPromptError as exc:
        _refuse(runtime, 422, exc.code, str(exc))  # out_of_frame, too_many_points, ...


def _native_answer(
    embedding: ImageEmbedding, masks: list[SegmentMask], decoder_s: float, fmt: str, cached: bool
) -> Response:
    """Run off the event loop: each PNG mask takes ms to encode (15 ms at 4K, up to
    `max_prompts_per_request` of them)."""
    encoder_ms = 0.0 if cached else embedding.encoder_s * 1000
    answer = SegmentAnswer(
        width=embedding.width,
        height=embedding.height,
        masks=[native_mask(m.mask, fmt, m.score, m.object_score, m.bbox, m.area) for m in masks],
        cached=cached,
        encoder_ms=encoder_ms,
        decoder_ms=decoder_s * 1000,
        inference_time_ms=encoder_ms + decoder_s * 1000,
    )
    return _json_response(answer)


def _json_response(answer: msgspec.Struct) -> Response:
    return Response(msgspec.json.encode(answer), media_type="application/json")


def _answers(schema: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {"application/json": {"schema": schema}}}}


async def _encode_and_segment(
    runtime: Runtime, image: np.ndarray, prompts: list[ImagePrompt]
) -> tuple[ImageEmbedding, list[SegmentMask], float]:
    seg = runtime.segmenter
    assert seg is not None

    def run() -> tuple[ImageEmbedding, list[SegmentMask], float]:
        embedding = seg.encode(image)
        masks, decoder_s = seg.segment(embedding, prompts)
        return embedding, masks, decoder_s

    result: tuple[ImageEmbedding, list[SegmentMask], float] = await _on_worker(runtime, run)
    return result


@router.post(
    "/segment",
    dependencies=[requires("control", uploads=True), rest_admission()],
    responses=_answers(answer_schema()),
)
async def segment(request: Request) -> Response:
    """Image (multipart `image` or JSON `image_base64`) + `prompts` -> one mask each.

    Or the common request shape: `image_url` (fetched when the server allows it) or
    `image_base64`, and typed prompts (`{"type": "point", "x", "y", "label"}`,
    `{"type": "box", "bbox"}`); answered as `{"masks": [{"mask", "score", "bbox"}],
    "inference_time_ms", "width", "height"}`, each `mask` a base64 1-bit PNG."""
    runtime = _runtime(request)
    multipart, fields = await _body_fields(request, runtime)
    if not multipart and isinstance(fields, dict) and is_common_request(fields):
        return await _segment_common(runtime, fields)
    image, prompts, fmt = await _inputs(request, runtime, True, multipart, fields)
    embedding, masks, decoder_s = await _encode_and_segment(runtime, image, prompts)
    return await asyncio.to_thread(_native_answer, embedding, masks, decoder_s, fmt, False)


async def _segment_common(runtime: Runtime, fields: dict[str, Any]) -> Response:
    try:
        request = decode_request(fields, runtime.settings.max_prompts_per_request)
        add_prompts = request.add_prompts()
    except RequestError as exc:
        _refuse(runtime, 422, exc.code, str(exc), field=exc.field)
    raw_image = await _common_image(runtime, request)
    image = await _decoded(runtime, raw_image, "the image")
    prompts = [ImagePrompt(p.points, p.labels, p.box) for p in add_prompts]
    embedding, masks, decoder_s = await _encode_and_segment(runtime, image, prompts)
    return await asyncio.to_thread(_common_answer, embedding, masks, decoder_s)


def _common_answer(
    embedding: ImageEmbedding, masks: list[SegmentMask], decoder_s: float
) -> Response:
    """Off the event loop, like `_native_answer`."""
    answer = CommonSegmentAnswer(
        masks=[common_mask(m.mask, m.score, m.bbox) for m in masks],
        inference_time_ms=embedding.encoder_s * 1000 + decoder_s * 1000,
        width=embedding.width,
        height=embedding.height,
    )
    return _json_response(answer)


async def _common_image(runtime: Runtime, request: CommonSegmentRequest) -> bytes:
    """The image's bytes: decoded from base64, or fetched from `image_url`."""
    if isinstance(request.image_base64, str):
        return _base64(runtime, request.image_base64)
    url = str(request.image_url)
    settings = runtime.settings
    if not settings.allow_image_urls:
        _refuse(
            runtime,
            403,
            "fetch_disabled",
            "this server does not fetch image URLs: send the image as 'image_base64', or "
            "start the server with --allow-image-urls (STREAMSEG_ALLOW_IMAGE_URLS=1)",
            field="image_url",
        )
    limits = FetchLimits(settings.max_upload_bytes, settings.image_fetch_timeout_s)
    try:
        return await fetch_image(url, policy_from_settings(settings), limits)
    except FetchError as exc:
        log.info("image_url %s not fetched: %s (%s)", shown_url(url), exc.code, exc.reason.value)
        _refuse(runtime, exc.status, exc.code, str(exc), field="image_url", reason=exc.reason.value)


@router.post(
    "/images", status_code=201, dependencies=[requires("control", uploads=True), rest_admission()]
)
async def add_image(request: Request) -> dict[str, Any]:
    """Encode an image once; segment it later with /v1/images/{image_id}/segment."""
    runtime = _runtime(request)
    multipart, fields = await _body_fields(request, runtime)
    image, _, _ = await _inputs(request, runtime, False, multipart, fields)
    seg, cache = runtime.segmenter, runtime.embeddings
    assert seg is not None and cache is not None
    embedding: ImageEmbedding = await _on_worker(runtime, lambda: seg.encode(image))
    image_id = cache.put(embedding, caller_key(request))
    return {
        "image_id": image_id,
        "width": embedding.width,
        "height": embedding.height,
        "expires_in_s": runtime.settings.image_cache_ttl_s,
        "encoder_ms": embedding.encoder_s * 1000,
    }


@router.post(
    "/images/{image_id}/segment",
    dependencies=[requires("control"), rest_admission()],
    responses=_answers(inline_schema(SegmentAnswer)),
)
async def segment_cached(image_id: str, request: Request) -> Response:
    runtime = _runtime(request)
    cache, seg = runtime.embeddings, runtime.segmenter
    assert cache is not None and seg is not None
    embedding = cache.get(image_id, caller_key(request))
    if embedding is None:
        _refuse(runtime, 404, "unknown_image", f"no image {image_id!r} (unknown or expired)")
    body = await _read_body(request, runtime)
    fields = await _json(runtime, body, "the body")
    if not isinstance(fields, dict):
        _refuse(runtime, 422, "bad_json", "body must be a JSON object")
    _only(runtime, fields, {"prompts", "mask_format"}, "field")
    prompts = _prompts(runtime, fields.get("prompts"), required=True)
    fmt = _mask_format(runtime, fields.get("mask_format"))
    masks, decoder_s = await _on_worker(runtime, lambda: seg.segment(embedding, prompts))
    return await asyncio.to_thread(_native_answer, embedding, masks, decoder_s, fmt, True)


@router.delete("/images/{image_id}", status_code=204, dependencies=[requires("control")])
async def delete_image(image_id: str, request: Request) -> Response:
    runtime = _runtime(request)
    assert runtime.embeddings is not None
    if not runtime.embeddings.delete(image_id, caller_key(request)):
        _refuse(runtime, 404, "unknown_image", f"no image {image_id!r}")
    return Response(status_code=204)
