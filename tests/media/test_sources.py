"""PyAV source readers on real files and sockets (RTSP end to end is in tests/e2e)."""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from streamseg.media.frame import Frame
from streamseg.media.sources import (
    SourceError,
    SourceOptions,
    SourcePolicy,
    SourceReader,
    SourceState,
    classify,
    parse_source,
    redact,
    resolve_source,
    transport_in_url,
)
from streamseg.media.synthetic import write_h264
from tests.source_servers import SECRET_TEXT, http_server, huge_png, self_signed


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


def test_a_closed_port_is_probed_not_reopened(tmp_path: Path) -> None:
    """A camera that is gone is probed with a TCP connect at most `probe_interval_s`
    apart, not opened with FFmpeg again and again, and never backs off further."""
    reader = SourceReader(
        "rtsp://127.0.0.1:9/none",
        lambda f: None,
        SourceOptions(open_timeout_s=1, probe_interval_s=0.2),
        policy=_trusting(tmp_path),
    )
    reader.start()
    _wait(lambda: reader.probes >= 1)
    counted = time.time(), reader.probes
    time.sleep(2)
    rate = (reader.probes - counted[1]) / (time.time() - counted[0])
    assert 3 <= rate <= 8  # every 0.2 s +-20 %: not faster, and no growing backoff
    assert reader.reconnects == 1  # the one failed open; probes are not reconnects
    assert reader.state is SourceState.RECONNECTING and reader.last_error
    assert reader.last_error.startswith("refused:")
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


# ---- the source policy on real files and servers (issue 12) ---------------------------


def _run_until_error(reader: SourceReader, timeout: float = 10) -> None:
    reader.start()
    try:
        _wait(lambda: reader.error is not None and reader.state is SourceState.ERROR, timeout)
    finally:
        reader.stop(3)


def test_a_text_file_is_never_served_as_frames(tmp_path: Path) -> None:
    secret = tmp_path / "notes.txt"
    secret.write_text(SECRET_TEXT)
    frames: list[Frame] = []
    reader = SourceReader(str(secret), frames.append, policy=_trusting(tmp_path))
    _run_until_error(reader)
    assert frames == [] and reader.error is not None
    assert reader.error.reason == "unsupported"  # FFmpeg's tty demuxer is not allowed


def test_file_refusals_read_the_same(tmp_path: Path) -> None:
    root = tmp_path / "media"
    root.mkdir()
    _clip(root / "ok.mp4")
    outside = _clip(tmp_path / "outside.mp4")
    (root / "escape.mp4").symlink_to(outside)
    (root / "dir.mp4").mkdir()
    policy = SourcePolicy(media_root=str(root))
    assert resolve_source(parse_source("ok.mp4", policy), policy) == f"file:{root}/ok.mp4"
    answers = set()
    for url in (
        str(outside),  # exists, outside
        str(tmp_path / "missing.mp4"),  # missing, outside
        str(root / "missing.mp4"),  # missing, inside
        "escape.mp4",  # a symlink out of the root
        "../outside.mp4",
        f"file://{outside}",
        "dir.mp4",
        "x" * 300 + ".mp4",  # a name too long for the file system
        "/etc/passwd",
    ):
        with pytest.raises(SourceError) as caught:
            resolve_source(parse_source(url, policy), policy)
        answers.add((caught.value.reason, str(caught.value)))
    assert len(answers) == 1, answers


def test_redirects_are_not_followed(tmp_path: Path) -> None:
    write_h264(str(tmp_path / "live.ts"), 64, 48, 10)
    with (
        http_server(tmp_path) as (target, target_requests),
        http_server(tmp_path, redirect_to=target.replace("127.0.0.1", "localhost") + "/") as (
            base,
            requests,
        ),
    ):
        frames: list[Frame] = []
        reader = SourceReader(f"{base}/redirect/live.ts", frames.append, policy=_trusting(tmp_path))
        _run_until_error(reader)
        assert reader.error is not None and reader.error.reason == "redirect"
        assert frames == [] and target_requests == [] and requests


def test_tls_certificates_are_verified(tmp_path: Path) -> None:
    write_h264(str(tmp_path / "live.ts"), 64, 48, 10)
    cert = self_signed(tmp_path, "camera.example")
    with http_server(tmp_path, cert=cert) as (base, _):
        url = f"{base}/live.ts"
        for policy in (_trusting(tmp_path), replace(_trusting(tmp_path), ca_file=str(cert[0]))):
            frames: list[Frame] = []
            reader = SourceReader(url, frames.append, policy=policy)
            _run_until_error(reader)  # untrusted issuer, then the wrong name
            assert reader.error is not None and reader.error.reason == "tls", reader.error
            assert frames == []
        frames = []
        options = SourceOptions(tls_verify=False, backoff_initial_s=0.05)
        insecure = SourceReader(url, frames.append, options, policy=_trusting(tmp_path))
        insecure.start()
        _wait(lambda: len(frames) >= 3)  # the explicit opt-out
        assert insecure.stop(3)


