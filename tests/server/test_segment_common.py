"""The common /v1/segment request shape (`image_url` or `image_base64`, typed prompts)
against the real server on 127.0.0.1 (reduced model, random weights), with the image
served by a real HTTP server on loopback."""

from __future__ import annotations

import base64
import io
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import numpy as np
import pytest
from PIL import Image

from streamseg.media.synthetic import scene_frame
from streamseg.model.segmenter import ImagePrompt
from streamseg.protocol.masks import MaskEncoding, decode_mask, mask_bbox
from streamseg.server.background import running_server
from streamseg.server.runtime import Runtime
from tests.auth_helpers import AUTH
from tests.image_server import Seen, image_server
from tests.source_servers import TcpRecorder

IMAGE = scene_frame(3, 96, 128)
MAX_BYTES = 200_000
PROMPTS = [
    {"type": "point", "x": 30, "y": 30, "label": 1},
    {"type": "box", "bbox": [80, 20, 120, 60]},
]


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images() -> Iterator[tuple[str, int, Seen]]:
    with image_server(files={"/scene.png": _png(IMAGE), "/text": b"not an image"}) as found:
        yield found


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Runtime]]:
    """Fetching on, loopback allowed (the image server is on it), 127.0.0.2 denied."""
    with running_server(
        allow_image_urls=True,
        source_allow_loopback=True,
        source_deny_hosts=("127.0.0.2",),
        image_fetch_timeout_s=1.5,
        max_upload_bytes=MAX_BYTES,
        max_frame_side=1024,
        max_prompts_per_request=4,
    ) as found:
        yield found


@pytest.fixture
def http(server: tuple[str, Runtime]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0], headers=AUTH, timeout=60) as client:
        yield client


def _refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    detail: dict[str, Any] = response.json()["detail"]
    assert detail["code"] == code, detail
    return detail


def _expected(runtime: Runtime) -> list[np.ndarray]:
    seg = runtime.segmenter
    assert seg is not None
    prompts = [ImagePrompt(((30.0, 30.0),), (1,)), ImagePrompt(box=(80, 20, 120, 60))]
    masks, _ = seg.segment(seg.encode(IMAGE), prompts)
    return [m.mask for m in masks]


# ---- answered --------------------------------------------------------------------------


