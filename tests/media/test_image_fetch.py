"""Fetching an `image_url`: real HTTP(S) servers on 127.0.0.1, the real source policy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from streamseg.media.image_fetch import (
    FETCH_CODES,
    FetchError,
    FetchLimits,
    Resolver,
    declared_size_refusal,
    fetch_image,
    host_header,
    parse_image_url,
    redirect_target,
    shown_url,
    status_refusal,
)
from streamseg.media.source_policy import HostRule, Reason, SourcePolicy
from streamseg.protocol.error_codes import ERROR_CODES
from tests.image_server import PNG, Seen, image_server
from tests.source_servers import TcpRecorder, self_signed

LOOPBACK = SourcePolicy(allow_loopback=True)
LIMITS = FetchLimits(max_bytes=100_000, timeout_s=5.0)


@pytest.fixture
def server() -> Iterator[tuple[str, int, Seen]]:
    with image_server() as found:
        yield found


async def _refused(url: str, policy: SourcePolicy = LOOPBACK, **kwargs: object) -> FetchError:
    with pytest.raises(FetchError) as info:
        await fetch_image(url, policy, kwargs.pop("limits", LIMITS), **kwargs)  # type: ignore[arg-type]
    return info.value


def _resolving(table: dict[str, list[str]]) -> Resolver:
    """A resolver with fixed answers: a name no DNS knows can still be fetched, which
    shows the connection goes to the checked address and no second lookup happens."""

    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"{host} does not resolve")
        return table[host]

    return resolve


# ---- fetched ---------------------------------------------------------------------------


async def test_fetches_the_bytes(server: tuple[str, int, Seen]) -> None:
    base, port, seen = server
    assert await fetch_image(f"{base}/img.png", LOOPBACK, LIMITS) == PNG
    assert seen.requests == [("/img.png", f"127.0.0.1:{port}")]


async def test_connects_to_the_checked_address_with_the_name_in_host(
    server: tuple[str, int, Seen],
) -> None:
    _, port, seen = server
    resolve = _resolving({"images.invalid": ["127.0.0.1"]})
    body = await fetch_image(f"http://images.invalid:{port}/img.png", LOOPBACK, LIMITS, resolve)
    assert body == PNG and seen.requests == [("/img.png", f"images.invalid:{port}")]


async def test_an_idn_host_goes_out_in_its_ascii_form(server: tuple[str, int, Seen]) -> None:
    _, port, seen = server
    resolve = _resolving({"xn--bcher-kva.invalid": ["127.0.0.1"]})
    body = await fetch_image(f"http://bücher.invalid:{port}/img.png", LOOPBACK, LIMITS, resolve)
    assert body == PNG and seen.requests == [("/img.png", f"xn--bcher-kva.invalid:{port}")]


async def test_same_host_redirect_is_followed_and_checked_again(
    server: tuple[str, int, Seen],
) -> None:
    base, _, seen = server
    assert await fetch_image(f"{base}/redirect?/img.png", LOOPBACK, LIMITS) == PNG
    assert [p for p, _ in seen.requests] == ["/redirect?/img.png", "/img.png"]


async def test_tls_is_verified_for_the_name_on_the_pinned_address(tmp_path: Path) -> None:
    cert = self_signed(tmp_path, "localhost")
    policy = SourcePolicy(allow_loopback=True, ca_file=str(cert[0]))
    with image_server(cert) as (_, port, seen):
        # localhost may resolve to ::1 first, where nothing listens: the next address
        assert await fetch_image(f"https://localhost:{port}/img.png", policy, LIMITS) == PNG
        # The same server and address under a name its certificate does not carry.
        resolve = _resolving({"images.invalid": ["127.0.0.1"]})
        error = await _refused(f"https://images.invalid:{port}/img.png", policy, resolve=resolve)
        assert (error.code, error.reason) == ("fetch_failed", Reason.TLS)
        assert [p for p, _ in seen.requests] == ["/img.png"]


async def test_an_unreadable_ca_file_is_a_refusal_not_a_crash(
    server: tuple[str, int, Seen], tmp_path: Path
) -> None:
    base, _, seen = server
    policy = SourcePolicy(allow_loopback=True, ca_file=str(tmp_path / "missing.pem"))
    error = await _refused(f"{base}/img.png", policy)
    assert (error.code, error.reason) == ("fetch_failed", Reason.TLS)
    assert "missing.pem" not in str(error) and seen.requests == []


# ---- refused before any connection ------------------------------------------------------


async def test_loopback_is_refused_unless_allowed_without_connecting() -> None:
    recorder = TcpRecorder()
    try:
        error = await _refused(f"http://127.0.0.1:{recorder.port}/x.png", SourcePolicy())
        assert (error.code, error.status, error.reason) == ("source_forbidden", 403, "forbidden")
        assert "loopback" in str(error)
        resolve = _resolving({"cam.invalid": ["10.0.0.7", "127.0.0.1"]})
        error = await _refused(
            f"http://cam.invalid:{recorder.port}/", SourcePolicy(), resolve=resolve
        )
        assert error.code == "source_forbidden"  # every address is checked
        await asyncio.sleep(0.3)
        assert recorder.connections == 0
    finally:
        recorder.close()


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://169.254.10.1/",
        "http://[::ffff:169.254.169.254]/",
    ],
)
async def test_metadata_and_link_local_are_refused(url: str) -> None:
    open_policy = SourcePolicy(
        allow_loopback=True, allow_hosts=(HostRule.parse("169.254.169.254"),)
    )
    for policy in (SourcePolicy(), open_policy):
        error = await _refused(url, policy, limits=FetchLimits(100, timeout_s=1.0))
        assert error.code == "source_forbidden", error


async def test_deny_and_allow_lists_apply(server: tuple[str, int, Seen]) -> None:
    base, _, seen = server
    denied = SourcePolicy(allow_loopback=True, deny_hosts=(HostRule.parse("127.0.0.0/8"),))
    assert (await _refused(f"{base}/img.png", denied)).code == "source_forbidden"
    only = SourcePolicy(allow_hosts=(HostRule.parse("images.example"),))
    assert (await _refused(f"{base}/img.png", only)).code == "source_forbidden"
    assert seen.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/x.png",
        "file:///etc/passwd",
        "rtsp://127.0.0.1/cam",
        "/etc/passwd",
        "http://",
        "http://127.0.0.1/a\r\nHost: evil",
        "http://127.0.0.1/a b",
        "http://[::1/",
        "http://127.0.0.1/" + "a" * 5000,
    ],
)
async def test_bad_urls(url: str) -> None:
    error = await _refused(url)
    assert (error.code, error.status) == ("bad_url", 422)


async def test_schemes_follow_the_policy(server: tuple[str, int, Seen]) -> None:
    base, _, _ = server
    error = await _refused(f"{base}/img.png", SourcePolicy(allow_loopback=True, schemes=("rtsp",)))
    assert error.code == "bad_url" and "neither" in str(error)


# ---- redirects ------------------------------------------------------------------------


async def test_redirect_to_another_host_is_refused_and_not_contacted(
    server: tuple[str, int, Seen],
) -> None:
    base, _, _ = server
    with image_server() as (_, other_port, other_seen):
        for target in (
            f"http://localhost:{other_port}/img.png",  # another name, same machine
            f"http://127.0.0.1:{other_port}/img.png",  # another port
            "https://u:hunter2@images.example/x.png",
            "http://169.254.169.254/latest/meta-data/",
        ):
            error = await _refused(f"{base}/redirect?{target}")
            assert (error.code, error.reason) == ("redirect_refused", Reason.REDIRECT), error
            assert "hunter2" not in str(error)
        assert other_seen.requests == []


async def test_a_redirect_loop_ends(server: tuple[str, int, Seen]) -> None:
    base, _, seen = server
    error = await _refused(f"{base}/redirect?/redirect?/redirect?/redirect?/redirect?/img.png")
    assert error.code == "redirect_refused" and "more than 3" in str(error)
    assert len(seen.requests) == 4


def test_redirect_rule() -> None:
    here = httpx.URL("http://cam.example/a/b.jpg")
    assert redirect_target(here, "c.jpg") == httpx.URL("http://cam.example/a/c.jpg")
    assert redirect_target(here, "https://cam.example/b.jpg").scheme == "https"
    for location in (
        "https://cam.example:8443/b.jpg",
        "//other.example/",
        "http://cam.example:81/",
    ):
        with pytest.raises(FetchError, match="same host"):
            redirect_target(here, location)
    with pytest.raises(FetchError, match="same host"):
        redirect_target(httpx.URL("https://cam.example/"), "http://cam.example/")  # no downgrade
    with pytest.raises(FetchError) as info:
        redirect_target(here, None)
    assert info.value.code == "fetch_failed"


# ---- size and time -----------------------------------------------------------------------


async def test_declared_size_is_refused_before_the_body(server: tuple[str, int, Seen]) -> None:
    base, _, seen = server
    started = time.monotonic()
    error = await _refused(f"{base}/declared-huge")
    assert (error.code, error.status) == ("too_large", 413) and str(10**9) in str(error)
    assert time.monotonic() - started < 2.5  # the server holds its body back 3 s
    assert "/declared-huge" not in seen.sent


async def test_a_body_without_length_is_cut_at_the_limit(server: tuple[str, int, Seen]) -> None:
    base, _, seen = server
    started = time.monotonic()
    error = await _refused(f"{base}/endless", limits=FetchLimits(200_000, timeout_s=15))
    assert (error.code, error.status) == ("too_large", 413)
    assert time.monotonic() - started < 10  # refused at the limit, not at the deadline
    assert seen.broken.wait(10)  # the connection was closed on the sender
    # What the sender got out: our limit plus what the kernel buffers held.
    print(f"limit 200000 B; the sender got {seen.sent['/endless']} B out before the close")
    assert seen.sent["/endless"] < 200_000 + 16 * 2**20


async def test_the_deadline_covers_a_trickling_body(server: tuple[str, int, Seen]) -> None:
    base, _, _ = server
    started = time.monotonic()
    error = await _refused(f"{base}/slow", limits=FetchLimits(100_000, timeout_s=1.0))
    took = time.monotonic() - started
    assert (error.code, error.reason) == ("timeout", Reason.TIMEOUT)
    assert 0.9 < took < 3.0, took  # each read gets a byte: only a total deadline ends it


def test_size_and_status_rules() -> None:
    assert declared_size_refusal(httpx.Headers({"content-length": "10"}), 10) is None
    too_big = declared_size_refusal(httpx.Headers({"content-length": "11"}), 10)
    assert too_big is not None and too_big.code == "too_large"
    gzip = declared_size_refusal(httpx.Headers({"content-encoding": "gzip"}), 10)
    assert gzip is not None and gzip.code == "fetch_failed"
    assert status_refusal(204) is None
    reasons = {s: status_refusal(s) for s in (401, 404, 410, 503)}
    assert {s: e.reason for s, e in reasons.items() if e} == {
        401: Reason.AUTH_FAILED,
        404: Reason.NOT_FOUND,
        410: Reason.REJECTED,
        503: Reason.SERVER_ERROR,
    }


async def test_answers_that_are_no_image_bytes(server: tuple[str, int, Seen]) -> None:
    base, _, _ = server
    error = await _refused(f"{base}/status/404")
    assert (error.code, error.reason) == ("fetch_failed", Reason.NOT_FOUND)
    assert "404" in str(error)
    error = await _refused(f"{base}/status/500")
    assert error.reason == Reason.SERVER_ERROR
    error = await _refused(f"{base}/gzip")
    assert (error.code, error.reason) == ("fetch_failed", Reason.UNSUPPORTED)


async def test_a_closed_port_is_fetch_failed() -> None:
    recorder = TcpRecorder()
    port = recorder.port
    recorder.close()
    error = await _refused(f"http://127.0.0.1:{port}/x.png")
    assert (error.code, error.reason) == ("fetch_failed", Reason.REFUSED)


def test_url_text_rules() -> None:
    assert parse_image_url("HTTP://Cam.Example/x", SourcePolicy()).host == "cam.example"
    assert host_header(httpx.URL("http://[::1]:8080/")) == "[::1]:8080"
    assert host_header(httpx.URL("https://cam.example:443/")) == "cam.example"
    shown = shown_url("http://u:pw1@cam.example/a.jpg?next=http://v:pw2@x/#t=pw3")
    assert shown == "http://u:***@cam.example/a.jpg?..."


def test_every_fetch_code_is_in_the_one_error_table() -> None:
    assert {c: ERROR_CODES[c].status for c in FETCH_CODES} == {
        "fetch_disabled": 403,
        "source_forbidden": 403,
        "bad_url": 422,
        "redirect_refused": 422,
        "fetch_failed": 422,
        "timeout": 422,
        "too_large": 413,
    }
