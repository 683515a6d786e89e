"""Interval inference end to end: the real server, a real camera stream (a file read
through PyAV, paced like a live camera) and a real WebRTC peer, each asking for the
model on every Nth frame only; the source-rate output still covers every frame."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from streamseg.client import StreamsegClient
from streamseg.client_webrtc import SyntheticVideoTrack, WebRTCClient
from streamseg.media.frame import Frame
from streamseg.media.synthetic import shape_boxes, write_h264
from streamseg.pipeline.egress import PlacedFrame
from streamseg.pipeline.stream import MAX_INTERVAL
from streamseg.server.background import running_server
from streamseg.server.runtime import Runtime
from tests.auth_helpers import AUTH

pytestmark = pytest.mark.e2e
FPS = 10  # the model (test config) keeps up with a third of this even on a busy CPU


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Runtime, Path]]:
    root = tmp_path_factory.mktemp("interval")
    clip = root / "scene.mp4"
    write_h264(str(clip), 160, 120, 4 * FPS, fps=FPS)
    with running_server(max_streams=4, source_media_root=str(root), ice_hosts=("127.0.0.1",)) as (
        url,
        runtime,
    ):
        yield url, runtime, clip


def _metric(url: str, name: str, **labels: str) -> float | None:
    text = httpx.get(f"{url}/metrics", headers=AUTH).text
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_camera_with_interval_3_runs_the_model_on_a_third_of_its_frames(
    server: tuple[str, Runtime, Path],
) -> None:
    url, runtime, clip = server
    client = StreamsegClient(url)
    sid = (await client.create_stream(str(clip), loop=True, interval=3))["id"]
    session = runtime.streams[sid]
    placer = session.source_rate_masks()
    placed: list[PlacedFrame] = []
    lock = threading.Lock()

    def place(frame: Frame) -> None:  # on the reader thread, after the placer saw it
        with lock:
            placed.append(placer.place(frame))

    remove = session.add_frame_sink(place)
    try:
        deadline = time.monotonic() + 30
        while session.counters.processed == 0:
            assert time.monotonic() < deadline, "no model result"
            await asyncio.sleep(0.05)
        await client.add_prompt(sid, box=list(shape_boxes(0, 120, 160)[0]))
        while not any(p.tracks for p in placed[-1:]):
            assert time.monotonic() < deadline, "no mask placed on a frame"
            await asyncio.sleep(0.05)
        with lock:
            placed.clear()
        before = asdict(session.counters)
        await asyncio.sleep(4.0)
        after = asdict(session.counters)
        info = await client.get_stream(sid)
        skipped_metric = _metric(
            url, "streamseg_frames_skipped_total", stream=sid, reason="interval"
        )
        with lock:
            window = list(placed)
    finally:
        remove()
        await client.delete_stream(sid)
    got = {k: after[k] - before[k] for k in ("received", "processed", "skipped", "dropped")}
    print(f"\ninterval 3 at {FPS} fps for 4 s: {got}")
    assert got["received"] >= 3 * FPS
    # The model ran on at most every third frame, and on about a third of them.
    assert got["processed"] <= got["received"] / 3 + 1
    assert got["processed"] >= 0.25 * got["received"]
    # Two frames skipped (by choice, not dropped) per model frame; window edges aside.
    assert abs(got["skipped"] - 2 * got["processed"]) <= 2
    assert got["dropped"] <= 0.1 * got["received"]
    assert info["interval"] == 3 and info["frames_skipped"] >= got["skipped"]
    assert skipped_metric is not None and skipped_metric >= got["skipped"]
    # The source-rate output has every frame, each with the newest mask carried forward.
    seqs = [p.frame.seq for p in window]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert len(seqs) >= got["received"] - 1
    assert all(len(p.tracks) == 1 for p in window)
    model_seqs = {p.tracks[0].placed.model_seq for p in window}
    assert len(model_seqs) >= got["processed"] - 2  # masks followed every model result
    ages = [p.tracks[0].age_ms for p in window]
    print(f"mask age on outgoing frames: p50 {np.median(ages):.0f} ms, max {max(ages):.0f} ms")
    assert 0 < np.median(ages) < 3000


async def test_bad_intervals_are_refused_with_422(server: tuple[str, Runtime, Path]) -> None:
    url, runtime, clip = server
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
        for bad in (0, -2, MAX_INTERVAL + 1, "3", 2.5, True, None):
            body = {"url": str(clip), "options": {"interval": bad}}
            r = await http.post("/v1/streams", json=body)
            assert r.status_code == 422, (bad, r.text)
            assert "interval" in r.text, r.text
            offer: dict[str, Any] = {"sdp": "v=0", "type": "offer", "options": {"interval": bad}}
            r = await http.post("/v1/webrtc/offer", json=offer)
            assert r.status_code == 422, (bad, r.text)
            assert "interval" in r.text, r.text
    assert not runtime.streams


async def test_webrtc_offer_with_interval_keeps_the_video_at_source_rate(
    server: tuple[str, Runtime, Path],
) -> None:
    url, runtime, _ = server
    client = WebRTCClient(url, SyntheticVideoTrack(160, 120, fps=15), options={"interval": 2})
    await client.connect()
    try:
        assert client.stream_id is not None
        session = runtime.streams[client.stream_id]
        assert session.interval == 2
        deadline = time.monotonic() + 30
        while session.counters.processed < 2:
            assert time.monotonic() < deadline, "no model result"
            await asyncio.sleep(0.05)
        before, frames_before = asdict(session.counters), len(client.frames)
        await asyncio.sleep(3.0)
        after, frames_after = asdict(session.counters), len(client.frames)
    finally:
        await client.close()
    got = {k: after[k] - before[k] for k in ("received", "processed", "skipped")}
    video = frames_after - frames_before
    print(f"\nwebrtc interval 2 for 3 s: {got}, {video} video frames back")
    assert got["processed"] <= got["received"] / 2 + 1
    assert abs(got["skipped"] - got["processed"]) <= 2
    assert video >= 0.6 * got["received"]  # every frame goes back, not one per result