def test_frame_size_is_checked_before_conversion(tmp_path: Path) -> None:
    wide = huge_png(tmp_path / "wide.png", 200, 40)
    frames: list[Frame] = []
    policy = replace(_trusting(tmp_path), allow_images=True, max_frame_side=64)
    reader = SourceReader(str(wide), frames.append, policy=policy)
    _run_until_error(reader)
    assert frames == [] and reader.error is not None and reader.error.reason == "too_large"
    # Image demuxers are off by default: the same file is no camera at all.
    reader = SourceReader(str(wide), frames.append, policy=_trusting(tmp_path))
    _run_until_error(reader)
    assert reader.error is not None and reader.error.reason == "unsupported"


HUGE_PNG_SCRIPT = """
import resource, sys, time
from streamseg.media.sources import SourceOptions, SourcePolicy, SourceReader, SourceState
frames = []
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
policy = SourcePolicy(media_root=sys.argv[1], allow_images=True)
reader = SourceReader(sys.argv[2], frames.append, SourceOptions(), policy=policy)
reader.start()
end = time.time() + 20
while reader.error is None and reader.state is not SourceState.STOPPED and time.time() < end:
    time.sleep(0.02)
reader.stop(3)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print(len(frames), reader.error.reason if reader.error else None, peak - before)
"""


def test_a_png_declaring_12000_pixels_a_side_allocates_nothing_big(tmp_path: Path) -> None:
    png = huge_png(tmp_path / "bomb.png", 12000, 12000)
    assert png.stat().st_size < 500_000
    out = subprocess.run(
        [sys.executable, "-c", HUGE_PNG_SCRIPT, str(tmp_path), str(png)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    frames, reason, grew_mb = int(out[0]), out[1], int(out[2])
    print(f"\n12000x12000 PNG: peak RSS grew {grew_mb} MB while refusing it ({reason})")
    assert frames == 0 and reason == "too_large"
    assert grew_mb < 50  # 432 MB for the decoded frame alone, as much again as RGB


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_decoder_threads_end_with_the_reader(tmp_path: Path) -> None:
    if not Path("/proc/self/task").exists():
        pytest.skip("needs Linux /proc")
    clip = tmp_path / "a.mp4"
    write_h264(str(clip), 640, 480, 30)
    kept: list[Frame] = []  # the newest frame of each stream, as a stream's `latest` is
    gc.disable()  # what a server would hold until the next full collection
    try:
        baseline = _threads()
        for _ in range(10):
            frames: list[Frame] = []
            options = SourceOptions(loop=True)
            reader = SourceReader(str(clip), frames.append, options, policy=_trusting(tmp_path))
            reader.start()
            _wait(lambda frames=frames: len(frames) >= 3)  # type: ignore[misc]
            assert reader.stop(3)
            kept.append(frames[-1])
        after = _threads()
    finally:
        gc.enable()
    assert after == baseline, (baseline, after)


def test_credentials_never_reach_errors_or_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    cert = self_signed(tmp_path, "camera.example")
    with http_server(tmp_path) as (plain, _), http_server(tmp_path, cert=cert) as (tls, _):
        urls = {
            f"rtsp://admin:hunter2@127.0.0.1:{port}/x": "refused",
            plain.replace("//", "//admin:hunter2@") + "/private/live.ts": "auth_failed",
            plain + "/missing.ts?token=hunter2": "not_found",
            tls.replace("//", "//admin:hunter2@") + "/live.ts": "tls",
        }
        for url, reason in urls.items():
            options = SourceOptions(backoff_initial_s=0.05, open_timeout_s=2)
            reader = SourceReader(url, lambda f: None, options, policy=_trusting(tmp_path))
            reader.start()
            try:
                _wait(lambda reader=reader: reader.error is not None)  # type: ignore[misc]
            finally:
                reader.stop(3)
            assert reader.error is not None and reader.error.reason == reason, (url, reader.error)
            seen = [reader.error.message, reader.last_error or "", reader.public_url]
            assert not any("hunter2" in text for text in seen), seen
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "source " in logged and "hunter2" not in logged
