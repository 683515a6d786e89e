from __future__ import annotations

import pytest

from streamseg.cli import _settings_from, build_parser
from streamseg.config import Settings


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSEG_PORT", "9001")
    monkeypatch.setenv("STREAMSEG_MAX_PEERS", "3")
    monkeypatch.setenv("STREAMSEG_ICE_HOSTS", "127.0.0.1, ::1")
    args = build_parser().parse_args(
        ["serve", "--model", "test", "--weights", "random", "--max-peers", "5",
         "--max-frame-side", "1920"]
    )  # fmt: skip
    s = _settings_from(args)
    assert (s.port, s.max_peers, s.max_frame_side, s.model) == (9001, 5, 1920, "test")
    assert s.ice_hosts == ("127.0.0.1", "::1")


def test_defaults() -> None:
    s = Settings.from_env()
    assert s.host == "127.0.0.1" and s.weights == "official" and s.ice_servers == ()
    assert s.resolved_device() in ("cpu", "cuda")


def test_bench_modes_exist() -> None:
    parser = build_parser()
    for mode in ("tracker", "server", "browser", "websocket"):
        assert parser.parse_args(["bench", mode]).mode == mode
