"""One error shape on every HTTP route, and an OpenAPI document that says so.

Every refusal is `{"detail": {"code": ..., "message": ...}}`. FastAPI's own answers
(request validation as a list of pydantic errors, `{"detail": "Not Found"}`, a 405
without `Allow`) are turned into that shape here, so a client branches on `code` and
never parses two formats. The same module writes each route's 4xx/5xx answers and the
request bodies of the routes that read their body by hand into the OpenAPI schema
(FastAPI's `responses` and `openapi_extra`), from one table, so client generators and
fuzzers see what the server does."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from streamseg.protocol import error_codes
from streamseg.protocol.client_schema import request_schema
from streamseg.protocol.prompts import PromptLimits
from streamseg.protocol.segment_request import BASE64_PATTERN
from streamseg.protocol.segment_request import request_schema as common_request_schema

# ---- the shape ---------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    """What went wrong: `code` for programs, `message` for people."""

    model_config = ConfigDict(extra="allow")

    code: str = Field(description="machine-readable reason; the codes of each answer are listed")
    message: str = Field(description="what was refused and what is expected instead")
    field: str | None = Field(
        None, description="`bad_field`: the refused field, dotted (`options.interval`)"
    )
    reason: str | None = Field(
        None, description="`bad_url` and image URL fetch codes: the source policy's reason"
    )
    error_id: str | None = Field(
        None, description="`internal`: the id under which the server logged the failure"
    )
    request_id: str | None = Field(
        None, description="`internal`: the same id as `error_id` (its older name, kept for clients)"
    )


class ErrorBody(BaseModel):
    """Every refusal on every route."""

    detail: ErrorDetail


# Codes for HTTPExceptions raised with a plain string (Starlette's 404/405, a library).
STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    421: "bad_host",
    422: "bad_field",
    429: "limit",
    503: "unavailable",
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    detail: dict[str, Any] = {"code": code, "message": message}
    detail.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def read_bounded(request: Request, limit: int) -> bytes:
    """The body, refused with 413 `too_large` past `limit` bytes: a larger declared
    Content-Length before anything is read, a longer stream as soon as it is."""
    message = f"the body is limited to {limit} bytes"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, {"code": "too_large", "message": message})
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, {"code": "too_large", "message": message})
    return bytes(body)


def _whole(value: Any) -> Any:
    """3.0 -> 3 before strict validation (see `JsonInt`)."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_whole)]
"""An integer field of a REST body, as JSON Schema's `integer` means it (the OpenAPI
contract): `3` or `3.0`, never `true`, `"3"` or `3.5` (use with `strict=True`); the
same rule as the protocol's client messages."""


# ---- handlers ------------------------------------------------------------------------------

_BODY_SHAPE_ERRORS = frozenset({"model_type", "model_attributes_type", "dict_type"})


def _field_name(loc: Sequence[Any]) -> str:
    """`("body", "options", "interval")` -> `options.interval`; list indices as `[i]`."""
    out = ""
    for part in loc[1:]:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or str(loc[0])


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validation_detail(errors: Sequence[Any]) -> dict[str, Any]:
    """FastAPI's list of pydantic errors as one `bad_json`/`bad_field` detail: the
    first error, naming the field and what was expected."""
    if not errors:
        return {"code": "bad_field", "message": "the request is not valid"}
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    kind, msg = first.get("type", ""), first.get("msg", "invalid")
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    if loc[:1] == ("body",) and len(loc) == 1:
        if kind == "missing":
            return {"code": "bad_json", "message": "the body is empty; send a JSON object"}
        if kind in _BODY_SHAPE_ERRORS:
            got = type(first.get("input")).__name__
            return {"code": "bad_json", "message": f"the body must be a JSON object, got {got}"}
        return {"code": "bad_json", "message": f"the body is refused: {msg}"}
    if kind == "json_invalid":
        return {"code": "bad_json", "message": f"the body is not valid JSON: {msg}"}
    field = _field_name(loc)
    where = {"query": "query parameter ", "path": "path parameter ", "header": "header "}.get(
        str(loc[0]) if loc else "", ""
    )
    if kind == "missing":
        message = f"{where}'{field}' is required"
    elif kind == "extra_forbidden":
        message = f"unknown field '{field}'"
    else:
        got = f", got {_short(first['input'])}" if "input" in first else ""
        message = f"{where}'{field}': {msg}{got}"
    return {"code": "bad_field", "message": message + more, "field": field}


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": validation_detail(exc.errors())}, status_code=422)


