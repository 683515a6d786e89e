"""The API contract is what the server does (issue 12, finding 9): one error shape on
every route, the documented statuses and codes, OpenAPI that lists every answer and
describes every body, and schemathesis running that schema against the real server
on loopback with all its checks."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from websockets.sync.client import connect as ws_connect

from streamseg.media.synthetic import scene_frame, write_h264
from streamseg.protocol.prompts import PromptLimits
from streamseg.server.background import running_server
from streamseg.server.runtime import Runtime
from tests.auth_helpers import AUTH, TOKEN

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
EXAMPLES_PER_OPERATION = 40


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Runtime, Path]]:
    root = tmp_path_factory.mktemp("media")
    clip = root / "clip.mp4"
    write_h264(str(clip), 128, 96, 60)
    with running_server(source_media_root=str(root), max_streams=6) as (url, runtime):
        yield url, runtime, clip


@pytest.fixture
def http(server: tuple[str, Runtime, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0], headers=AUTH, timeout=30) as client:
        yield client


def _detail(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], dict), body
    detail: dict[str, Any] = body["detail"]
    assert detail["code"] == code and isinstance(detail["message"], str), detail
    return detail


def _png() -> str:
    buf = io.BytesIO()
    Image.fromarray(scene_frame(1, 48, 64)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _stream_with_frames(http: httpx.Client, clip: Path) -> tuple[str, int]:
    """A looping file stream and the seq of a frame it has processed."""
    created = http.post("/v1/streams", json={"url": str(clip), "options": {"loop": True}})
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    deadline = time.time() + 60
    while time.time() < deadline:
        frame = http.get(f"/v1/streams/{sid}/frame.jpg")
        if frame.status_code == 200:
            return sid, int(frame.headers["x-frame-seq"])
        time.sleep(0.1)
    raise AssertionError("the stream processed no frame")


# ---- one shape -------------------------------------------------------------------------


def test_validation_errors_are_one_detail_naming_the_field(http: httpx.Client) -> None:
    """FastAPI's default is a list of pydantic errors; each is one `bad_field` here."""
    detail = _detail(http.post("/v1/streams", json={"url": 5}), 422, "bad_field")
    assert detail["field"] == "url" and "string" in detail["message"]
    body = {"url": "/x.mp4", "options": {"interval": 99}}
    detail = _detail(http.post("/v1/streams", json=body), 422, "bad_field")
    assert detail["field"] == "options.interval" and "30" in detail["message"]
    detail = _detail(http.post("/v1/streams", json={"url": "/x", "colour": 1}), 422, "bad_field")
    assert "colour" in detail["message"]
    detail = _detail(http.post("/v1/webrtc/offer", json={"sdp": "v=0"}), 422, "bad_field")
    assert detail["field"] == "type" and "required" in detail["message"]
    for raw in (b"[1, 2]", b"", b'"text"'):
        response = http.post(
            "/v1/streams", content=raw, headers={"content-type": "application/json"}
        )
        assert "object" in _detail(response, 422, "bad_json")["message"] or not raw
    response = http.post(
        "/v1/webrtc/offer", content=b"{", headers={"content-type": "application/json"}
    )
    _detail(response, 422, "bad_json")


