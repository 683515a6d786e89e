"""REST segmentation against the real app (reduced model, random weights)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps

from streamseg.config import Settings
from streamseg.media.synthetic import scene_frame
from streamseg.model.segmenter import ImagePrompt
from streamseg.protocol.masks import MaskEncoding, decode_mask, rle_decode
from streamseg.server.app import create_app
from tests.auth_helpers import AUTH, TOKEN

IMAGE = scene_frame(3, 96, 128)


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = Settings(
        model="test",
        weights="random",
        max_upload_bytes=200_000,
        max_frame_side=1024,
        max_prompts_per_request=4,
        token=TOKEN,
    )
    with TestClient(create_app(settings), base_url="http://127.0.0.1", headers=AUTH) as c:
        yield c


def _direct(client: TestClient, prompts: list[ImagePrompt]) -> list[np.ndarray]:
    seg = client.app.state.runtime.segmenter  # type: ignore[attr-defined]
    masks, _ = seg.segment(seg.encode(IMAGE), prompts)
    return [m.mask for m in masks]


def test_multipart_points_and_box_png(client: TestClient) -> None:
    prompts = [{"points": [[30, 30]], "labels": [1]}, {"box": [80, 20, 120, 60]}]
    r = client.post(
        "/v1/segment",
        files={"image": ("x.png", _png(IMAGE), "image/png")},
        data={"prompts": json.dumps(prompts)},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (128, 96) and not body["cached"]
    assert body["inference_time_ms"] >= body["decoder_ms"] > 0 and body["encoder_ms"] > 0
    expected = _direct(
        client, [ImagePrompt(((30.0, 30.0),), (1,)), ImagePrompt(box=(80, 20, 120, 60))]
    )
    for m, exp in zip(body["masks"], expected, strict=True):
        got = decode_mask(base64.b64decode(m["mask"]), MaskEncoding.PNG, 96, 128)
        assert np.array_equal(got, exp)
        assert m["area"] == int(exp.sum())


def test_json_base64_rle_and_cache(client: TestClient) -> None:
    payload = {
        "image_base64": base64.b64encode(_png(IMAGE)).decode(),
        "prompts": [{"points": [[30, 30], [100, 80]], "labels": [1, 0]}],
        "mask_format": "rle",
    }
    direct = client.post("/v1/segment", json=payload).json()
    added = client.post("/v1/images", json={"image_base64": payload["image_base64"]})
    assert added.status_code == 201
    image_id = added.json()["image_id"]
    cached = client.post(
        f"/v1/images/{image_id}/segment",
        json={"prompts": payload["prompts"], "mask_format": "rle"},
    ).json()
    assert cached["cached"] and cached["encoder_ms"] == 0
    assert cached["masks"][0]["mask"] == direct["masks"][0]["mask"]
    assert rle_decode(cached["masks"][0]["mask"]).shape == (96, 128)
    assert client.delete(f"/v1/images/{image_id}").status_code == 204
    assert client.post(f"/v1/images/{image_id}/segment", json=payload).status_code == 404


def test_grayscale_and_rgba_are_accepted(client: TestClient) -> None:
    for mode in ("L", "RGBA"):
        buf = io.BytesIO()
        Image.fromarray(IMAGE).convert(mode).save(buf, format="PNG")
        r = client.post(
            "/v1/segment",
            files={"image": ("x.png", buf.getvalue(), "image/png")},
            data={"prompts": '[{"box": [1, 1, 50, 50]}]'},
        )
        assert r.status_code == 200, r.text


def _phone_jpeg(orientation: int) -> bytes:
    """640x480 stored, with an EXIF orientation, as phone cameras write portrait photos."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(scene_frame(5, 480, 640)).save(buf, format="JPEG", quality=90, exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", [6, 3, 8, 5])
