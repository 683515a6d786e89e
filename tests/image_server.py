"""An HTTP(S) image server on 127.0.0.1 with the misbehaviours an image URL may meet:
redirects, error statuses, a content coding, a huge declared length, an endless body
without a length, a trickling body. It records what it received and what it sent."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
from PIL import Image

from tests.source_servers import serving


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()


@dataclass
class Seen:
    """What the server received and how much body it managed to send."""

    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Host)
    sent: dict[str, int] = field(default_factory=dict)
    broken: threading.Event = field(default_factory=threading.Event)


class _Images(BaseHTTPRequestHandler):
    """`/img.png` and the `files`; `/redirect?<location>` (302); `/status/<n>`; `/gzip`;
    `/declared-huge` (a 1 GB Content-Length, body held back 3 s); `/endless` (chunked,
    no length, until the client leaves); `/slow` (a byte every 0.2 s)."""

    protocol_version = "HTTP/1.1"
    seen: Seen
    files: dict[str, bytes]

    def do_GET(self) -> None:
        self.seen.requests.append((self.path, self.headers.get("Host", "")))
        path, _, query = self.path.partition("?")
        try:
            if path in self.files:
                self._answer(200, self.files[path], {"Content-Type": "image/png"})
            elif path == "/redirect":
                self._answer(302, b"", {"Location": query})
            elif path.startswith("/status/"):
                self._answer(int(path.rsplit("/", 1)[1]), b"no")
            elif path == "/gzip":
                self._answer(200, PNG, {"Content-Encoding": "gzip"})
            elif path == "/declared-huge":
                self._declared_huge()
            elif path == "/endless":
                self._endless()
            elif path == "/slow":
                self._slow()
            else:
                self._answer(404, b"")
        except OSError:
            self.seen.broken.set()

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _declared_huge(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(10**9))
        self.end_headers()
        self.wfile.flush()
        time.sleep(3)
        self._send_until_broken("/declared-huge", lambda block: block)

    def _endless(self) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._send_until_broken("/endless", lambda block: b"%x\r\n%s\r\n" % (len(block), block))

    def _send_until_broken(self, name: str, frame: Callable[[bytes], bytes]) -> None:
        block = b"\xff" * 16384
        self.seen.sent[name] = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            self.wfile.write(frame(block))
            self.seen.sent[name] += len(block)

    def _slow(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        for _ in range(1000):
            self.wfile.write(b"x")
            self.wfile.flush()
            time.sleep(0.2)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def image_server(
    cert: tuple[Path, Path] | None = None, files: dict[str, bytes] | None = None
) -> Iterator[tuple[str, int, Seen]]:
    """Yields the base URL on 127.0.0.1, the port and what the server saw."""
    seen = Seen()
    served = {"/img.png": PNG, **(files or {})}
    handler = type("Handler", (_Images,), {"seen": seen, "files": served})
    with serving(handler, cert) as base:
        yield base, int(base.rsplit(":", 1)[1]), seen
