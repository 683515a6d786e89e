"""PyAV source readers on real files and sockets (RTSP end to end is in tests/e2e)."""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from streamseg.media.frame import Frame
from streamseg.media.sources import (
    SourceError,
    SourceOptions,
    SourcePolicy,
    SourceReader,
    SourceState,
    classify,
    redact,
    transport_in_url,
)
from streamseg.media.synthetic import write_h264


def _clip(path: Path, frames: int = 10) -> Path:
    write_h264(str(path), 64, 48, frames)
    return path


def _trusting(root: Path) -> SourcePolicy:
    """Files under `root` and the loopback test servers allowed, as a test server is."""
    return SourcePolicy(media_root=str(root), allow_loopback=True)


def _wait(predicate: Callable[[], bool], timeout: float = 10) -> None:
    end = time.time() + timeout
    while not predicate():
        assert time.time() < end, "timed out"
        time.sleep(0.02)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts TCP connections and never answers: a frozen camera."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain HTTP server over a folder: a camera that serves MPEG-TS."""
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", tmp_path
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_classify(tmp_path: Path) -> None:
    clip = _clip(tmp_path / "a.mp4")
    policy = SourcePolicy(media_root=str(tmp_path), devices=("/dev/video0",))
    assert classify(str(clip), policy) == "file"
    assert classify(f"file://{clip}", policy) == "file"
    assert classify("rtsp://cam/live") == "rtsp"
    assert classify("rtsps://user:pw@cam:322/live?transport=udp") == "rtsp"
    assert classify("https://cam/stream.m3u8") == "http"
    assert classify("/dev/video0", policy) == "v4l2"
    for bad in ("ftp://x/y", "rtsp:///path", "rtsp://cam:99999/x", "x.mp4", "/dev/video0"):
        with pytest.raises(SourceError):
            classify(bad)
    with pytest.raises(SourceError, match="tcp or udp"):
        classify("rtsp://cam/live?transport=sctp")


def test_transport_and_password_stay_ours() -> None:
    url, transport = transport_in_url("rtsp://cam/live?channel=2&transport=udp&subtype=0")
    assert (url, transport) == ("rtsp://cam/live?channel=2&subtype=0", "udp")
    assert transport_in_url("rtsp://cam/live") == ("rtsp://cam/live", None)
    reader = SourceReader("rtsp://cam/live?transport=udp", lambda f: None)
    assert reader.options.transport == "udp"
    assert redact("rtsp://admin:secret@cam:554/live") == "rtsp://admin:***@cam:554/live"
    assert redact("rtsp://cam/live") == "rtsp://cam/live"
    assert "secret" not in SourceReader("rtsp://admin:secret@cam/x", lambda f: None).public_url


def test_capture_time_from_the_stream_only_when_plausible() -> None:
    reader = SourceReader("rtsp://cam/live", lambda f: None, SourceOptions(max_clock_skew_s=5))
    now = 1_800_000_000.0
    frame = SimpleNamespace(time=2.0)
    assert reader._capture_ts(frame, int((now - 2.1) * 1e6), now) == pytest.approx(now - 0.1)
    assert reader._capture_ts(frame, int((now - 60) * 1e6), now) is None  # skewed clock
    assert reader._capture_ts(frame, None, now) is None
    assert reader._capture_ts(SimpleNamespace(time=None), int(now * 1e6), now) is None


def test_file_plays_paced_then_stops(tmp_path: Path) -> None:
    frames: list[Frame] = []
    decode_times: list[float] = []
    reader = SourceReader(
        str(_clip(tmp_path / "a.mp4")),
        frames.append,
        on_decode=decode_times.append,
        policy=_trusting(tmp_path),
    )
    start = time.time()
    reader.start()
    _wait(lambda: reader.state is SourceState.STOPPED)
    assert len(frames) == 10 and [f.seq for f in frames] == list(range(10))
    assert time.time() - start > 0.25  # 10 frames at 30 fps, not as fast as decoding
    assert all(f.capture_ts_source == "receive" and f.image.shape == (48, 64, 3) for f in frames)
    assert decode_times and reader.last_error is None and (reader.width, reader.height) == (64, 48)


def test_file_loops_until_stopped(tmp_path: Path) -> None:
    frames: list[Frame] = []
    reader = SourceReader(
        str(_clip(tmp_path / "a.mp4")),
        frames.append,
        SourceOptions(loop=True, realtime=False),
        policy=_trusting(tmp_path),
    )
    reader.start()
    _wait(lambda: len(frames) > 35)
    assert reader.reconnects == 0
    assert [f.seq for f in frames[:35]] == list(range(35))  # seq keeps counting over loops
    assert reader.stop()
    assert reader.state is SourceState.STOPPED


def test_unreachable_rtsp_backs_off(tmp_path: Path) -> None:
    reader = SourceReader(
        "rtsp://127.0.0.1:9/none",
        lambda f: None,
        SourceOptions(open_timeout_s=1),
        policy=_trusting(tmp_path),
    )
    reader.start()
    _wait(lambda: reader.reconnects >= 2)
    assert reader.state is SourceState.RECONNECTING and reader.last_error
    assert reader.stop(2)


def test_unusable_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    reader = SourceReader(str(garbage), lambda f: None, policy=_trusting(tmp_path))
    reader.start()
    _wait(lambda: reader.state is SourceState.ERROR)
    assert reader.last_error and reader.last_error.startswith("invalid_data:")
    started = time.time()
    assert reader.stop(2)  # waiting out the long backoff does not delay a stop
    assert time.time() - started < 0.5


def test_frozen_server_times_out_and_stop_is_prompt(silent_server: int) -> None:
    options = SourceOptions(open_timeout_s=1, read_timeout_s=1, backoff_initial_s=0.1)
    url = f"rtsp://127.0.0.1:{silent_server}/live"
    reader = SourceReader(url, lambda f: None, options, policy=_trusting(Path("/nonexistent")))
    reader.start()
    _wait(lambda: reader.reconnects >= 1, timeout=6)
    assert reader.last_error and reader.last_error.startswith("timeout:")
    assert reader.state in (SourceState.RECONNECTING, SourceState.CONNECTING)  # not "error"
    reader.request_stop()
    started = time.time()
    assert reader.join(3)  # at most one open/read timeout
    assert time.time() - started < 2.5
    assert reader.state is SourceState.STOPPED


def test_http_stream_plays_and_reconnects_at_its_end(http_root: tuple[str, Path]) -> None:
    base, root = http_root
    write_h264(str(root / "live.ts"), 64, 48, 10)
    frames: list[Frame] = []
    options = SourceOptions(backoff_initial_s=0.05, backoff_max_s=0.2)
    reader = SourceReader(f"{base}/live.ts", frames.append, options, policy=_trusting(root))
    assert reader.kind == "http"
    reader.start()
    _wait(lambda: len(frames) >= 20)  # the server's end of stream is a disconnect
    assert reader.reconnects >= 1 and [f.seq for f in frames[:20]] == list(range(20))
    assert reader.stop(2)

    missing = SourceReader(f"{base}/nothing.ts", lambda f: None, options, policy=_trusting(root))
    missing.start()
    _wait(lambda: missing.state is SourceState.ERROR)
    assert missing.last_error and missing.last_error.startswith("not_found:")
    assert missing.stop(2)