def test_plain_http_errors_get_the_shape_and_405_names_the_methods(http: httpx.Client) -> None:
    _detail(http.get("/v1/nothing-here"), 404, "not_found")
    response = http.put("/v1/streams", json={})
    _detail(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, POST"
    # The static files under "/" used to answer GET on a POST-only API path with 404.
    response = http.get("/v1/segment")
    _detail(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


def test_offer_refusals_carry_codes(http: httpx.Client) -> None:
    """They were plain strings (`{"detail": "the offer has no video track ..."}`)."""
    detail = _detail(
        http.post("/v1/webrtc/offer", json={"sdp": "", "type": "offer"}), 400, "bad_offer"
    )
    assert "video" in detail["message"]


# ---- documented vs actual ------------------------------------------------------------------


def test_oversize_prompt_body_is_413_too_large(
    http: httpx.Client, server: tuple[str, Runtime, Path]
) -> None:
    sid, _ = _stream_with_frames(http, server[2])
    try:
        limit = PromptLimits().max_message_bytes
        big = '{"type": "reset", "request_id": "' + "r" * limit + '"}'
        response = http.post(
            f"/v1/streams/{sid}/prompts", content=big, headers={"content-type": "application/json"}
        )
        assert str(limit) in _detail(response, 413, "too_large")["message"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: refused while it streams
            yield big.encode()

        response = http.post(
            f"/v1/streams/{sid}/prompts",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        _detail(response, 413, "too_large")
    finally:
        http.delete(f"/v1/streams/{sid}")


def test_future_frame_seq_is_refused_not_acked(
    http: httpx.Client, server: tuple[str, Runtime, Path]
) -> None:
    """A frame_seq of 10^9 was applied on the newest frame and acked as if meant."""
    sid, seq = _stream_with_frames(http, server[2])
    try:
        prompt = {"type": "prompt", "box": [10, 10, 60, 50]}
        detail = _detail(
            http.post(f"/v1/streams/{sid}/prompts", json={**prompt, "frame_seq": 10**9}),
            422,
            "future_frame",
        )
        assert "1000000000" in detail["message"]
        ok = http.post(f"/v1/streams/{sid}/prompts", json={**prompt, "frame_seq": seq})
        assert ok.status_code == 200, ok.text
        assert ok.json()["requested_seq"] == seq
    finally:
        http.delete(f"/v1/streams/{sid}")


def test_out_of_frame_is_its_own_code_and_a_box_corner_is_no_point(http: httpx.Client) -> None:
    image = _png()  # 64x48
    body = {"image_base64": image, "prompts": [{"box": [10, 10, 90, 40]}]}
    detail = _detail(http.post("/v1/segment", json=body), 422, "out_of_frame")
    assert "box corner (90, 40)" in detail["message"] and "point" not in detail["message"]
    body = {"image_base64": image, "prompts": [{"points": [[5, 5], [70, 5]], "labels": [1, 1]}]}
    detail = _detail(http.post("/v1/segment", json=body), 422, "out_of_frame")
    assert "points[1] (70, 5)" in detail["message"]


def test_unknown_fields_in_image_bodies_are_refused(http: httpx.Client) -> None:
    """They were ignored: a misspelt `mask_fromat` silently meant png."""
    image = _png()
    prompts = [{"box": [1, 1, 20, 20]}]
    body = {"image_base64": image, "prompts": prompts, "mask_fromat": "rle"}
    assert (
        "mask_fromat" in _detail(http.post("/v1/segment", json=body), 422, "bad_field")["message"]
    )
    body = {"image_base64": image, "prompts": [{"box": [1, 1, 20, 20], "frame_seq": 3}]}
    assert "frame_seq" in _detail(http.post("/v1/segment", json=body), 422, "bad_field")["message"]
    body = {"image_base64": image, "prompts": prompts, "mask_format": False}
    _detail(http.post("/v1/segment", json=body), 422, "bad_field")
    ok = http.post(
        "/v1/segment", json={"image_base64": image, "prompts": prompts, "mask_format": None}
    )
    assert ok.status_code == 200 and ok.json()["masks"][0]["format"] == "png", ok.text
    _detail(
        http.post("/v1/images", json={"image_base64": image, "prompts": prompts}), 422, "bad_field"
    )


def test_whole_number_integers_are_integers(
    http: httpx.Client, server: tuple[str, Runtime, Path]
) -> None:
    """JSON Schema's `integer` (the OpenAPI contract) admits 2.0: so does the server."""
    created = http.post("/v1/streams", json={"url": str(server[2]), "options": {"interval": 2.0}})
    assert created.status_code == 201, created.text
    http.delete(f"/v1/streams/{created.json()['id']}")
    assert created.json()["interval"] == 2
    body = {"url": str(server[2]), "options": {"interval": 2.5}}
    assert (
        _detail(http.post("/v1/streams", json=body), 422, "bad_field")["field"]
        == "options.interval"
    )


def test_info_lists_the_prompt_and_upload_limits(
    http: httpx.Client, server: tuple[str, Runtime, Path]
) -> None:
    limits = http.get("/v1/info").json()["limits"]
    settings = server[1].settings
    assert limits["max_upload_bytes"] == settings.max_upload_bytes
    assert limits["max_prompts_per_request"] == settings.max_prompts_per_request
    assert limits["max_points_per_image_prompt"] == PromptLimits().max_points
    assert limits["max_points_per_frame"] == 64
    prompt = limits["prompt"]
    assert prompt["max_message_bytes"] == PromptLimits().max_message_bytes
    assert {"max_points", "max_track_id", "max_request_id_chars"} <= set(prompt)


# ---- OpenAPI ---------------------------------------------------------------------------


def test_openapi_lists_every_refusal_with_the_error_schema(http: httpx.Client) -> None:
    schema = http.get("/openapi.json").json()
    assert "ErrorBody" in schema["components"]["schemas"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for path, item in schema["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            where = f"{method.upper()} {path}"
            assert "500" in responses, where
            if path not in ("/healthz", "/readyz"):
                assert {"401", "403", "421"} <= set(responses), where
            if method == "post":
                assert {"415", "422"} <= set(responses), where
                assert "requestBody" in op, where
            if "{" in path:
                assert "404" in responses, where
            for status, answer in responses.items():
                if status.startswith(("4", "5")) and not (path == "/readyz" and status == "503"):
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody") and answer["x-error-codes"], where
    for path in ("/v1/segment", "/v1/images"):
        content = schema["paths"][path]["post"]["requestBody"]["content"]
        assert {"application/json", "multipart/form-data"} <= set(content)
        assert content["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"
    segment = schema["paths"]["/v1/segment"]["post"]["responses"]
    assert {"413", "415", "503"} <= set(segment)
    assert "out_of_frame" in segment["422"]["x-error-codes"]
    prompts = schema["paths"]["/v1/streams/{stream_id}/prompts"]["post"]["responses"]
    assert "too_large" in prompts["413"]["x-error-codes"]
    assert "future_frame" in prompts["422"]["x-error-codes"]


# ---- schemathesis ------------------------------------------------------------------------


def test_schemathesis_finds_nothing(server: tuple[str, Runtime, Path], tmp_path: Path) -> None:
    """Every operation, every phase (examples, coverage, fuzzing, stateful), every
    check, with a bounded number of examples: zero failures."""
    url = server[0]
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "--no-color",
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        "12",
        "--workers",
        "1",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--request-timeout",
        "30",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    run = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420, check=False
    )
    took = time.monotonic() - started
    out = run.stdout + run.stderr
    summary = out[out.rfind("SUMMARY") :] if "SUMMARY" in out else out[-3000:]
    print(f"\nschemathesis: {took:.0f} s\n{summary}")
    assert run.returncode == 0, out[-20000:]


def test_malformed_multipart_is_422_bad_multipart(http: httpx.Client) -> None:
    """Found by schemathesis: Starlette's form parser answered 400 "Invalid multipart
    data.", a status the routes did not document, without a code."""
    boundary = "0d37f771f3609e9baf6be26654101f5f"
    body = f"--{boundary}\r\nTrue--{boundary}--\r\n".encode()
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    for path in ("/v1/images", "/v1/segment"):
        _detail(http.post(path, content=body, headers=headers), 422, "bad_multipart")


def test_a_message_is_refused_alike_on_rest_and_the_websocket(
    http: httpx.Client, server: tuple[str, Runtime, Path]
) -> None:
    """One model decodes a client message on every surface: the same code, field and
    words whichever way it came."""
    sid, _ = _stream_with_frames(http, server[2])
    ws_url = server[0].replace("http", "ws", 1) + f"/v1/streams/{sid}/masks"
    refused = [
        ({"type": "prompt", "points": [[1, "x"]], "labels": [1]}, "bad_field", "points[0][1]"),
        ({"type": "prompt", "points": [[1, 1]], "lables": [1]}, "bad_field", "lables"),
        ({"type": "remove"}, "bad_field", "track_id"),
        ({"type": "prompt", "box": [0, 0, 1, 1], "track_id": 1.5}, "bad_field", "track_id"),
        ({"type": "prompt"}, "empty_prompt", None),
        ({"type": "zoom"}, "unknown_type", None),
    ]
    try:
        with ws_connect(ws_url, additional_headers=AUTH) as ws:
            ws.recv()  # hello
            for body, code, field in refused:
                detail = _detail(http.post(f"/v1/streams/{sid}/prompts", json=body), 422, code)
                ws.send(json.dumps(body))
                while not isinstance(reply := ws.recv(timeout=10), str):
                    pass  # frame messages
                error = json.loads(reply)
                assert error["type"] == "error", error
                assert detail.get("field") == error.get("field") == field, (detail, error)
                assert error["code"] == code
                if code != "unknown_type":  # the feed also lists its own `next`
                    assert detail["message"] == error["message"]
    finally:
        http.delete(f"/v1/streams/{sid}")
