"""A small RTSP server for tests: RTP carrying H.264 encoded by PyAV from generated
frames (RFC 2326 / RFC 6184, just what FFmpeg's client needs).

Transports: TCP interleaved (channels 0-1) and UDP (client_port=a-b). Each client gets
its own encoder, so its stream starts with a keyframe (then one every `gop` frames),
and a random initial RTP timestamp, like a real camera. With `rtcp=True` it sends an
RTCP sender report every `sr_interval_s` (the first after `sr_first_s`) that maps RTP
time to the wall clock at which that frame was captured (its slot: the camera's start
plus index / fps, whenever it is actually encoded and sent), shifted by `clock_offset_s`
(which a test may change while streaming: a camera whose clock steps). `rtp_drift`
makes the RTP clock run that much fast (0.01: 1 %), as a camera's crystal does, only
more, so the sender reports must correct it. A camera that falls behind its frame rate
(starved, or stopped with SIGSTOP) sends the missed frames late in a burst, or with
`skip_late=True` skips their slots, as a sensor does (frame index = seq then only while
it keeps up).
`freeze()` keeps connections open but stops sending, `thaw()` resumes; `stop()` closes
everything.

Run alone (`python -m tests.e2e.rtsp_server --help`), it serves until killed: a camera
for manual tests, or one a test can SIGSTOP, SIGKILL and start again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import struct
import time
from fractions import Fraction

import av

from streamseg.media.synthetic import scene_frame

MAX_PAYLOAD = 1400
MAX_BUFFERED = 64 << 20  # bytes queued for one client before giving up on it
RTP_CLOCK = 90_000
NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900 to 1970
SSRC = 0x5EED


def _nal_units(data: bytes) -> list[bytes]:
    units, i, start = [], 0, -1
    while i < len(data) - 3:
        if data[i : i + 3] == b"\x00\x00\x01":
            if start >= 0:
                units.append(data[start:i].rstrip(b"\x00"))
            start = i + 3
            i += 3
        else:
            i += 1
    if start >= 0:
        units.append(data[start:])
    return [u for u in units if u]


def _rtp_payloads(nal: bytes) -> list[bytes]:
    if len(nal) <= MAX_PAYLOAD:
        return [nal]
    indicator = (nal[0] & 0xE0) | 28
    kind = nal[0] & 0x1F
    body = nal[1:]
    chunks = [body[i : i + MAX_PAYLOAD] for i in range(0, len(body), MAX_PAYLOAD)]
    out = []
    for n, chunk in enumerate(chunks):
        header = kind | (0x80 if n == 0 else 0) | (0x40 if n == len(chunks) - 1 else 0)
        out.append(bytes([indicator, header]) + chunk)
    return out


def sender_report(wall_ts: float, rtp_ts: int, packets: int, octets: int) -> bytes:
    """RTCP SR (RFC 3550 6.4.1) without report blocks."""
    ntp = wall_ts + NTP_EPOCH_OFFSET
    seconds = int(ntp)
    fraction = int((ntp - seconds) * 2**32) & 0xFFFFFFFF
    return struct.pack(
        ">BBHIIIIII",
        0x80,
        200,
        6,
        SSRC,
        seconds,
        fraction,
        rtp_ts & 0xFFFFFFFF,
        packets,
        octets,
    )


class _UdpSender(asyncio.DatagramProtocol):
    pass


class _Output:
    """Where one client's RTP and RTCP go: interleaved on its TCP socket, or UDP."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.udp: tuple[asyncio.DatagramTransport, asyncio.DatagramTransport] | None = None
        self.client_ports: tuple[int, int] = (0, 0)

    def send(self, channel: int, data: bytes) -> None:
        if self.udp is None:
            self.writer.write(b"$" + bytes([channel]) + struct.pack(">H", len(data)) + data)
        else:
            self.udp[channel].sendto(data, ("127.0.0.1", self.client_ports[channel]))

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel (a client that reads slowly)."""
        return 0 if self.udp is not None else self.writer.transport.get_write_buffer_size()

    def close(self) -> None:
        if self.udp is not None:
            for transport in self.udp:
                transport.close()
            self.udp = None


class RtspTestServer:
    def __init__(
        self,
        port: int,
        width: int = 320,
        height: int = 240,
        fps: int = 30,
        codec: str = "H264",
        rtcp: bool = True,
        clock_offset_s: float = 0.0,
        *,
        gop: int | None = None,
        sr_interval_s: float = 1.0,
        sr_first_s: float = 0.0,
        rtp_drift: float = 0.0,
        skip_late: bool = False,
    ) -> None:
        self.port, self.width, self.height, self.fps, self.codec = port, width, height, fps, codec
        self.rtcp, self.clock_offset_s = rtcp, clock_offset_s
        self.gop = gop or fps
        self.sr_interval_s, self.sr_first_s, self.rtp_drift = sr_interval_s, sr_first_s, rtp_drift
        self.skip_late = skip_late
        self.frozen = False
        self.sender_reports = 0
        self.transports: list[str] = []  # "tcp" | "udp" per SETUP, for tests to check
        self.frame_times: dict[int, float] = {}  # recent frame index -> wall time captured
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/live"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._clients):
            task.cancel()
        for task in list(self._clients):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def freeze(self) -> None:
        self.frozen = True

    def thaw(self) -> None:
        self.frozen = False

    async def _setup_udp(self, output: _Output, transport: str) -> str | None:
        ports = re.search(r"client_port=(\d+)-(\d+)", transport)
        if ports is None:
            return None
        output.client_ports = (int(ports.group(1)), int(ports.group(2)))
        loop = asyncio.get_running_loop()
        rtp, _ = await loop.create_datagram_endpoint(_UdpSender, local_addr=("127.0.0.1", 0))
        rtcp, _ = await loop.create_datagram_endpoint(_UdpSender, local_addr=("127.0.0.1", 0))
        output.udp = (rtp, rtcp)
        server_ports = [t.get_extra_info("sockname")[1] for t in output.udp]
        return (
            f"RTP/AVP/UDP;unicast;client_port={ports.group(1)}-{ports.group(2)};"
            f"server_port={server_ports[0]}-{server_ports[1]}"
        )

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        output = _Output(writer)
        streamer: asyncio.Task[None] | None = None
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                lines = request.decode().split("\r\n")
                method, url, _ = lines[0].split(" ", 2)
                headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
                cseq = headers.get("CSeq", "0")
                extra, body = "", ""
                if method == "OPTIONS":
                    extra = "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER\r\n"
                elif method == "DESCRIBE":
                    body = (
                        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=streamseg test\r\n"
                        "c=IN IP4 0.0.0.0\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\n"
                        f"a=rtpmap:96 {self.codec}/{RTP_CLOCK}\r\n"
                        "a=fmtp:96 packetization-mode=1\r\na=control:track0\r\n"
                    )
                    extra = f"Content-Base: {url}/\r\nContent-Type: application/sdp\r\n"
                elif method == "SETUP":
                    requested = headers.get("Transport", "")
                    if "TCP" in requested:
                        reply = "RTP/AVP/TCP;unicast;interleaved=0-1"
                        self.transports.append("tcp")
                    else:
                        udp = await self._setup_udp(output, requested)
                        if udp is None:
                            refusal = f"RTSP/1.0 461 Unsupported Transport\r\nCSeq: {cseq}\r\n\r\n"
                            writer.write(refusal.encode())
                            await writer.drain()
                            continue
                        reply = udp
                        self.transports.append("udp")
                    extra = f"Transport: {reply}\r\nSession: 4242\r\n"
                elif method == "PLAY":
                    extra = "Session: 4242\r\nRange: npt=0.000-\r\n"
                elif method == "TEARDOWN":
                    break
                response = f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n{extra}"
                if body:
                    response += f"Content-Length: {len(body)}\r\n"
                writer.write((response + "\r\n" + body).encode())
                await writer.drain()
                if method == "PLAY" and streamer is None:
                    streamer = asyncio.ensure_future(self._stream(output))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if streamer is not None:
                streamer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await streamer
            output.close()
            writer.close()
            self._clients.discard(task)

    async def _stream(self, output: _Output) -> None:
        encoder = av.CodecContext.create("libx264", "w")
        encoder.width, encoder.height, encoder.pix_fmt = self.width, self.height, "yuv420p"
        encoder.time_base = Fraction(1, self.fps)
        encoder.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(self.gop)}
        loop = asyncio.get_running_loop()
        seq, packets, octets = random.getrandbits(16), 0, 0
        rtp_base = random.getrandbits(32)
        ticks = RTP_CLOCK * (1 + self.rtp_drift) / self.fps  # RTP ticks per frame
        start, wall_start = loop.time(), time.time()
        next_report = start + self.sr_first_s
        index = -1
        while True:
            index += 1
            if self.skip_late:  # slots already past are skipped, not sent in a burst
                index = max(index, int((loop.time() - start) * self.fps))
            await asyncio.sleep(max(0.0, start + index / self.fps - loop.time()))
            if output.writer.is_closing():
                return
            if self.frozen:
                continue
            # Captured at its slot, by the camera's clock: sending may come later (a
            # starved camera), and that delay is part of what a reader must see.
            generated = wall_start + index / self.fps
            self.frame_times[index] = generated
            self.frame_times.pop(index - 10 * self.fps, None)
            rtp_ts = (rtp_base + round(index * ticks)) & 0xFFFFFFFF
            if self.rtcp and loop.time() >= next_report:
                report = sender_report(generated + self.clock_offset_s, rtp_ts, packets, octets)
                output.send(1, report)
                self.sender_reports += 1
                while next_report <= loop.time():
                    next_report += self.sr_interval_s
            frame = av.VideoFrame.from_ndarray(
                scene_frame(index, self.height, self.width), format="rgb24"
            ).reformat(format="yuv420p")
            frame.pts = index
            for packet in encoder.encode(frame):
                payloads = [p for nal in _nal_units(bytes(packet)) for p in _rtp_payloads(nal)]
                for n, payload in enumerate(payloads):
                    marker = 0x80 if n == len(payloads) - 1 else 0
                    header = struct.pack(">BBHII", 0x80, marker | 96, seq & 0xFFFF, rtp_ts, SSRC)
                    seq += 1
                    packets += 1
                    octets += len(payload)
                    output.send(0, header + payload)
            # Never wait for a slow reader: a camera keeps capturing on its own clock and
            # the backlog piles up in the socket, where only the reader can catch up.
            if output.buffered() > MAX_BUFFERED:
                return  # a client that stopped reading long ago: dropped, as cameras do


def _arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.e2e.rtsp_server",
        description="A test RTSP camera (H.264 over RTP, TCP or UDP) on 127.0.0.1; "
        "serves until killed.",
    )
    parser.add_argument("port", nargs="?", type=int, default=8554, help="default 8554")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--gop", type=int, default=None, help="frames per keyframe (fps)")
    parser.add_argument("--no-rtcp", action="store_true", help="send no sender reports")
    parser.add_argument("--sr-interval", type=float, default=1.0, help="seconds (1)")
    parser.add_argument("--clock-offset", type=float, default=0.0, help="seconds (0)")
    parser.add_argument("--rtp-drift", type=float, default=0.0, help="0.01: 1%% fast")
    parser.add_argument("--skip-late", action="store_true", help="no bursts after a stall")
    return parser.parse_args(argv)


async def _serve_forever(args: argparse.Namespace) -> None:
    server = RtspTestServer(
        args.port,
        width=args.width,
        height=args.height,
        fps=args.fps,
        rtcp=not args.no_rtcp,
        clock_offset_s=args.clock_offset,
        gop=args.gop,
        sr_interval_s=args.sr_interval,
        rtp_drift=args.rtp_drift,
        skip_late=args.skip_late,
    )
    await server.start()
    print(f"test camera: {server.url}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(_arguments()))
