from __future__ import annotations

import time
from pathlib import Path

import pytest

from streamseg.media.frame import Frame
from streamseg.media.sources import SourceError, SourceOptions, SourceReader, SourceState, classify
from streamseg.media.synthetic import write_h264


def _clip(path: Path, frames: int = 10) -> Path:
    write_h264(str(path), 64, 48, frames)
    return path


def test_classify(tmp_path: Path) -> None:
    clip = _clip(tmp_path / "a.mp4")
    assert classify(str(clip)) == "file"
    assert classify(f"file://{clip}") == "file"
    assert classify("rtsp://cam/live") == "rtsp"
    assert classify("https://cam/stream.m3u8") == "http"
    assert classify("/dev/video0") == "v4l2"
    for bad in ("ftp://x/y", "/no/such.mp4", "rtsp:///path"):
        with pytest.raises(SourceError):
            classify(bad)


def _wait(predicate, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    end = time.time() + timeout
    while not predicate():
        assert time.time() < end, "timed out"
        time.sleep(0.02)


def test_file_plays_paced_then_stops(tmp_path: Path) -> None:
    frames: list[Frame] = []
    reader = SourceReader(str(_clip(tmp_path / "a.mp4")), frames.append)
    start = time.time()
    reader.start()
    _wait(lambda: reader.state is SourceState.STOPPED)
    assert len(frames) == 10 and [f.seq for f in frames] == list(range(10))
    assert time.time() - start > 0.25  # 10 frames at 30 fps, not as fast as decoding
    assert all(f.capture_ts_source == "receive" and f.image.shape == (48, 64, 3) for f in frames)


def test_file_loops_until_stopped(tmp_path: Path) -> None:
    frames: list[Frame] = []
    reader = SourceReader(
        str(_clip(tmp_path / "a.mp4")), frames.append, SourceOptions(loop=True, realtime=False)
    )
    reader.start()
    _wait(lambda: len(frames) > 35)
    assert reader.reconnects == 0
    reader.stop()
    assert reader.state is SourceState.STOPPED


def test_unreachable_rtsp_backs_off(tmp_path: Path) -> None:
    reader = SourceReader(
        "rtsp://127.0.0.1:9/none", lambda f: None, SourceOptions(open_timeout_s=1)
    )
    reader.start()
    _wait(lambda: reader.reconnects >= 2)
    assert reader.state is SourceState.RECONNECTING and reader.last_error
    reader.stop()