def test_image_url_with_point_and_box(
    http: httpx.Client, server: tuple[str, Runtime], images: tuple[str, int, Seen]
) -> None:
    base, _, seen = images
    r = http.post("/v1/segment", json={"image_url": f"{base}/scene.png", "prompts": PROMPTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"masks", "inference_time_ms", "width", "height"}
    assert (body["width"], body["height"]) == (128, 96) and body["inference_time_ms"] > 0
    assert ("/scene.png", f"127.0.0.1:{images[1]}") in seen.requests
    expected = _expected(server[1])
    assert len(body["masks"]) == 2
    for answer, mask in zip(body["masks"], expected, strict=True):
        assert set(answer) == {"mask", "score", "bbox"}
        got = decode_mask(base64.b64decode(answer["mask"]), MaskEncoding.PNG, 96, 128)
        assert got.shape == (96, 128) and np.array_equal(got, mask)
        with Image.open(io.BytesIO(base64.b64decode(answer["mask"]))) as png:
            assert (png.format, png.mode, png.size) == ("PNG", "1", (128, 96))
        bbox = mask_bbox(mask)
        assert answer["bbox"] == (list(bbox) if bbox is not None else None)
        assert isinstance(answer["score"], float)


def test_base64_common_shape_equals_the_native_shape(http: httpx.Client) -> None:
    image = base64.b64encode(_png(IMAGE)).decode()
    common = http.post("/v1/segment", json={"image_base64": image, "prompts": PROMPTS})
    native = http.post(
        "/v1/segment",
        json={
            "image_base64": image,
            "prompts": [{"points": [[30, 30]], "labels": [1]}, {"box": [80, 20, 120, 60]}],
        },
    )
    assert common.status_code == native.status_code == 200, (common.text, native.text)
    assert "cached" in native.json() and "cached" not in common.json()
    for c, n in zip(common.json()["masks"], native.json()["masks"], strict=True):
        assert (c["mask"], c["score"], c["bbox"]) == (n["mask"], n["score"], n["bbox"])
    # Whole-number floats are integers; the label defaults to 1.
    point = {"type": "point", "x": 30.0, "y": 30, "label": 1.0}
    again = http.post("/v1/segment", json={"image_base64": image, "prompts": [point]})
    assert again.json()["masks"][0]["mask"] == common.json()["masks"][0]["mask"]


# ---- the same limits and codes as the native shape ----------------------------------------


@pytest.mark.parametrize(
    ("prompts", "code", "field", "words"),
    [
        (
            [{"type": "point", "x": 1, "y": 2, "labl": 1}],
            "bad_field",
            "prompts[0].labl",
            "did you mean 'label'",
        ),
        ([{"type": "pointt", "x": 1, "y": 2}], "bad_field", "prompts[0].type", "'point' or 'box'"),
        (
            [{"type": "box", "bbox": [50, 5, 10, 60]}],
            "bad_field",
            "prompts[0].bbox",
            "x0 < x1 and y0 < y1",
        ),
        ([{"type": "box", "bbox": [1, 2, 3]}], "bad_field", "prompts[0].bbox", "4 items"),
        (
            [{"type": "point", "x": 1, "y": 2, "label": 2}],
            "bad_field",
            "prompts[0].label",
            "1 (positive) or 0 (negative)",
        ),
        (
            [{"type": "point", "x": 1, "y": 2, "label": True}],
            "bad_field",
            "prompts[0].label",
            "got True",
        ),
        ([{"type": "point", "x": "1", "y": 2}], "bad_field", "prompts[0].x", "number"),
        ([], "missing_prompts", "prompts", "non-empty"),
        ([{"type": "box", "bbox": [1, 1, 5, 5]}] * 5, "too_many_prompts", "prompts", "at most 4"),
    ],
)
def test_prompt_refusals_name_the_field(
    http: httpx.Client,
    images: tuple[str, int, Seen],
    prompts: list[Any],
    code: str,
    field: str,
    words: str,
) -> None:
    """Refused before anything is fetched."""
    before = len(images[2].requests)
    url = f"{images[0]}/scene.png"
    detail = _refused(
        http.post("/v1/segment", json={"image_url": url, "prompts": prompts}), 422, code
    )
    assert len(images[2].requests) == before
    assert detail.get("field") == field and words in detail["message"], detail


def test_request_refusals(http: httpx.Client, images: tuple[str, int, Seen]) -> None:
    image = base64.b64encode(_png(IMAGE)).decode()
    url = f"{images[0]}/scene.png"
    detail = _refused(
        http.post("/v1/segment", json={"imge_url": url, "prompts": PROMPTS}), 422, "bad_field"
    )
    assert "did you mean 'image_url'" in detail["message"]
    detail = _refused(
        http.post("/v1/segment", json={"image_url": url, "prompts": PROMPTS, "mask_format": "rle"}),
        422,
        "bad_field",
    )
    assert "mask_format" in detail["message"]
    _refused(http.post("/v1/segment", json={"prompts": PROMPTS}), 422, "missing_image")
    both = {"image_url": url, "image_base64": image, "prompts": PROMPTS}
    _refused(http.post("/v1/segment", json=both), 422, "bad_field")
    _refused(
        http.post("/v1/segment", json={"image_base64": "!!", "prompts": PROMPTS}), 422, "bad_base64"
    )
    outside = [{"type": "point", "x": 500, "y": 5}]
    detail = _refused(
        http.post("/v1/segment", json={"image_url": url, "prompts": outside}), 422, "out_of_frame"
    )
    assert "128x96" in detail["message"]
    detail = _refused(
        http.post("/v1/segment", json={"image_url": f"{images[0]}/text", "prompts": PROMPTS}),
        415,
        "not_an_image",
    )
    big = np.zeros((1100, 8, 3), np.uint8)
    big_b64 = base64.b64encode(_png(big)).decode()
    _refused(
        http.post("/v1/segment", json={"image_base64": big_b64, "prompts": PROMPTS}),
        413,
        "too_large",
    )


# ---- fetching --------------------------------------------------------------------------


def test_fetch_refusals(http: httpx.Client, images: tuple[str, int, Seen]) -> None:
    base, port, _ = images

    def fetch(url: str, status: int, code: str) -> dict[str, Any]:
        response = http.post("/v1/segment", json={"image_url": url, "prompts": PROMPTS})
        detail = _refused(response, status, code)
        assert detail["field"] == "image_url", detail
        return detail

    with image_server() as (_, other_port, other_seen):
        detail = fetch(
            f"{base}/redirect?http://localhost:{other_port}/img.png", 422, "redirect_refused"
        )
        assert detail["reason"] == "redirect"
        assert other_seen.requests == []
    started = time.monotonic()
    assert str(MAX_BYTES) in fetch(f"{base}/declared-huge", 413, "too_large")["message"]
    fetch(f"{base}/endless", 413, "too_large")
    assert time.monotonic() - started < 10
    started = time.monotonic()
    assert fetch(f"{base}/slow", 422, "timeout")["reason"] == "timeout"
    assert time.monotonic() - started < 5
    assert fetch(f"{base}/status/404", 422, "fetch_failed")["reason"] == "not_found"
    fetch("ftp://127.0.0.1/x.png", 422, "bad_url")
    fetch("http://169.254.169.254/latest/meta-data/", 403, "source_forbidden")
    recorder = TcpRecorder()
    try:
        denied = f"http://127.0.0.2:{recorder.port}/x.png"  # on the deny list
        assert "deny list" in fetch(denied, 403, "source_forbidden")["message"]
        time.sleep(0.3)
        assert recorder.connections == 0
    finally:
        recorder.close()
    assert port > 0


def test_credentials_in_the_url_are_never_shown(
    http: httpx.Client, images: tuple[str, int, Seen], caplog: pytest.LogCaptureFixture
) -> None:
    base = images[0].replace("http://", "http://robot:hunter2@")
    caplog.set_level(logging.INFO, logger="streamseg.server.routes_segment")
    target = "http://cam:s3cret@other.example/x.png"
    response = http.post(
        "/v1/segment", json={"image_url": f"{base}/redirect?{target}", "prompts": PROMPTS}
    )
    _refused(response, 422, "redirect_refused")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "redirect_refused" in logged
    for secret in ("hunter2", "s3cret"):
        assert secret not in response.text and secret not in logged


def test_fetching_is_off_by_default(images: tuple[str, int, Seen]) -> None:
    base, _, seen = images
    before = len(seen.requests)
    with running_server(source_allow_loopback=True) as (url, _):
        response = httpx.post(
            f"{url}/v1/segment",
            json={"image_url": f"{base}/scene.png", "prompts": PROMPTS},
            headers=AUTH,
            timeout=60,
        )
    detail = _refused(response, 403, "fetch_disabled")
    assert "--allow-image-urls" in detail["message"] and "image_base64" in detail["message"]
    assert len(seen.requests) == before


# ---- OpenAPI -----------------------------------------------------------------------------


def test_openapi_has_both_shapes_and_the_answer(
    http: httpx.Client, images: tuple[str, int, Seen]
) -> None:
    schema = http.get("/openapi.json").json()
    op = schema["paths"]["/v1/segment"]["post"]
    body = op["requestBody"]["content"]["application/json"]["schema"]
    native, common = body["oneOf"]
    assert "image_base64" in native["properties"] and "image_url" not in native["properties"]
    assert {"image_url", "image_base64", "prompts"} == set(common["properties"])
    kinds = common["properties"]["prompts"]["items"]["anyOf"]
    assert {k["properties"]["type"]["enum"][0] for k in kinds} == {"point", "box"}
    assert common["properties"]["prompts"]["maxItems"] == 4
    answer = op["responses"]["200"]["content"]["application/json"]["schema"]
    answer_fields = [set(a["properties"]) for a in answer["anyOf"]]
    assert {"masks", "inference_time_ms", "width", "height"} in answer_fields
    mask = answer["anyOf"][1]["properties"]["masks"]["items"]
    assert set(mask["properties"]) == {"mask", "score", "bbox"}
    assert "PNG" in mask["properties"]["mask"]["description"]
    codes = {c for r in op["responses"].values() for c in r.get("x-error-codes", [])}
    assert {
        "fetch_disabled",
        "source_forbidden",
        "redirect_refused",
        "fetch_failed",
        "timeout",
    } <= codes
    # Real answers of both shapes validate against the published answer schema.
    validator = jsonschema.Draft202012Validator(answer)
    png = base64.b64encode(_png(IMAGE)).decode()
    for request in (
        {"image_url": f"{images[0]}/scene.png", "prompts": PROMPTS},
        {"image_base64": png, "prompts": [{"box": [1, 1, 50, 50]}], "mask_format": "rle"},
    ):
        response = http.post("/v1/segment", json=request)
        assert response.status_code == 200, response.text
        validator.validate(response.json())
        jsonschema.Draft202012Validator(body).validate(request)
