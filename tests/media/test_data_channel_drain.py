"""The data channel's drain rule: a frame's metadata goes out only when nothing waits in
the channel before it, so it never queues behind older metadata (skips are counted)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from streamseg.media.frame import Frame
from streamseg.media.webrtc import DATA_CHANNEL_LOW_WATER, Peer
from streamseg.pipeline.egress import PlacedFrame
from streamseg.protocol.messages import decode_frame_json


class _Channel:
    readyState = "open"

    def __init__(self) -> None:
        self.bufferedAmount = 0
        self.sent: list[str] = []

    def send(self, text: str) -> None:
        self.sent.append(text)
        self.bufferedAmount += len(text)  # until SCTP takes it


def _peer(channel: _Channel, drops: list[str]) -> Any:
    metrics = SimpleNamespace(
        observe_sent=lambda *a: None, count_drop=lambda _sid, where: drops.append(where)
    )
    return SimpleNamespace(
        metrics=metrics,
        channel=channel,
        options=SimpleNamespace(metadata=True, masks_in_metadata=False),
        stream=SimpleNamespace(id="s1", counters=SimpleNamespace(dropped=0)),
    )


def _placed(seq: int) -> PlacedFrame:
    frame = Frame(seq, np.zeros((4, 6, 3), np.uint8), 1.0 + seq, "receive", 1.0 + seq)
    return PlacedFrame(frame, None, ())


def test_metadata_waits_for_the_channel_to_drain() -> None:
    channel, drops = _Channel(), list[str]()
    peer = _peer(channel, drops)
    Peer.sent(peer, _placed(1), 2.0, 9000)
    assert len(channel.sent) == 1 and drops == []
    # SCTP has not taken frame 1's metadata yet: frame 2's is skipped, not queued.
    assert channel.bufferedAmount > DATA_CHANNEL_LOW_WATER
    Peer.sent(peer, _placed(2), 3.0, 12000)
    assert len(channel.sent) == 1 and drops == ["data_channel"]
    channel.bufferedAmount = 0  # drained
    Peer.sent(peer, _placed(3), 4.0, 15000)
    assert [decode_frame_json(t)[0].seq for t in channel.sent] == [1, 3]
