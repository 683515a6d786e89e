"""The Foxglove bridge's own rules: where it may listen, its flags, the streams file's
`frame_id`, its one-slot mailbox per stream (drops counted), and the messages it
builds. The wire end to end is tests/e2e/test_foxglove.py."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from streamseg.cli import _settings_from, build_parser, main
from streamseg.config import Settings
from streamseg.model.tracker import TrackResult
from streamseg.server.app import create_app
from streamseg.server.foxglove_bridge import (
    FoxgloveBridge,
    FoxgloveConfigError,
    foxglove_bind_problem,
    mask_mono8,
    track_annotations,
)
from streamseg.server.metrics import Metrics
from streamseg.server.streams_file import StreamsFileError, dump_streams_file, parse_streams_file


def test_loopback_only_unless_the_flag_says_otherwise() -> None:
    assert foxglove_bind_problem(Settings()) is None  # off
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert foxglove_bind_problem(Settings(foxglove_port=8765, foxglove_host=host)) is None
    for host in ("0.0.0.0", "::", "192.168.1.5"):
        problem = foxglove_bind_problem(Settings(foxglove_port=8765, foxglove_host=host))
        assert problem is not None and "no authentication" in problem
        # tokens protect the main server only: they do not make this one acceptable
        allowed = Settings(
            foxglove_port=8765, foxglove_host=host, insecure_foxglove_on_network=True
        )
        assert foxglove_bind_problem(allowed) is None
    assert foxglove_bind_problem(Settings(foxglove_port=70000)) is not None
    assert foxglove_bind_problem(Settings(port=8000, foxglove_port=8000)) is not None


def test_a_refused_address_stops_start_up() -> None:
    with pytest.raises(FoxgloveConfigError, match="beyond loopback"):
        create_app(Settings(foxglove_port=8765, foxglove_host="0.0.0.0", token="t" * 32))


def test_serve_refuses_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--foxglove-port", "8765", "--foxglove-host", "0.0.0.0"])
    assert code == 2
    assert "--insecure-foxglove-on-network" in capsys.readouterr().err


def test_without_the_sdk_start_up_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "foxglove", None)  # import foxglove -> ImportError
    with pytest.raises(FoxgloveConfigError, match=r"streamseg\[foxglove\]"):
        create_app(Settings(foxglove_port=8765))
    create_app(Settings())  # off: the SDK is not needed


def test_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    s = _settings_from(parser.parse_args(["serve"]))
    assert s.foxglove_port is None and s.foxglove_host == "127.0.0.1"
    args = parser.parse_args(
        ["serve", "--foxglove-port", "8765", "--foxglove-host", "0.0.0.0",
         "--insecure-foxglove-on-network"]
    )  # fmt: skip
    s = _settings_from(args)
    assert (s.foxglove_port, s.foxglove_host, s.insecure_foxglove_on_network) == (
        8765,
        "0.0.0.0",
        True,
    )
    monkeypatch.setenv("STREAMSEG_FOXGLOVE_PORT", "9001")
    monkeypatch.setenv("STREAMSEG_FOXGLOVE_BACKLOG", "16")
    s = Settings.from_env()
    assert (s.foxglove_port, s.foxglove_backlog) == (9001, 16)


def test_streams_file_frame_id() -> None:
    text = (
        "streams:\n"
        "  - id: dock\n"
        "    url: rtsp://10.0.0.1/live\n"
        "    frame_id: dock_optical\n"
        "  - id: yard\n"
        "    url: rtsp://10.0.0.2/live\n"
    )
    dock, yard = parse_streams_file(text, {})
    assert (dock.frame_id, yard.frame_id) == ("dock_optical", None)
    again = parse_streams_file(dump_streams_file([dock, yard]), {})
    assert [d.frame_id for d in again] == ["dock_optical", None]
    bad = "streams:\n  - id: dock\n    url: rtsp://10.0.0.1/live\n    frame_id: [1]\n"
    with pytest.raises(StreamsFileError, match=r":4: frame_id must be a non-empty string"):
        parse_streams_file(bad, {})


def _track(bbox: tuple[int, int, int, int] | None, present: bool = True) -> TrackResult:
    mask = np.zeros((4, 6), bool)
    if bbox is not None:
        x0, y0, x1, y1 = bbox
        mask[y0:y1, x0:x1] = True
    return TrackResult(
        track_id=3,
        mask=mask,
        low_res_logits=np.zeros((4, 4), np.float32),
        score=0.875,
        object_score=0.9,
        present=present,
        bbox=bbox,
        area=int(mask.sum()),
    )


def test_messages() -> None:
    pytest.importorskip("foxglove")
    from foxglove.messages import Timestamp

    track = _track((1, 1, 4, 3))
    pixels = np.frombuffer(mask_mono8(track.mask), np.uint8).reshape(4, 6)
    assert set(np.unique(pixels)) == {0, 255}
    assert np.array_equal(pixels == 255, track.mask)
    stamp = Timestamp.from_epoch_secs(1.5)
    assert (
        track_annotations(track, stamp).encode()
        != track_annotations(_track(None, present=False), stamp).encode()
    )
    # out of view: an empty message, so a viewer clears the box
    empty = track_annotations(_track(None, present=False), stamp)
    assert empty.encode() == type(empty)(timestamp=stamp).encode()


async def test_one_slot_per_stream_drops_counted() -> None:
    """While the encoder publishes one result, newer ones replace each other in the
    stream's mailbox; only the newest is published next, the others are counted."""
    pytest.importorskip("foxglove")
    metrics = Metrics()
    runtime: Any = SimpleNamespace(metrics=metrics, cameras={})
    bridge = FoxgloveBridge(runtime, Settings(foxglove_port=0), lambda sid: f"{sid}_frame")
    published: list[object] = []
    gate = threading.Event()

    def publish(state: Any, out: object) -> None:
        assert state.frame_id == "cam_frame"
        published.append(out)
        gate.wait(10)

    bridge.publish = publish  # type: ignore[method-assign]
    sinks: list[Any] = []

    def add_sink(sink: Any) -> Any:
        sinks.append(sink)
        return lambda: sinks.remove(sink)

    runtime.cameras["cam"] = SimpleNamespace(
        session=SimpleNamespace(closed=False, add_sink=add_sink)
    )
    metrics.open_stream("cam")
    bridge.start()
    try:
        assert bridge.port is not None and bridge.port > 0
        bridge.sync()
        assert len(sinks) == 1
        results = [object() for _ in range(6)]
        sinks[0](results[0])
        await _until(lambda: published == results[:1])
        for r in results[1:]:
            sinks[0](r)  # the encoder is busy: each replaces the last
        gate.set()
        await _until(lambda: published[-1] is results[-1])
        assert published == [results[0], results[-1]]
        dropped = metrics.frames_dropped.labels("cam", "foxglove")._value.get()
        assert dropped == 4
        del runtime.cameras["cam"]
        bridge.sync()
        assert sinks == []  # detached: nothing is stored for it any more
    finally:
        gate.set()
        await bridge.stop()


async def _until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
