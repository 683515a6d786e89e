"""The pure access-control pieces: token file parsing, the token store and its reload,
Host/Origin matching, the bind rule, the start-up banner, CORS only when configured."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from streamseg.cli import startup_banner
from streamseg.config import Settings
from streamseg.server.app import InsecureBindError, create_app
from streamseg.server.auth import (
    ALL_SCOPES,
    AuthConfigError,
    HostPolicy,
    TokenStore,
    bind_problem,
    is_loopback,
    parse_scopes,
    parse_token_file,
    same_origin,
    split_host_header,
)

SECRET = "s3cret-0123456789-abcdef"


def test_token_file_format() -> None:
    rows = parse_token_file(
        f"""
        # comment
        robot   view,control  {SECRET}1
        ops     *             {SECRET}#with-hash
        """
    )
    assert rows == [
        ("robot", frozenset({"view", "control"}), f"{SECRET}1"),
        ("ops", ALL_SCOPES, f"{SECRET}#with-hash"),
    ]
    assert parse_scopes("VIEW, metrics") == {"view", "metrics"}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (f"robot view {SECRET} extra", "expected"),
        (f"robot fly {SECRET}", "unknown scope"),
        ("robot view short", "at least 16"),
        (f"rob/ot view {SECRET}", "the id"),
        (f"a view {SECRET}1\na view {SECRET}2", "used twice"),
    ],
)
def test_token_file_errors_name_the_line_never_the_secret(text: str, why: str) -> None:
    with pytest.raises(AuthConfigError) as err:
        parse_token_file("# header\n" + text)
    message = str(err.value)
    assert why in message and "line" in message
    assert SECRET not in message and "short" not in message.split(":")[0]


def test_lookup_and_scopes(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"viewer view {SECRET}v\n")
    store = TokenStore(f"{SECRET}env", str(path))
    assert store.configured and store.generated is None
    env, viewer = store.lookup(f"{SECRET}env"), store.lookup(f"{SECRET}v")
    assert env is not None and env.token_id == "env" and env.scopes == ALL_SCOPES
    assert viewer is not None and viewer.allows("view") and not viewer.allows("control")
    for wrong in (None, "", SECRET, f"{SECRET}v ", f"{SECRET}V", "x" * 10_000):
        assert store.lookup(wrong) is None
    assert SECRET not in repr(store.lookup(f"{SECRET}v"))
    assert SECRET not in repr(Settings(token=f"{SECRET}env"))


def test_generated_and_disabled() -> None:
    store = TokenStore()
    assert store.generated and len(store.generated) >= 40 and not store.configured
    principal = store.lookup(store.generated)
    assert principal is not None and principal.scopes == ALL_SCOPES
    assert TokenStore().generated != store.generated
    off = TokenStore(disabled=True)
    assert off.generated is None and off.lookup(None) is not None
    with pytest.raises(AuthConfigError):
        TokenStore("too-short")


def test_reload_on_change_and_revocation(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"a view {SECRET}a\n")
    path.chmod(0o600)
    store = TokenStore(None, str(path))
    assert not store.reload_if_changed()  # nothing changed
    path.write_text(f"a view {SECRET}a\nb control {SECRET}b\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse clocks
    assert store.reload_if_changed()
    assert store.lookup(f"{SECRET}b") is not None
    caplog.set_level(logging.DEBUG)
    path.write_text(f"a view {SECRET}a\nbroken line {SECRET}c here\n")
    os.utime(path, ns=(2, 2))
    store.reload_if_changed()
    assert store.lookup(f"{SECRET}a") is None  # a broken file revokes, it does not keep
    assert "line 2" in caplog.text and SECRET not in caplog.text
    path.unlink()
    store.reload_if_changed()
    assert store.lookup(f"{SECRET}a") is None
    path.write_text(f"a view {SECRET}a\n")
    path.chmod(0o644)
    assert store.reload()  # SIGHUP's path
    assert store.lookup(f"{SECRET}a") is not None
    assert "readable by other users" in caplog.text
    with pytest.raises(AuthConfigError, match="cannot be read"):
        TokenStore(None, str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("127.0.0.1:8000", ("127.0.0.1", 8000)),
        ("LocalHost.", ("localhost", None)),
        ("[::1]:80", ("::1", 80)),
        ("[::1]", ("::1", None)),
        ("cams.example.com", ("cams.example.com", None)),
        ("", None),
        ("a:b", None),
        ("[::1", None),
        ("::1", None),
        ("host:99999", None),
        ("user@host", None),
    ],
)
def test_split_host_header(value: str, parsed: tuple[str, int | None] | None) -> None:
    assert split_host_header(value) == parsed


def test_host_and_origin_policy() -> None:
    policy = HostPolicy.build("0.0.0.0", ("Cams.Example.com",), ("https://dash.example.com/",))
    for host in ("127.0.0.1:1", "localhost", "[::1]:8000", "cams.example.com:443"):
        assert policy.host_allowed(host), host
    for host in (None, "", "evil.example", "0.0.0.0:8000", "127.0.0.1.evil.example"):
        assert not policy.host_allowed(host), host
    assert HostPolicy.build("10.0.0.5", (), ()).host_allowed("10.0.0.5:8000")
    assert HostPolicy.build("127.0.0.1", ("*",), ()).host_allowed("anything")
    assert policy.origin_allowed("https://dash.example.com", "cams.example.com")
    assert policy.origin_allowed("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert not policy.origin_allowed("http://127.0.0.1:8001", "127.0.0.1:8000")
    assert same_origin("https://cams.example.com", "cams.example.com")
    for origin in ("null", "file://", "http://evil.example", "http://x:notaport", "ws://a"):
        assert not same_origin(origin, "127.0.0.1:8000"), origin


def test_bind_rule() -> None:
    generated, configured = TokenStore(), TokenStore(SECRET)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert is_loopback(host) and bind_problem(host, generated) is None
    for host in ("0.0.0.0", "::", "192.168.1.20", "cams.example.com"):
        problem = bind_problem(host, generated)
        assert problem is not None and "--insecure-no-auth-on-network" in problem
        assert bind_problem(host, configured) is None
        assert bind_problem(host, TokenStore(disabled=True)) is None
    with pytest.raises(InsecureBindError):
        create_app(Settings(host="0.0.0.0", token=None))


def test_startup_banner() -> None:
    settings = Settings(host="0.0.0.0", port=8123)
    store = TokenStore()
    banner = startup_banner(settings, store)
    assert f"http://127.0.0.1:8123/#token={store.generated}" in banner
    configured = startup_banner(settings, TokenStore(SECRET))
    assert SECRET not in configured and "#token=<your token>" in configured
    assert "AUTHENTICATION IS OFF" in startup_banner(settings, TokenStore(disabled=True))
    assert "http://[::1]:8123/" in startup_banner(Settings(host="::1", port=8123), store)


def test_cors_only_when_configured() -> None:
    """No lifespan here: the checks run before any route needs the model."""
    preflight = {
        "Origin": "https://dash.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    plain = TestClient(create_app(Settings(token=SECRET)), base_url="http://127.0.0.1")
    r = plain.options("/v1/streams", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    r = plain.post("/v1/streams", json={}, headers={"Origin": "https://dash.example.com"})
    assert r.status_code == 403 and r.json()["detail"]["code"] == "bad_origin"

    app = create_app(Settings(token=SECRET, allowed_origins=("https://dash.example.com",)))
    cors = TestClient(app, base_url="http://127.0.0.1")
    r = cors.options("/v1/streams", headers=preflight)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://dash.example.com"
    r = cors.post("/v1/streams", json={}, headers={"Origin": "https://dash.example.com"})
    assert r.status_code == 401  # the origin may ask; it still needs a token
    r = cors.get("/v1/info", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
