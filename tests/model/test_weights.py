"""Checkpoint download against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from streamseg.model.registry import get_variant
from streamseg.model.weights import (
    ChecksumMismatchError,
    DownloadError,
    WeightsError,
    cache_dir,
    ensure_checkpoint,
    resolve_weights,
)

PAYLOAD = os.urandom(2 * 1024 * 1024 + 123)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        if self.path == "/ok.pt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/dropped.pt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.wfile.flush()
            self.connection.close()
        else:
            self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _variant(sha: str | None = SHA):  # type: ignore[no-untyped-def]
    return replace(get_variant("tiny"), sha256=sha)


def _leftovers(cache: Path) -> list[str]:
    folder = cache / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_hash_downloads_once(server: str, tmp_path: Path) -> None:
    path = ensure_checkpoint(_variant(), cache=tmp_path, url=f"{server}/ok.pt", progress=False)
    assert path.read_bytes() == PAYLOAD
    assert path.with_name(path.name + ".sha256").read_text().strip() == SHA
    again = ensure_checkpoint(_variant(), cache=tmp_path, url=f"{server}/ok.pt", progress=False)
    assert again == path and _Handler.requests == ["/ok.pt"]


def test_bad_hash_leaves_nothing(server: str, tmp_path: Path) -> None:
    with pytest.raises(ChecksumMismatchError, match="expected"):
        ensure_checkpoint(_variant("0" * 64), cache=tmp_path, url=f"{server}/ok.pt", progress=False)
    assert _leftovers(tmp_path) == []


def test_404_is_a_clear_error(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"HTTP 404.*--weights"):
        ensure_checkpoint(_variant(), cache=tmp_path, url=f"{server}/missing.pt", progress=False)
    assert _leftovers(tmp_path) == []


def test_connection_dropped_mid_file(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="--weights random"):
        ensure_checkpoint(_variant(), cache=tmp_path, url=f"{server}/dropped.pt", progress=False)
    assert _leftovers(tmp_path) == []


def test_unreachable_server_gives_offline_advice(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="copy the file to"):
        ensure_checkpoint(_variant(), cache=tmp_path, url="http://127.0.0.1:9/x.pt", progress=False)


def test_unpinned_hash_is_pinned_on_first_download(server: str, tmp_path: Path) -> None:
    path = ensure_checkpoint(_variant(None), cache=tmp_path, url=f"{server}/ok.pt", progress=False)
    assert path.with_name(path.name + ".sha256").read_text().strip() == SHA


def test_corrupt_cached_file_is_refused(server: str, tmp_path: Path) -> None:
    path = ensure_checkpoint(_variant(), cache=tmp_path, url=f"{server}/ok.pt", progress=False)
    path.write_bytes(b"garbage")
    path.with_name(path.name + ".sha256").unlink()
    with pytest.raises(ChecksumMismatchError, match="delete it"):
        ensure_checkpoint(_variant(), cache=tmp_path, url=f"{server}/ok.pt", progress=False)


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STREAMSEG_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("STREAMSEG_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "streamseg"


def test_resolve_weights(tmp_path: Path) -> None:
    tiny = get_variant("tiny")
    assert resolve_weights("random", tiny).kind == "random"
    assert "NOT real" in resolve_weights("random", tiny).label
    assert resolve_weights("official", tiny).path is None
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"x")
    assert resolve_weights(str(ckpt), tiny).path == ckpt
    with pytest.raises(WeightsError, match="neither"):
        resolve_weights(str(tmp_path / "nope.pt"), tiny)
    with pytest.raises(WeightsError, match="random weights only"):
        resolve_weights("official", get_variant("test"))
