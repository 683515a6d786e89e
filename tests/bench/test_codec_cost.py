from __future__ import annotations

from streamseg.bench.codec_cost import PROMPT, codec_costs, describe, header_with_tracks
from streamseg.protocol.messages import decode_frame_header
from streamseg.protocol.prompts import AddPrompt, parse_client_message


def test_the_measured_messages_are_real_protocol_messages() -> None:
    header = decode_frame_header(header_with_tracks(16))
    assert len(header.tracks) == 16 and header.tracks[15].track_id == 16
    prompt = parse_client_message(PROMPT)
    assert isinstance(prompt, AddPrompt) and prompt.labels == (1, 0)


def test_costs_are_measured_per_call() -> None:
    live = header_with_tracks(3)
    costs = codec_costs(live, seconds=0.01)
    assert set(costs) == {
        "decode_header_live_us",
        "decode_header_16_tracks_us",
        "parse_prompt_us",
        "encode_header_16_tracks_us",
    }
    assert all(0 < v < 1e5 for v in costs.values())
    assert "16 tracks" in describe(costs) and "µs" in describe(costs)
