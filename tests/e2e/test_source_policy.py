"""Camera sources as an attacker would offer them, against the real server (issue 12,
findings 1, 4, 5, 6): local files, line injection, SSRF, TLS, leaked credentials.
Every source is a real server or file on 127.0.0.1."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from streamseg.media.synthetic import write_h264
from streamseg.server.background import running_server
from streamseg.server.runtime import Runtime
from tests.source_servers import SECRET_TEXT, TcpRecorder, http_server, self_signed

pytestmark = pytest.mark.e2e


def _headers() -> dict[str, str]:
    token = os.environ.get("STREAMSEG_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def default_server() -> Iterator[tuple[str, Runtime]]:
    """The policy as shipped: no files, no devices, no loopback."""
    with running_server() as running:
        yield running


@pytest.fixture(scope="module")
def trusting_server(media_root: Path) -> Iterator[tuple[str, Runtime]]:
    """Loopback cameras and files under `media_root` allowed, as an operator would."""
    with running_server(source_allow_loopback=True, source_media_root=str(media_root)) as running:
        yield running


def _post(base: str, url: str, **options: Any) -> httpx.Response:
    body: dict[str, Any] = {"url": url}
    if options:
        body["options"] = options
    return httpx.post(f"{base}/v1/streams", json=body, headers=_headers(), timeout=30)


def _get(base: str, sid: str) -> dict[str, Any]:
    r = httpx.get(f"{base}/v1/streams/{sid}", headers=_headers(), timeout=30)
    r.raise_for_status()
    info: dict[str, Any] = r.json()
    return info


def _delete(base: str, sid: str) -> None:
    httpx.delete(f"{base}/v1/streams/{sid}", headers=_headers(), timeout=30)


def _until(base: str, sid: str, done: Any, timeout: float = 15) -> dict[str, Any]:
    end = time.time() + timeout
    info = _get(base, sid)
    while not done(info):
        assert time.time() < end, f"timed out: {info}"
        time.sleep(0.05)
        info = _get(base, sid)
    return info


def _source_reason(info: dict[str, Any]) -> str | None:
    error = info["errors"]["source"]
    return None if error is None else str(error["reason"])


def _refusal(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 422, r.text
    detail: dict[str, Any] = r.json()["detail"]
    assert detail["code"] == "bad_url"
    return detail


def test_a_text_file_with_a_secret_is_never_served(
    default_server: tuple[str, Runtime], trusting_server: tuple[str, Runtime], media_root: Path
) -> None:
    secret = media_root / "notes.txt"
    secret.write_text(SECRET_TEXT)
    assert _refusal(_post(default_server[0], str(secret)))["reason"] == "forbidden"

    base = trusting_server[0]
    r = _post(base, str(secret))  # under the media root, so it is tried, as a video
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    try:
        info = _until(base, sid, lambda i: i["state"] == "error")
        assert _source_reason(info) == "unsupported" and info["frames_received"] == 0
        jpeg = httpx.get(f"{base}/v1/streams/{sid}/frame.jpg", headers=_headers())
        assert jpeg.status_code == 409  # nothing to show, ever
    finally:
        _delete(base, sid)


def test_existing_and_missing_files_get_the_same_answer(
    default_server: tuple[str, Runtime],
    trusting_server: tuple[str, Runtime],
    media_root: Path,
    tmp_path: Path,
) -> None:
    existing = tmp_path / "clip.mp4"  # outside the media root
    write_h264(str(existing), 64, 48, 5)
    (media_root / "link.mp4").symlink_to(existing)
    for base in (default_server[0], trusting_server[0]):
        answers = [
            _refusal(_post(base, url))
            for url in (
                str(existing),
                str(tmp_path / "missing.mp4"),
                f"file://{existing}",
                str(media_root / "missing.mp4"),
                "link.mp4",
                "/etc/passwd",
            )
        ]
        assert all(a == answers[0] for a in answers), answers
        assert answers[0]["reason"] == "forbidden"


def test_crlf_in_an_rtsp_url_is_refused(
    trusting_server: tuple[str, Runtime], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    camera = TcpRecorder()
    try:
        url = f"rtsp://127.0.0.1:{camera.port}/x\r\nX-Injected: yes\r\n"
        detail = _refusal(_post(trusting_server[0], url))
        assert detail["reason"] == "bad_url" and "control characters" in detail["message"]
        time.sleep(1.0)
        assert camera.connections == 0 and b"X-Injected" not in camera.received
    finally:
        camera.close()
    for record in caplog.records:
        assert "\n" not in record.getMessage() and "\r" not in record.getMessage()


def test_ssrf_to_denied_addresses_is_refused(default_server: tuple[str, Runtime]) -> None:
    base = default_server[0]
    internal = TcpRecorder()  # a service on the server's own host
    try:
        p = internal.port
        refused = {
            "http://169.254.169.254/latest/meta-data/": "metadata",
            "http://[fe80::1]/": "link-local",
            f"http://127.0.0.1:{p}/": "loopback",
            f"http://localhost:{p}/": "loopback",  # a name that resolves to loopback
            f"rtsp://2130706433:{p}/x": "loopback",  # 127.0.0.1 written as one number
            f"rtsp://[::ffff:127.0.0.1]:{p}/x": "loopback",
            f"http://0.0.0.0:{p}/": "loopback",
        }
        for url, why in refused.items():
            detail = _refusal(_post(base, url))
            assert detail["reason"] == "forbidden" and why in detail["message"], (url, detail)
        time.sleep(0.5)
        assert internal.connections == 0
    finally:
        internal.close()
    # (Private LAN addresses stay allowed by default: tests/media/test_source_policy.py;
    # not tried here, since that would send packets beyond loopback.)


def test_an_https_camera_with_a_certificate_for_another_name_is_refused(
    trusting_server: tuple[str, Runtime], tmp_path: Path
) -> None:
    base = trusting_server[0]
    write_h264(str(tmp_path / "live.ts"), 64, 48, 30)
    cert = self_signed(tmp_path, "camera.example")
    with http_server(tmp_path, cert=cert) as (camera, requests):
        r = _post(base, f"{camera}/live.ts")
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        try:
            info = _until(base, sid, lambda i: i["state"] == "error")
            assert _source_reason(info) == "tls" and info["frames_received"] == 0
            assert info["last_error"].startswith("tls:")
            assert info["options"]["tls_verify"] is True
        finally:
            _delete(base, sid)
        assert requests == []  # no request went over the untrusted connection
        r = _post(base, f"{camera}/live.ts", tls_verify=False)  # the explicit opt-out
        sid = r.json()["id"]
        try:
            _until(base, sid, lambda i: i["frames_received"] > 0)
        finally:
            _delete(base, sid)


def test_credentials_never_in_last_error_or_logs(
    trusting_server: tuple[str, Runtime], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    base = trusting_server[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    r = _post(base, f"rtsp://admin:hunter2@127.0.0.1:{port}/live?token=hunter2")
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    try:
        info = _until(base, sid, lambda i: i["errors"]["source"] is not None)
        assert _source_reason(info) == "refused" and info["last_error"].startswith("refused:")
        listed = httpx.get(f"{base}/v1/streams", headers=_headers()).text
        assert "hunter2" not in r.text + str(info) + listed
        assert info["url"] == f"rtsp://admin:***@127.0.0.1:{port}/live?token=***"
    finally:
        _delete(base, sid)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "refused" in logged and "hunter2" not in logged