async def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    status = exc.status_code
    if status == 404 and not isinstance(exc.detail, dict):
        # The static files under "/" answer GET on any path: on an API path that takes
        # other methods, the truth is 405, not "no such file".
        allowed = _allowed_methods(request.app, request.url.path)
        if allowed and request.method not in allowed:
            status = 405
    if status == 405:
        allowed = _allowed_methods(request.app, request.url.path)
        if allowed:  # the API's own methods, not those of the static files under "/"
            headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
            headers["Allow"] = ", ".join(allowed)
    detail = exc.detail
    if isinstance(detail, dict) and "code" in detail and "message" in detail:
        body: dict[str, Any] = {"detail": detail}
    else:
        code = STATUS_CODES.get(status, f"http_{status}")
        message = detail if isinstance(detail, str) and detail else f"HTTP {status}"
        if status == 404 and message == "Not Found":
            message = f"nothing at {request.url.path!r}; the API is under /v1 (see /docs)"
        elif status == 405:
            message = f"{request.method} is not allowed here; allowed: {headers.get('Allow', '-')}"
        body = {"detail": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


# ---- OpenAPI -------------------------------------------------------------------------------

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

COMMON: dict[int, tuple[str, ...]] = {
    401: ("unauthorized",),
    403: ("forbidden", "bad_origin"),
    421: ("bad_host",),
    429: ("too_many_connections",),
    500: ("internal",),
}
REST_LIMITS = ("rate_limited", "busy")
NOT_READY = ("not_ready",)
WORKER = ("not_ready", "busy", "shutting_down")
PROMPT_CODES = error_codes.PROMPT_CODES
IMAGE_PROMPT_CODES = (
    "bad_field",
    "missing_prompts",
    "too_many_prompts",
    "too_many_points",
    "empty_prompt",
    "out_of_frame",
)

# Per route, the answers beyond the common ones (auth, Host, internal); body routes
# also get 415 and 422 `bad_json`.
ROUTE_ERRORS: dict[tuple[str, str], dict[int, tuple[str, ...]]] = {
    ("GET", "/healthz"): {},
    ("GET", "/readyz"): {},
    ("GET", "/metrics"): {},
    ("GET", "/v1/info"): {},
    ("POST", "/v1/webrtc/offer"): {
        400: ("bad_offer",),
        422: ("bad_field",),
        429: ("limit",),
        503: NOT_READY,
    },
    ("POST", "/v1/segment"): {
        403: ("fetch_disabled", "source_forbidden"),  # image_url (media/image_fetch.py)
        413: ("too_large",),
        415: ("not_an_image",),
        422: (
            "missing_image",
            "bad_base64",
            "bad_multipart",
            *IMAGE_PROMPT_CODES,
            "bad_url",
            "redirect_refused",
            "fetch_failed",
            "timeout",
        ),
        429: REST_LIMITS,
        503: WORKER,
    },
    ("POST", "/v1/images"): {
        413: ("too_large",),
        415: ("not_an_image",),
        422: ("missing_image", "bad_base64", "bad_multipart", "bad_field"),
        429: REST_LIMITS,
        503: WORKER,
    },
    ("POST", "/v1/images/{image_id}/segment"): {
        404: ("unknown_image",),
        413: ("too_large",),
        422: IMAGE_PROMPT_CODES,
        429: REST_LIMITS,
        503: WORKER,
    },
    ("DELETE", "/v1/images/{image_id}"): {404: ("unknown_image",), 503: NOT_READY},
    ("GET", "/v1/streams"): {},
    ("POST", "/v1/streams"): {
        409: ("stream_exists", "no_streams_file"),
        422: ("bad_field", "bad_url", "id_required", "secret_in_url"),
        429: ("limit",),
        500: ("persist_failed",),
    },
    ("GET", "/v1/streams/{stream_id}"): {404: ("unknown_stream",)},
    ("DELETE", "/v1/streams/{stream_id}"): {
        404: ("unknown_stream",),
        409: ("no_streams_file",),
        422: ("bad_field",),
        500: ("persist_failed",),
    },
    ("POST", "/v1/streams/{stream_id}/prompts"): {
        404: ("unknown_stream", "unknown_track"),
        409: ("no_frame_yet",),
        413: ("too_large",),
        422: PROMPT_CODES,
        503: ("busy", "shutting_down"),
    },
    ("GET", "/v1/streams/{stream_id}/frame.jpg"): {
        404: ("unknown_stream",),
        409: ("no_frame_yet",),
    },
    ("GET", "/v1/protocol/asyncapi.json"): {},
    ("GET", "/v1/protocol/schemas/{name}.json"): {404: ("unknown_schema",)},
}

_DESCRIPTIONS = {
    400: "Bad request",
    401: "No token, or one the server does not know",
    403: "The token lacks a scope, or the Origin is another site's",
    404: "Not found",
    409: "Conflict with the current state",
    413: "The body or the image is too large",
    415: "Unsupported media type, or not a decodable image",
    421: "The Host header names no host this server answers for",
    422: "The request is well-formed HTTP but its content is refused",
    429: "A limit is reached",
    500: "An unexpected failure; its id finds the traceback in the server log",
    503: "Not ready, busy or shutting down; retry later",
}


def _merge(*tables: dict[int, tuple[str, ...]]) -> dict[int, tuple[str, ...]]:
    out: dict[int, tuple[str, ...]] = {}
    for table in tables:
        for status, codes in table.items():
            out[status] = tuple(dict.fromkeys((*out.get(status, ()), *codes)))
    return out


def route_errors(method: str, path: str) -> dict[int, tuple[str, ...]]:
    """Every refusal of one route, by status, with its codes."""
    own = ROUTE_ERRORS.get((method, path), {})
    if path in OPEN_PATHS:
        return _merge(own, {429: COMMON[429], 500: COMMON[500]})
    extra: dict[int, tuple[str, ...]] = {}
    if method in BODY_METHODS:
        extra = {415: ("unsupported_media_type",), 422: ("bad_json",)}
    return _merge(COMMON, extra, own)


def error_responses(method: str, path: str) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` for one route: each status with the error schema and, in
    the description and `x-error-codes`, the codes it can carry."""
    out: dict[int | str, dict[str, Any]] = {}
    for status, codes in sorted(route_errors(method, path).items()):
        listed = ", ".join(f"`{c}`" for c in codes)
        out[status] = {
            "description": f"{_DESCRIPTIONS.get(status, 'Error')}: {listed}",
            "content": {
                "application/json": {
                    "schema": {
                        **ERROR_REF,
                    },
                    "example": {"detail": {"code": codes[0], "message": "..."}},
                }
            },
            "x-error-codes": list(codes),
        }
    return out


# ---- request bodies the routes read by hand ---------------------------------------------

_NUMBER = {"type": "number"}


def _prompt_fields(max_points: int) -> dict[str, Any]:
    """points/labels/box; null means absent, as in every client message."""
    return {
        "points": {
            "type": ["array", "null"],
            "maxItems": max_points,
            "items": {"type": "array", "minItems": 2, "maxItems": 2, "items": _NUMBER},
            "description": "[[x, y], ...] in pixels, inside the image; one label each",
        },
        "labels": {
            "type": ["array", "null"],
            "maxItems": max_points,
            "items": {"enum": [0, 1]},
            "description": "1 positive, 0 negative; exactly one per point",
        },
        "box": {
            "type": ["array", "null"],
            "minItems": 4,
            "maxItems": 4,
            "items": _NUMBER,
            "description": "[x0, y0, x1, y1] in pixels, inside the image, x0 < x1 and y0 < y1",
        },
    }


# Points (with their labels) or a box, or both; not nothing.
_NOT_EMPTY = {
    "dependentRequired": {"points": ["labels"], "labels": ["points"]},
    "anyOf": [
        {"required": ["points"], "properties": {"points": {"type": "array", "minItems": 1}}},
        {"required": ["box"], "properties": {"box": {"type": "array"}}},
    ],
}


def image_prompt_schema(max_points: int) -> dict[str, Any]:
    """One prompt on an image: points with labels and/or a box, inside the image."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": _prompt_fields(max_points),
        **_NOT_EMPTY,
    }


def _prompts(max_prompts: int, max_points: int) -> dict[str, Any]:
    return {
        "type": "array",
        "minItems": 1,
        "maxItems": max_prompts,
        "items": image_prompt_schema(max_points),
    }


_FORMATS = "png: base64 of a 1-bit PNG; rle: COCO RLE"
_MASK_FORMAT = {"enum": ["png", "rle"], "default": "png", "description": _FORMATS}


_NULLABLE_FORMAT = {
    "enum": ["png", "rle", None],
    "default": "png",
    "description": _FORMATS + "; null: png",
}


def _image_body(
    max_prompts: int, max_points: int, with_prompts: bool, max_bytes: int
) -> dict[str, Any]:
    """JSON (`image_base64`) or multipart (`image` file; `prompts` a JSON part)."""
    json_props: dict[str, Any] = {
        "image_base64": {
            "type": "string",
            "pattern": BASE64_PATTERN,
            "contentEncoding": "base64",
            "contentMediaType": "image/*",
            "description": "the image file (PNG, JPEG, ...) in base64",
        }
    }
    form_props: dict[str, Any] = {
        "image": {
            "type": "string",
            "format": "binary",
            "contentMediaType": "image/*",
            "description": "the image file (PNG, JPEG, ...)",
        }
    }
    encoding: dict[str, Any] = {"image": {"contentType": "image/png, image/jpeg"}}
    if with_prompts:
        json_props["prompts"] = form_props["prompts"] = _prompts(max_prompts, max_points)
        json_props["mask_format"] = _NULLABLE_FORMAT
        form_props["mask_format"] = _MASK_FORMAT
        encoding["prompts"] = {"contentType": "application/json"}
    needed = ["prompts"] if with_prompts else []
    json_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["image_base64", *needed],
        "properties": json_props,
    }
    form_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["image", *needed],
        "properties": form_props,
    }
    return {
        "requestBody": {
            "required": True,
            "description": f"At most {max_bytes} bytes; image sides within the server's limit",
            "content": {
                "application/json": {"schema": json_schema},
                "multipart/form-data": {"schema": form_schema, "encoding": encoding},
            },
        }
    }


def _with_common_shape(body: dict[str, Any], max_prompts: int) -> dict[str, Any]:
    """/v1/segment's JSON body: the native shape, or the common one of SAM deployment
    guides (`protocol/segment_request.py`)."""
    media = body["requestBody"]["content"]["application/json"]
    media["schema"] = {"oneOf": [media["schema"], common_request_schema(max_prompts)]}
    return body


def _cached_segment_body(max_prompts: int, max_points: int) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["prompts"],
                        "properties": {
                            "prompts": _prompts(max_prompts, max_points),
                            "mask_format": _NULLABLE_FORMAT,
                        },
                    }
                }
            },
        }
    }


def stream_message_schema(limits: PromptLimits) -> dict[str, Any]:
    """The client messages a stream takes over REST (`prompt`, `remove`, `reset`): the
    websocket's own models (docs/PROTOCOL.md), with this server's limits."""
    return request_schema(limits, ("prompt", "remove", "reset"))


def request_bodies(
    max_prompts: int, max_upload_bytes: int, stream_limits: PromptLimits
) -> dict[tuple[str, str], dict[str, Any]]:
    """`openapi_extra` per route whose body is read by hand (images, multipart)."""
    points = PromptLimits().max_points
    message_bytes = stream_limits.max_message_bytes
    return {
        ("POST", "/v1/segment"): _with_common_shape(
            _image_body(max_prompts, points, True, max_upload_bytes), max_prompts
        ),
        ("POST", "/v1/images"): _image_body(max_prompts, points, False, max_upload_bytes),
        ("POST", "/v1/images/{image_id}/segment"): _cached_segment_body(max_prompts, points),
        ("POST", "/v1/streams/{stream_id}/prompts"): {
            "requestBody": {
                "required": True,
                "description": f"One client message of at most {message_bytes} bytes",
                "content": {"application/json": {"schema": stream_message_schema(stream_limits)}},
            }
        },
    }


# ---- wiring ------------------------------------------------------------------------------


def _documented(schema: dict[str, Any], bodies: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Write every operation's error answers (and hand-read bodies) into the schema
    FastAPI generated. Done on the document rather than on the routes: the routers
    are module objects shared by every app, the bodies' limits are per app."""
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            key = (method.upper(), path)
            responses = op.setdefault("responses", {})
            default_422 = responses.get("422", {}).get("content", {}).get("application/json", {})
            if "HTTPValidationError" in str(default_422.get("schema", "")):
                del responses["422"]
            for status, answer in error_responses(*key).items():
                responses[str(status)] = answer
            if key == ("GET", "/readyz"):
                responses["503"] = _NOT_READY
            media = _MEDIA_ROUTES.get(key)
            if media is not None and "200" in responses:
                responses["200"]["content"] = media
            extra = bodies.get(key)
            if extra is not None:
                op.update(extra)
    _link(schema)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    models = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(models.pop("$defs", {}))
    components["ErrorBody"] = models
    text = str(schema.get("paths"))
    for name in ("HTTPValidationError", "ValidationError"):
        if f"/{name}'" not in text:
            components.pop(name, None)


# What a create returns names the resource the other operations act on (OpenAPI links:
# clients and stateful fuzzers follow them).
_LINKS = {
    ("post", "/v1/images", "201"): ("image_id", "/image_id", "/v1/images/{image_id}"),
    ("post", "/v1/streams", "201"): ("stream_id", "/id", "/v1/streams/{stream_id}"),
}


def _link(schema: dict[str, Any]) -> None:
    paths = schema.get("paths", {})
    for (method, path, status), (param, pointer, prefix) in _LINKS.items():
        answer = paths.get(path, {}).get(method, {}).get("responses", {}).get(status)
        if answer is None:
            continue
        links = answer.setdefault("links", {})
        for target, ops in paths.items():
            if not target.startswith(prefix):
                continue
            for op in ops.values():
                if "operationId" in op:
                    links[op["operationId"]] = {
                        "operationId": op["operationId"],
                        "parameters": {param: f"$response.body#{pointer}"},
                    }


_NOT_READY = {
    "description": "Loading, draining (shutting down) or the inference thread is gone",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["ready", "draining"],
                "properties": {
                    "ready": {"const": False},
                    "draining": {"type": "boolean"},
                    "model": {"type": "string"},
                },
            }
        }
    },
}
_MEDIA_ROUTES: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/metrics"): {"text/plain": {"schema": {"type": "string"}}},
    ("GET", "/v1/streams/{stream_id}/frame.jpg"): {
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}}
    },
}


def _path_pattern(path: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", path)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts) + "$")


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the API documents for this path, for `Allow` on a 405."""
    table: list[tuple[re.Pattern[str], list[str]]] | None = getattr(app.state, "_allow", None)
    if table is None:
        paths = app.openapi().get("paths", {})
        table = [(_path_pattern(p), sorted(m.upper() for m in ops)) for p, ops in paths.items()]
        app.state._allow = table
    return sorted({m for pattern, methods in table if pattern.match(path) for m in methods})


def install(app: FastAPI, bodies: dict[tuple[str, str], dict[str, Any]]) -> None:
    """The error handlers and the OpenAPI error docs."""
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            _documented(schema, bodies)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
