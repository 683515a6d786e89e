"""Fetch the image a client names by URL (`image_url` on /v1/segment), fenced in by the
camera source policy (`media/source_policy.py`).

A URL from a client makes the server a client of whatever it names, so:

- http and https only (and only those of the policy's schemes);
- the host name is resolved once and every address it resolves to must pass the host
  policy (metadata and link-local never, loopback only when allowed, the allow/deny
  lists); the connection then goes to one of those checked addresses, with the name in
  the `Host` header and in TLS (SNI and certificate check), so a second DNS answer
  cannot point it elsewhere; a refused address is never connected to;
- redirects only to the same host (same scheme and port, or http -> https:443), each
  checked and pinned like the first URL, at most `max_redirects`;
- the body is limited to `max_bytes`: a larger Content-Length is refused before the
  body is read, a longer body (chunked, or a lying length) as soon as it passes the
  limit; content codings are not accepted (a small gzip body can inflate without
  bound), so the bytes counted are the bytes decoded;
- one deadline for all of it (DNS, connect, TLS, redirects, body);
- every failure is a `FetchError` with a fixed code and `Reason`, and a message that
  names a URL only as `shown_url()` writes it (no credentials, no query).

The URL rules and the redirect rule are pure functions; `fetch_image` does the I/O on
the event loop (DNS in the loop's executor), so a slow server never blocks it."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, TypeAlias

import httpx

from streamseg.media.source_policy import (
    Reason,
    SourceError,
    SourcePolicy,
    check_addresses,
    control_characters,
    redact,
)
from streamseg.protocol.error_codes import ERROR_CODES

log = logging.getLogger(__name__)

FETCH_SCHEMES: Final = ("http", "https")
MAX_URL_CHARS: Final = 4096
USER_AGENT: Final = "streamseg-image-fetch"

Resolver: TypeAlias = Callable[[str, int], Awaitable[list[str]]]
"""Host name and port -> the addresses to check and connect to (default: the system's)."""

FETCH_CODES: Final = (
    "fetch_disabled",
    "source_forbidden",
    "bad_url",
    "redirect_refused",
    "fetch_failed",
    "timeout",
    "too_large",
)
"""The codes a refused image URL gets (the route answers `fetch_disabled` itself)."""


class FetchError(Exception):
    """An image URL that was not fetched: `code` (one of `FETCH_CODES`), `reason` (the
    source policy's vocabulary) and a message without credentials."""

    def __init__(self, code: str, message: str, reason: Reason) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason

    @property
    def status(self) -> int:
        return ERROR_CODES[self.code].status


@dataclass(frozen=True, slots=True)
class FetchLimits:
    max_bytes: int
    timeout_s: float
    max_redirects: int = 3


# ---- pure rules ------------------------------------------------------------------------


def parse_image_url(url: str, policy: SourcePolicy) -> httpx.URL:
    """The URL if it may be fetched as far as its text says, else `FetchError`."""
    if len(url) > MAX_URL_CHARS:
        raise FetchError(
            "bad_url", f"the URL is longer than {MAX_URL_CHARS} characters", Reason.BAD_URL
        )
    if control_characters(url) or any(c.isspace() for c in url):
        raise FetchError(
            "bad_url", "control characters and spaces are not allowed in a URL", Reason.BAD_URL
        )
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise FetchError("bad_url", "the URL is malformed", Reason.BAD_URL) from None
    allowed = [s for s in FETCH_SCHEMES if s in policy.schemes]
    if parsed.scheme not in allowed:
        names = ", ".join(f"{s}://" for s in allowed) or "none (the source policy allows neither)"
        raise FetchError(
            "bad_url",
            f"an image URL must be {names}, got {parsed.scheme or 'no scheme'!r}",
            Reason.UNSUPPORTED,
        )
    if not parsed.host:
        raise FetchError("bad_url", "the URL has no host", Reason.BAD_URL)
    return parsed


def shown_url(url: str | httpx.URL) -> str:
    """A URL for messages and logs: credentials hidden (`redact`) and no query or
    fragment, which may carry signatures in forms `redact` cannot recognise."""
    text = str(url).split("#", 1)[0]
    base, has_query, _ = text.partition("?")
    return redact(base) + ("?..." if has_query else "")


def port_of(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def wire_host(url: httpx.URL) -> str:
    """The host as it goes into DNS, `Host` and SNI: ASCII (an IDN as `xn--` labels;
    `url.host` gives it decoded, which a header cannot carry)."""
    return url.raw_host.decode("ascii")


def host_header(url: httpx.URL) -> str:
    host = wire_host(url)
    host = f"[{host}]" if ":" in host else host
    return host if url.port is None else f"{host}:{url.port}"


def redirect_target(current: httpx.URL, location: str | None) -> httpx.URL:
    """Where a 3xx may lead: the same host, with the same scheme and port or upgraded
    from http to https on port 443; anything else is `redirect_refused`."""
    if not location:
        raise FetchError("fetch_failed", "a redirect without a Location", Reason.REJECTED)
    try:
        target = current.join(location)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise FetchError(
            "redirect_refused", "a redirect to a malformed URL", Reason.REDIRECT
        ) from None
    same_origin = (target.scheme, target.host, port_of(target)) == (
        current.scheme,
        current.host,
        port_of(current),
    )
    upgrade = (current.scheme, target.scheme, port_of(target)) == ("http", "https", 443) and (
        target.host == current.host
    )
    if not (same_origin or upgrade):
        raise FetchError(
            "redirect_refused",
            f"the image URL redirects to {shown_url(target)}; only redirects to the "
            "same host are followed",
            Reason.REDIRECT,
        )
    return target


def declared_size_refusal(headers: httpx.Headers, max_bytes: int) -> FetchError | None:
    """A refusal from the response headers alone: a Content-Length over the limit, or
    a content coding (its decoded size is unknown until decoded)."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        return FetchError(
            "too_large",
            f"the image is {int(declared)} bytes; the limit is {max_bytes}",
            Reason.TOO_LARGE,
        )
    coding = headers.get("content-encoding", "identity").strip().lower()
    if coding not in ("", "identity"):
        return FetchError(
            "fetch_failed",
            f"the server sent the image with content coding {coding!r}; only identity is accepted",
            Reason.UNSUPPORTED,
        )
    return None


def status_refusal(status: int) -> FetchError | None:
    if 200 <= status < 300:
        return None
    reason = Reason.REJECTED
    if status in (401, 403):
        reason = Reason.AUTH_FAILED
    elif status == 404:
        reason = Reason.NOT_FOUND
    elif status >= 500:
        reason = Reason.SERVER_ERROR
    return FetchError("fetch_failed", f"the image URL answered HTTP {status}", reason)


# ---- I/O -----------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Made once per CA file: loading a CA bundle takes ~60 ms (`_fetch` calls this
    off the event loop)."""
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    return httpx.create_ssl_context(trust_env=False)  # certifi's bundle


async def system_resolver(host: str, port: int) -> list[str]:
    """The system's answer (getaddrinfo in the loop's executor), each address once."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def _checked_addresses(url: httpx.URL, policy: SourcePolicy, resolve: Resolver) -> list[str]:
    """The addresses the host resolves to now, each allowed by the policy."""
    try:
        addresses = await resolve(wire_host(url), port_of(url))
    except (OSError, UnicodeError):
        raise FetchError(
            "fetch_failed", "the host name does not resolve", Reason.UNREACHABLE
        ) from None
    try:
        check_addresses(url.host, addresses, policy)
    except SourceError as exc:
        code = "source_forbidden" if exc.reason is Reason.FORBIDDEN else "fetch_failed"
        raise FetchError(code, str(exc), exc.reason) from None
    return addresses


async def _read_limited(response: httpx.Response, max_bytes: int) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > max_bytes:
            raise FetchError(
                "too_large",
                f"the image is larger than the limit of {max_bytes} bytes",
                Reason.TOO_LARGE,
            )
    return bytes(body)


async def _get_pinned(
    client: httpx.AsyncClient, url: httpx.URL, addresses: list[str], max_bytes: int
) -> tuple[int, httpx.Headers, bytes]:
    """GET `url` from the first checked address that accepts a connection; the body
    only for a 2xx answer."""
    headers = {
        "Host": host_header(url),
        "User-Agent": USER_AGENT,
        "Accept": "image/*",
        "Accept-Encoding": "identity",
    }
    extensions = {"sni_hostname": wire_host(url)} if url.scheme == "https" else {}
    last: httpx.ConnectError | None = None
    for address in addresses:
        request = client.build_request(
            "GET", url.copy_with(host=address), headers=headers, extensions=extensions
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.ConnectError as exc:
            last = exc
            continue
        try:
            if 300 <= response.status_code < 400:
                return response.status_code, response.headers, b""
            refusal = status_refusal(response.status_code) or declared_size_refusal(
                response.headers, max_bytes
            )
            if refusal is not None:
                raise refusal
            body = await _read_limited(response, max_bytes)
            return response.status_code, response.headers, body
        finally:
            await response.aclose()
    reason = _connect_reason(last)
    raise FetchError("fetch_failed", _CONNECT_TEXT[reason], reason)


def _connect_reason(exc: BaseException | None) -> Reason:
    """What broke a connection, from the OSError under httpx's and httpcore's."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, ssl.SSLError):
            return Reason.TLS
        if isinstance(exc, ConnectionRefusedError):
            return Reason.REFUSED
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return Reason.UNREACHABLE


_CONNECT_TEXT = {
    Reason.TLS: "the image server's TLS certificate is not trusted for its host name",
    Reason.REFUSED: "the image server refused the connection",
    Reason.UNREACHABLE: "the image server cannot be reached",
}


async def _fetch(
    url: httpx.URL, policy: SourcePolicy, limits: FetchLimits, resolve: Resolver
) -> bytes:
    try:
        tls = await asyncio.to_thread(_tls_context, policy.ca_file)
    except (OSError, ssl.SSLError):
        log.error("image fetch: the CA file of the source policy cannot be loaded")
        raise FetchError(
            "fetch_failed",
            "the server's CA file for sources (source_ca_file) cannot be loaded",
            Reason.TLS,
        ) from None
    async with httpx.AsyncClient(
        trust_env=False,  # no proxy from the environment: it would connect elsewhere
        follow_redirects=False,
        verify=tls,
        timeout=limits.timeout_s,
    ) as client:
        for _ in range(limits.max_redirects + 1):
            addresses = await _checked_addresses(url, policy, resolve)
            status, headers, body = await _get_pinned(client, url, addresses, limits.max_bytes)
            if not 300 <= status < 400:
                return body
            url = redirect_target(url, headers.get("location"))
    raise FetchError(
        "redirect_refused", f"more than {limits.max_redirects} redirects", Reason.REDIRECT
    )


async def fetch_image(
    url: str, policy: SourcePolicy, limits: FetchLimits, resolve: Resolver = system_resolver
) -> bytes:
    """The bytes `url` names, at most `limits.max_bytes`, within `limits.timeout_s`;
    `FetchError` otherwise. The bytes are not decoded here. The connection goes only
    to addresses `resolve` gave and the policy allowed."""
    parsed = parse_image_url(url, policy)
    try:
        async with asyncio.timeout(limits.timeout_s):
            return await _fetch(parsed, policy, limits, resolve)
    except (TimeoutError, httpx.TimeoutException):
        raise FetchError(
            "timeout", f"the image was not fetched within {limits.timeout_s:g} s", Reason.TIMEOUT
        ) from None
    except httpx.HTTPError:
        raise FetchError(
            "fetch_failed", "the image server broke off the transfer", Reason.UNREACHABLE
        ) from None
