"""A small RTSP server for tests: TCP-interleaved RTP carrying H.264 encoded by PyAV
from generated frames (RFC 2326 / RFC 6184, just what FFmpeg's client needs).

Each client gets its own encoder, so its stream starts with a keyframe. `freeze()`
keeps connections open but stops sending; `stop()` closes everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from fractions import Fraction

import av

from streamseg.media.synthetic import scene_frame

MAX_PAYLOAD = 1400


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


class RtspTestServer:
    def __init__(
        self, port: int, width: int = 320, height: int = 240, fps: int = 30, codec: str = "H264"
    ) -> None:
        self.port, self.width, self.height, self.fps, self.codec = port, width, height, fps, codec
        self.frozen = False
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

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
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
                    extra = "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n"
                elif method == "DESCRIBE":
                    body = (
                        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=streamseg test\r\n"
                        "c=IN IP4 0.0.0.0\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\n"
                        f"a=rtpmap:96 {self.codec}/90000\r\na=fmtp:96 packetization-mode=1\r\n"
                        "a=control:track0\r\n"
                    )
                    extra = f"Content-Base: {url}/\r\nContent-Type: application/sdp\r\n"
                elif method == "SETUP":
                    if "TCP" not in headers.get("Transport", ""):
                        writer.write(
                            f"RTSP/1.0 461 Unsupported Transport\r\nCSeq: {cseq}\r\n\r\n".encode()
                        )
                        await writer.drain()
                        continue
                    extra = "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\nSession: 4242\r\n"
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
                    streamer = asyncio.ensure_future(self._stream(writer))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if streamer is not None:
                streamer.cancel()
            writer.close()
            self._clients.discard(task)

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        encoder = av.CodecContext.create("libx264", "w")
        encoder.width, encoder.height, encoder.pix_fmt = self.width, self.height, "yuv420p"
        encoder.time_base = Fraction(1, self.fps)
        encoder.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(self.fps)}
        seq, start = 0, asyncio.get_running_loop().time()
        for index in range(10**9):
            await asyncio.sleep(
                max(0.0, start + index / self.fps - asyncio.get_running_loop().time())
            )
            if self.frozen:
                continue
            frame = av.VideoFrame.from_ndarray(
                scene_frame(index, self.height, self.width), format="rgb24"
            ).reformat(format="yuv420p")
            frame.pts = index
            for packet in encoder.encode(frame):
                payloads = [p for nal in _nal_units(bytes(packet)) for p in _rtp_payloads(nal)]
                for n, payload in enumerate(payloads):
                    marker = 0x80 if n == len(payloads) - 1 else 0
                    header = struct.pack(
                        ">BBHII", 0x80, marker | 96, seq & 0xFFFF, index * (90000 // self.fps), 7
                    )
                    seq += 1
                    rtp = header + payload
                    writer.write(b"$\x00" + struct.pack(">H", len(rtp)) + rtp)
            await writer.drain()


async def _serve_forever(port: int) -> None:
    server = RtspTestServer(port, width=640, height=480)
    await server.start()
    print(f"test camera: {server.url}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    import sys

    asyncio.run(_serve_forever(int(sys.argv[1]) if len(sys.argv) > 1 else 8554))
