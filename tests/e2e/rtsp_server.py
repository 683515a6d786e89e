"""A small RTSP server for tests: RTP carrying H.264 encoded by PyAV from generated
frames (RFC 2326 / RFC 6184, just what FFmpeg's client needs).

Transports: TCP interleaved (channels 0-1) and UDP (client_port=a-b). Each client gets
its own encoder, so its stream starts with a keyframe, and a random initial RTP
timestamp, like a real camera. With `rtcp=True` it sends an RTCP sender report every
second that maps RTP time to the wall clock at which each frame was generated (shifted
by `clock_offset_s`), so a reader can recover capture times. `freeze()` keeps
connections open but stops sending; `stop()` closes everything.
"""

from __future__ import annotations

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

    async def drain(self) -> None:
        if self.udp is None:
            await self.writer.drain()

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
    ) -> None:
        self.port, self.width, self.height, self.fps, self.codec = port, width, height, fps, codec
        self.rtcp, self.clock_offset_s = rtcp, clock_offset_s
        self.frozen = False
        self.transports: list[str] = []  # "tcp" | "udp" per SETUP, for tests to check
        self.frame_times: dict[int, float] = {}  # recent frame index -> wall time generated
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
        encoder.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(self.fps)}
        loop = asyncio.get_running_loop()
        seq, packets, octets = random.getrandbits(16), 0, 0
        rtp_base = random.getrandbits(32)
        start = loop.time()
        for index in range(10**9):
            await asyncio.sleep(max(0.0, start + index / self.fps - loop.time()))
            if output.writer.is_closing():
                return
            if self.frozen:
                continue
            generated = time.time()
            self.frame_times[index] = generated
            self.frame_times.pop(index - 10 * self.fps, None)
            rtp_ts = (rtp_base + index * (RTP_CLOCK // self.fps)) & 0xFFFFFFFF
            if self.rtcp and index % self.fps == 0:
                report = sender_report(generated + self.clock_offset_s, rtp_ts, packets, octets)
                output.send(1, report)
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
            await output.drain()


async def _serve_forever(port: int) -> None:
    server = RtspTestServer(port, width=640, height=480)
    await server.start()
    print(f"test camera: {server.url}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    import sys

    asyncio.run(_serve_forever(int(sys.argv[1]) if len(sys.argv) > 1 else 8554))
