"""Clocks for live ingest: how far the decoder is behind arrival, and when a packet was
captured (pure: no I/O, no threads; `media/sources.py` feeds them from its reader).

**Lag against arrival.** A reader that falls behind leaves packets queued in the
socket, where PyAV cannot see them: a packet is only observed when it is read, and a
late read looks like a late packet. Timestamps fix that. While the reader keeps up,
`read time - pts` is constant (the sender's offset plus the network delay); every read
that comes later than that is lag. So `ArrivalClock` keeps the smallest `read - pts`
seen over a window (the best reads were prompt ones) and reports, for each packet,
how much later than that it was read. Demuxing without decoding takes microseconds,
so a reader that skips decoding catches up with the socket at once and refreshes the
minimum. The window lets the minimum follow slow clock drift between sender and us; a
timestamp jump backwards (a new timeline) starts it again.

**Capture time.** FFmpeg's RTSP demuxer exposes, per packet, the RTCP sender report
it last received (`rtcp_sr` side data, once per new report) and the wall-clock time
of the packet computed from that latest report (`prft` side data, FFmpeg's producer
reference time). So every report is used, not only the first (`start_time_realtime`).
Between reports FFmpeg assumes the nominal RTP clock rate; `SenderClock` measures the
sender's actual rate from consecutive reports and rescales the time since the latest
one, so a drifting RTP clock adds no error between reports.

**Which clock a frame gets.** `ClockChoice` decides per frame between the stream's
clock and the receive clock (packet arrival), with hysteresis, and reports every
change as a `ClockSwitch` so nothing changes silently.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Literal

NTP_UNIX_OFFSET_S = 2_208_988_800  # seconds from 1900 (NTP) to 1970 (Unix)
# AVRTCPSenderReport {uint32 ssrc; uint64 ntp_timestamp; uint32 rtp_timestamp;
# uint32 sender_packet_count; uint32 sender_octet_count;} in native layout.
_SR = struct.Struct("@IQIII")
# AVProducerReferenceTime {int64 wallclock (µs since 1970); int flags;}
_PRFT = struct.Struct("@qi")

ClockSource = Literal["stream", "receive"]


def parse_sender_report(data: bytes) -> tuple[float, int] | None:
    """(wall-clock seconds since 1970, 32-bit RTP timestamp) of an `rtcp_sr` side
    data block, or None if it is too short to be one."""
    if len(data) < _SR.size:
        return None
    _ssrc, ntp, rtp, _packets, _octets = _SR.unpack_from(data)
    return (ntp >> 32) - NTP_UNIX_OFFSET_S + (ntp & 0xFFFFFFFF) / 2**32, rtp


def parse_reference_time(data: bytes) -> float | None:
    """Wall-clock seconds of a `prft` side data block, None if malformed or unset."""
    if len(data) < _PRFT.size:
        return None
    wallclock_us, _flags = _PRFT.unpack_from(data)
    return wallclock_us / 1e6 if wallclock_us > 0 else None


class ArrivalClock:
    """Maps a live source's media time to when its packets arrived; see the module
    docstring. `observe` returns a packet's lag: how much later than the best read of
    the window it was read (0 when reading keeps up)."""

    def __init__(self, window_s: float = 10.0, backward_jump_s: float = 0.5) -> None:
        self.window_s = window_s
        self.backward_jump_s = backward_jump_s  # more than B-frame reordering
        # (read time, read - media time), offsets increasing: the window's minimum
        # is at the front (a monotonic queue; bounded by the packets of one window).
        self._offsets: deque[tuple[float, float]] = deque()
        self._last_media: float | None = None
        self.resets = 0

    @property
    def baseline(self) -> float | None:
        """The smallest `read - media` of the window (None before the first packet)."""
        return self._offsets[0][1] if self._offsets else None

    def observe(self, media_s: float, read_ts: float) -> float:
        last, self._last_media = self._last_media, media_s
        if last is not None and media_s < last - self.backward_jump_s:
            self._offsets.clear()  # a new timeline: the old offsets mean nothing now
            self.resets += 1
        offset = read_ts - media_s
        offsets = self._offsets
        while offsets and offsets[-1][1] >= offset:
            offsets.pop()
        offsets.append((read_ts, offset))
        while len(offsets) > 1 and offsets[0][0] < read_ts - self.window_s:
            offsets.popleft()
        return offset - offsets[0][1]


@dataclass(frozen=True, slots=True)
class _Report:
    wall: float
    rtp: int


class SenderClock:
    """Capture times from RTCP sender reports, with the sender's RTP clock rate
    measured between reports (drift corrected); see the module docstring."""

    RATE_WINDOW_S = 60.0  # reports this far apart at most give the rate
    MIN_SPAN_S = 0.5  # closer reports say too little about the rate
    MAX_DRIFT = 0.05  # beyond this it is a clock step, not drift

    def __init__(self, clock_rate: float) -> None:
        self.clock_rate = clock_rate
        self._reports: deque[_Report] = deque(maxlen=64)
        self.ratio = 1.0  # true seconds per nominal RTP second
        self.reports = 0
        self.steps = 0  # reports that broke the timeline (the sender's clock stepped)

    def report(self, wall: float, rtp: int) -> None:
        self.reports += 1
        reports = self._reports
        if reports and wall <= reports[-1].wall:
            self._restart()
        reports.append(_Report(wall, rtp))
        while len(reports) > 2 and reports[-1].wall - reports[1].wall >= self.RATE_WINDOW_S:
            reports.popleft()
        first, latest = reports[0], reports[-1]
        span = latest.wall - first.wall
        if span < self.MIN_SPAN_S:
            return
        nominal = ((latest.rtp - first.rtp) & 0xFFFFFFFF) / self.clock_rate
        ratio = span / nominal if nominal > 0 else 0.0
        if abs(ratio - 1.0) > self.MAX_DRIFT:
            self._restart()
            reports.append(latest)
            return
        self.ratio = ratio

    def _restart(self) -> None:
        self._reports.clear()
        self.ratio = 1.0
        self.steps += 1

    def capture(self, reference: float) -> float:
        """The capture time of a packet whose `prft` time (FFmpeg's, from the latest
        report at the nominal rate) is `reference`."""
        if not self._reports:
            return reference
        anchor = self._reports[-1].wall
        return anchor + (reference - anchor) * self.ratio


@dataclass(frozen=True, slots=True)
class ClockSwitch:
    """A change of the clock frames are stamped with; a reader's first frame makes
    one from None, so the clock in use is always announced."""

    previous: ClockSource | None
    current: ClockSource
    reason: str  # sender_report (trusted) | skew (beyond the bound) | no_sender_report
    skew_s: float | None  # arrival minus the stream's capture time, when known


class ClockChoice:
    """Which clock each frame's `capture_ts` comes from: the stream's (sender reports)
    while it agrees with arrival within `max_skew_s`, else arrival. A stream clock that
    was dropped is taken back only within `rejoin` of the bound, so a skew near the
    bound cannot flap from frame to frame."""

    def __init__(self, max_skew_s: float, rejoin: float = 0.8) -> None:
        self.max_skew_s = max_skew_s
        self.rejoin = rejoin
        self.current: ClockSource | None = None
        self.switches = 0  # changes after the first choice

    def choose(
        self, stream_capture: float | None, arrival: float
    ) -> tuple[float, ClockSource, ClockSwitch | None]:
        """(capture_ts, its source, the switch this frame makes or None)."""
        previous = self.current
        skew = None if stream_capture is None else arrival - stream_capture
        wanted: ClockSource
        if skew is None:
            wanted, reason = "receive", "no_sender_report"
        else:
            limit = self.max_skew_s * (self.rejoin if previous == "receive" else 1.0)
            trusted = abs(skew) <= limit
            wanted, reason = ("stream", "sender_report") if trusted else ("receive", "skew")
        switch = None
        if wanted != previous:
            switch = ClockSwitch(previous, wanted, reason, skew)
            self.switches += previous is not None
            self.current = wanted
        if wanted == "stream" and stream_capture is not None:
            return stream_capture, wanted, switch
        return arrival, wanted, switch
