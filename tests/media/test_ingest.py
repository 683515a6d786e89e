"""Ingest clocks (pure): lag against arrival, capture time from every RTCP sender
report with the sender's clock rate measured, and which clock a frame gets."""

from __future__ import annotations

import random
import struct

import pytest

from streamseg.media.ingest import (
    NTP_UNIX_OFFSET_S,
    ArrivalClock,
    ClockChoice,
    SenderClock,
    parse_reference_time,
    parse_sender_report,
)

# Side data as FFmpeg attached it to packets from tests/e2e/rtsp_server.py (x86-64).
SR_BYTES = bytes.fromhex("ed5e00000000000000602dca8d98b8eed63159ba670000007d90010000000000")
PRFT_BYTES = bytes.fromhex("3aea0ced876106001800000000000000")


def test_side_data_from_ffmpeg_parses() -> None:
    report = parse_sender_report(SR_BYTES)
    assert report is not None
    wall, rtp = report
    assert wall == pytest.approx(1796086285.7897549, abs=1e-6) and rtp == 0xBA5931D6
    reference = parse_reference_time(PRFT_BYTES)
    assert reference == pytest.approx(wall, abs=2e-6)  # this packet is the report's frame
    assert parse_sender_report(SR_BYTES[:10]) is None
    assert parse_reference_time(b"\x00" * 16) is None


def test_lag_is_zero_while_reading_keeps_up_and_measured_when_it_does_not() -> None:
    clock = ArrivalClock()
    rng = random.Random(1)
    t0 = 1000.0
    lags = [clock.observe(i / 30, t0 + i / 30 + rng.uniform(0, 0.005)) for i in range(300)]
    assert max(lags) < 0.006
    # The reader stops for 2 s, then reads the backlog at once (packets were queued in
    # the socket): the first of them is 2 s late, the newest hardly at all.
    read = t0 + 300 / 30 + 2.0
    backlog = [clock.observe(i / 30, read + (i - 300) * 1e-4) for i in range(300, 361)]
    assert backlog[0] == pytest.approx(2.0, abs=0.01)
    assert backlog[-1] < 0.02
    assert clock.resets == 0


def test_lag_follows_drift_and_restarts_on_a_new_timeline() -> None:
    clock = ArrivalClock(window_s=5.0)
    # Our clock runs 1 ms/s faster than the sender's: offsets grow slowly. The window
    # lets the baseline follow, so no lag builds up.
    lags = [clock.observe(i / 30, 50.0 + (i / 30) * 1.001) for i in range(30 * 60)]
    assert max(lags) < 0.006
    # pts jump back by 10 s (a new timeline): not 10 s of lag.
    assert clock.observe(0.0, 50.0 + 60.1) == 0.0 and clock.resets == 1
    assert clock.observe(1 / 30, 50.0 + 60.1 + 1 / 30) < 0.001


def _ntp(wall: float) -> int:
    ntp = wall + NTP_UNIX_OFFSET_S
    return (int(ntp) << 32) | int((ntp % 1) * 2**32)


def _sr(wall: float, rtp: int) -> bytes:
    return struct.pack("@IQIII", 0x5EED, _ntp(wall), rtp & 0xFFFFFFFF, 0, 0) + b"\0" * 4


def test_every_sender_report_is_used_with_the_rate_measured() -> None:
    """A sender whose RTP clock runs 2 % fast, reporting every second: FFmpeg's per
    packet time from the latest report is off by up to 20 ms before the next; the
    first report alone is off by 2 % of the time since; the measured rate leaves
    nothing."""
    rate, drift, base = 90_000, 0.02, 4_000_000_000  # wraps past 2**32 on the way
    clock = SenderClock(rate)
    start = 1_800_000_000.0
    latest: tuple[float, int] | None = None
    worst_ours = worst_prft = worst_first = 0.0
    first: tuple[float, int] | None = None
    for i in range(30 * 20):
        wall = start + i / 30  # true capture time of frame i
        rtp = base + round(i * rate * (1 + drift) / 30)
        if i % 30 == 0:
            report = parse_sender_report(_sr(wall, rtp))
            assert report is not None
            clock.report(*report)
            latest = report
            first = first or report
        assert latest is not None and first is not None
        prft = latest[0] + ((rtp - latest[1]) & 0xFFFFFFFF) / rate  # what FFmpeg computes
        worst_prft = max(worst_prft, abs(prft - wall))
        worst_first = max(worst_first, abs(first[0] + (rtp - first[1]) / rate - wall))
        if i >= 30:  # the rate is known from the second report on
            worst_ours = max(worst_ours, abs(clock.capture(prft) - wall))
    assert clock.ratio == pytest.approx(1 / 1.02, rel=1e-5)
    assert worst_ours < 1e-4
    assert 0.015 < worst_prft < 0.025 and worst_first > 0.3


def test_a_stepped_sender_clock_restarts_the_rate() -> None:
    clock = SenderClock(90_000)
    clock.report(100.0, 0)
    clock.report(101.0, 90_000)
    clock.report(99.0, 180_000)  # the sender's clock stepped back: not a rate
    assert clock.ratio == 1.0 and clock.steps == 1
    clock.report(130.0, 270_000)  # 31 s for 1 s of RTP time: a step forward
    assert clock.ratio == 1.0 and clock.steps == 2
    assert clock.capture(130.5) == pytest.approx(130.5)


def test_clock_choice_announces_every_change_and_does_not_flap() -> None:
    choice = ClockChoice(max_skew_s=10.0)
    capture, source, switch = choice.choose(99.9, 100.0)
    assert (capture, source) == (99.9, "stream")
    assert switch is not None and switch.previous is None and switch.reason == "sender_report"
    assert choice.choose(99.95, 100.0)[2] is None  # no change, no event
    capture, source, switch = choice.choose(70.0, 100.0)  # the camera's clock stepped
    assert (capture, source) == (100.0, "receive")
    assert switch is not None and (switch.previous, switch.reason) == ("stream", "skew")
    assert switch.skew_s == pytest.approx(30.0)
    # Back within the bound but not within 80 % of it: stays on arrival.
    assert choice.choose(91.0, 100.0)[1:] == ("receive", None)
    capture, source, switch = choice.choose(99.0, 100.0)
    assert source == "stream" and switch is not None and switch.previous == "receive"
    capture, source, switch = choice.choose(None, 100.0)  # a new connection, no report yet
    assert (capture, source) == (100.0, "receive")
    assert switch is not None and switch.reason == "no_sender_report"
    assert choice.switches == 3