def test_exif_orientation_gives_displayed_coordinates(client: TestClient, orientation: int) -> None:
    jpeg = _phone_jpeg(orientation)
    with Image.open(io.BytesIO(jpeg)) as img:
        assert img.size == (640, 480)
        shown = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    height, width = shown.shape[:2]
    # (400, 600) lies inside the displayed portrait image, outside the stored one.
    x, y = (400, 600) if height == 640 else (600, 400)
    prompts = [{"points": [[x, y]], "labels": [1]}]
    seg = client.app.state.runtime.segmenter  # type: ignore[attr-defined]
    expected, _ = seg.segment(seg.encode(shown), [ImagePrompt(((float(x), float(y)),), (1,))])

    r = client.post(
        "/v1/segment",
        files={"image": ("phone.jpg", jpeg, "image/jpeg")},
        data={"prompts": json.dumps(prompts), "mask_format": "rle"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (width, height)
    mask = rle_decode(body["masks"][0]["mask"])
    assert mask.shape == (height, width)
    assert np.array_equal(mask, expected[0].mask)

    added = client.post("/v1/images", json={"image_base64": base64.b64encode(jpeg).decode()})
    assert added.status_code == 201, added.text
    assert (added.json()["width"], added.json()["height"]) == (width, height)
    cached = client.post(
        f"/v1/images/{added.json()['image_id']}/segment",
        json={"prompts": prompts, "mask_format": "rle"},
    )
    assert cached.status_code == 200, cached.text
    assert np.array_equal(rle_decode(cached.json()["masks"][0]["mask"]), expected[0].mask)


def test_exif_size_is_checked_before_decoding(client: TestClient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (1100, 8)).save(buf, format="JPEG", exif=exif)
    r = client.post(
        "/v1/segment",
        files={"image": ("tall.jpg", buf.getvalue(), "image/jpeg")},
        data={"prompts": '[{"box": [0, 0, 2, 2]}]'},
    )
    assert r.status_code == 413 and r.json()["detail"]["code"] == "too_large"


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        (
            {"files": {"image": ("x.txt", b"hello", "text/plain")}, "data": {"prompts": "[]"}},
            415,
            "not_an_image",
        ),
        ({"json": {"image_base64": "!!!", "prompts": [{"box": [0, 0, 1, 1]}]}}, 422, "bad_base64"),
        ({"content": b"{broken", "headers": {"content-type": "application/json"}}, 422, "bad_json"),
        ({"json": {"prompts": []}}, 422, "missing_image"),
        ({"files": {"image": ("x.png", _png(IMAGE), "image/png")}}, 422, "missing_prompts"),
        (
            {
                "files": {"image": ("x.png", _png(IMAGE), "image/png")},
                "data": {"prompts": json.dumps([{"box": [0, 0, 1, 1]}] * 5)},
            },
            422,
            "too_many_prompts",
        ),
        (
            {
                "files": {"image": ("x.png", _png(IMAGE), "image/png")},
                "data": {"prompts": '[{"points": [[500, 5]], "labels": [1]}]'},
            },
            422,
            "out_of_frame",
        ),
        (
            {
                "files": {"image": ("x.png", _png(IMAGE), "image/png")},
                "data": {"prompts": '[{"box": [5, 5, 1, 1]}]'},
            },
            422,
            "bad_field",
        ),
        (
            {
                "files": {"image": ("x.png", _png(IMAGE), "image/png")},
                "data": {"prompts": '[{"box": [0, 0, 9, 9]}]', "mask_format": "gif"},
            },
            422,
            "bad_field",
        ),
        ({"files": {"image": ("x.bin", b"\0" * 300_000, "image/png")}}, 413, "too_large"),
        (
            {
                "files": {"image": ("x.png", _png(np.zeros((1100, 8, 3), np.uint8)), "image/png")},
                "data": {"prompts": '[{"box": [0, 0, 2, 2]}]'},
            },
            413,
            "too_large",
        ),
    ],
)
def test_bad_requests(client: TestClient, kwargs: dict, status: int, code: str | None) -> None:
    r = client.post("/v1/segment", **kwargs)
    assert r.status_code == status, r.text
    if code is not None:
        assert r.json()["detail"]["code"] == code
    assert client.get("/healthz").status_code == 200


def test_unknown_image_id(client: TestClient) -> None:
    r = client.post("/v1/images/nope/segment", json={"prompts": [{"box": [0, 0, 5, 5]}]})
    assert r.status_code == 404 and r.json()["detail"]["code"] == "unknown_image"


def test_ops_endpoints(client: TestClient) -> None:
    assert client.get("/readyz").json()["ready"] is True
    metrics = client.get("/metrics").text
    assert "streamseg_requests_rejected_total" in metrics
    assert 'streamseg_model_info{backend="torch"' in metrics
    assert client.get("/openapi.json").json()["paths"]["/v1/segment"]
