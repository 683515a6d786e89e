"""Per-stream series in /metrics live exactly as long as their stream."""

from __future__ import annotations

import threading

from streamseg.server.metrics import Metrics


def _stream_lines(metrics: Metrics, stream_id: str) -> list[str]:
    text = metrics.render().decode()
    return [line for line in text.splitlines() if f'stream="{stream_id}"' in line]


def test_forget_removes_every_series_and_late_counts_are_ignored() -> None:
    metrics = Metrics()
    metrics.open_stream("s1")
    metrics.open_stream("s2")
    for where in ("input_slot", "too_large", "websocket", "a_new_place"):
        metrics.count_drop("s1", where)
    metrics.count_received("s1")
    metrics.count_received("s2")
    assert len(_stream_lines(metrics, "s1")) == 2 * (1 + 4)  # _total and _created each
    metrics.forget_stream("s1")
    assert _stream_lines(metrics, "s1") == []
    metrics.count_received("s1")  # a frame that was already on its way
    metrics.count_drop("s1", "overlay")
    assert _stream_lines(metrics, "s1") == []
    assert _stream_lines(metrics, "s2")


def test_counts_from_other_threads_never_outlive_forget() -> None:
    metrics = Metrics()
    for round_ in range(20):
        sid = f"s{round_}"
        metrics.open_stream(sid)
        stop = threading.Event()

        def hammer(sid: str = sid, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                metrics.count_received(sid)
                metrics.count_drop(sid, "too_large")

        thread = threading.Thread(target=hammer)
        thread.start()
        metrics.forget_stream(sid)
        stop.set()
        thread.join()
        assert _stream_lines(metrics, sid) == []
