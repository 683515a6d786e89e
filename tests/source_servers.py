"""Real servers on 127.0.0.1 for source tests: plain and TLS HTTP over a folder (with a
redirect and an auth-required path), a TCP listener that records what arrives, and
files an attacker would offer (a certificate for another name, a huge-declared PNG)."""

from __future__ import annotations

import contextlib
import datetime
import functools
import socket
import ssl
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import BaseRequestHandler

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A certificate (and key) for `name` only, signed by itself."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class _Handler(SimpleHTTPRequestHandler):
    """Files from a folder; `/redirect/<x>` answers 302 to `redirect_to + x`,
    `/private/...` 401 unless it carries Basic credentials."""

    redirect_to = ""
    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", self.redirect_to + self.path[len("/redirect/") :])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/private/"):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="cam"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def http_server(
    root: Path, cert: tuple[Path, Path] | None = None, redirect_to: str = ""
) -> Iterator[tuple[str, list[str]]]:
    """Serves `root` on 127.0.0.1 (TLS with `cert`); yields its base URL and the list
    of request paths it received."""
    requests: list[str] = []
    handler_class = type("Handler", (_Handler,), {"redirect_to": redirect_to, "requests": requests})
    handler = functools.partial(handler_class, directory=str(root))
    with serving(handler, cert) as base:
        yield base, requests


@contextlib.contextmanager
def serving(
    handler: Callable[..., BaseRequestHandler], cert: tuple[Path, Path] | None
) -> Iterator[str]:
    """`handler` served on 127.0.0.1 in a thread (TLS with `cert`); yields the base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    scheme = "http"
    if cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert[0]), str(cert[1]))
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{scheme}://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class TcpRecorder:
    """Accepts TCP connections on 127.0.0.1 and keeps every byte received: shows
    whether a refused source was contacted at all, and what reached it."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen()
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self.connections = 0
        self.received = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.settimeout(0.5)
            with conn, contextlib.suppress(OSError):
                while chunk := conn.recv(4096):
                    self.received += chunk

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()


def huge_png(path: Path, width: int, height: int) -> Path:
    """A small PNG (black RGB, deflated) that declares `width` x `height`."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    deflate = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)
    body = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    return path


SECRET_TEXT = "db_password=hunter2 TOP SECRET -- do not render\n" * 80
