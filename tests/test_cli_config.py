from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from streamseg.cli import _settings_from, build_parser, main
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


def test_bench_is_the_matrix_unless_a_mode_is_named() -> None:
    parser = build_parser()
    matrix = parser.parse_args(["bench", "--streams", "1,4", "--image-size", "512,1024"])
    assert matrix.mode is None and matrix.streams == "1,4" and matrix.image_size == "512,1024"
    for mode in ("tracker", "server", "browser", "websocket", "backend"):
        assert parser.parse_args(["bench", mode]).mode == mode
    assert parser.parse_args(["bench", "tracker", "--image-size", "256"]).image_size == 256


def test_export_then_build_engine_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`streamseg export` writes both precisions; `build-engine` on a host without
    TensorRT exits 2 with a reason instead of a traceback."""
    rc = main(["export", "--model", "test", "--weights", "random", "--image-size", "128",
               "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    folders = {line.split(": ")[0]: Path(line.split(": ")[1])
               for line in capsys.readouterr().out.splitlines()}  # fmt: skip
    assert set(folders) == {"fp32", "fp16"}
    for precision, folder in folders.items():
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["precision"] == precision and manifest["graphs"]
    rc = main(["build-engine", str(folders["fp16"])])
    err = capsys.readouterr().err
    if importlib.util.find_spec("tensorrt") is None:
        assert rc == 2 and "TensorRT is not installed" in err
    assert main(["build-engine", str(tmp_path / "nowhere")]) == 2


def test_a_bad_streams_file_stops_serve_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "streams.yaml"
    path.write_text("streams:\n  - id: dock\n    url: rtsp://u:${CAM_PASSWORD}@10.0.0.5/live\n")
    monkeypatch.delenv("CAM_PASSWORD", raising=False)
    monkeypatch.setenv("STREAMSEG_TOKEN", "t" * 32)
    assert main(["serve", "--model", "test", "--streams-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3: url of 'dock': the environment variable CAM_PASSWORD is not set" in err
    monkeypatch.setenv("STREAMSEG_STREAMS_FILE", str(path))
    assert _settings_from(build_parser().parse_args(["serve"])).streams_file == str(path)


def test_image_url_fetching_is_off_unless_turned_on(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    assert _settings_from(parser.parse_args(["serve"])).allow_image_urls is False
    on = _settings_from(
        parser.parse_args(["serve", "--allow-image-urls", "--image-fetch-timeout", "3"])
    )
    assert (on.allow_image_urls, on.image_fetch_timeout_s) == (True, 3.0)
    monkeypatch.setenv("STREAMSEG_ALLOW_IMAGE_URLS", "1")
    assert _settings_from(parser.parse_args(["serve"])).allow_image_urls is True


def test_compile_comes_from_the_flag_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    assert _settings_from(parser.parse_args(["serve"])).compile is False
    assert _settings_from(parser.parse_args(["serve", "--compile"])).compile is True
    monkeypatch.setenv("STREAMSEG_COMPILE", "1")
    assert _settings_from(parser.parse_args(["serve"])).compile is True
