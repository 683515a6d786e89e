"""The streams file parser (pure): fixtures in tests/server/fixtures/streams, each bad
one saying on its first line which line and reason it must be refused with."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streamseg.media.source_policy import SourcePolicy
from streamseg.server.routes_streams import StreamOptions
from streamseg.server.streams_file import (
    InitialPrompt,
    StreamDefinition,
    StreamsFileError,
    dump_streams_file,
    escape,
    expand,
    parse_streams_file,
    stream_id_problem,
    with_stream,
    without_stream,
)

FIXTURES = Path(__file__).parent / "fixtures" / "streams"
SECRET = "hunter2-secret"
ENV = {"DOCK_PASSWORD": SECRET}
BAD = sorted(p for p in FIXTURES.glob("*.yaml") if p.read_text().startswith("# expect:"))


def _parse(text: str, env: dict[str, str] | None = None) -> list[StreamDefinition]:
    return parse_streams_file(
        text, ENV if env is None else env, policy=SourcePolicy(), validate_options=_validate
    )


def _validate(options: dict[str, object]) -> object:
    return StreamOptions.model_validate(options)


def test_valid_file() -> None:
    dock, gate = _parse((FIXTURES / "valid.yaml").read_text())
    assert dock.id == "dock" and dock.line == 4 and dock.name == "Dock camera"
    assert dock.url == f"rtsp://viewer:{SECRET}@192.168.1.20:554/live"
    assert dock.url_template == "rtsp://viewer:${DOCK_PASSWORD}@192.168.1.20:554/live"
    assert dock.public_url == "rtsp://viewer:***@192.168.1.20:554/live"
    assert SECRET not in repr(dock)
    assert dict(dock.options) == {"stall_timeout_s": 3, "transport": "udp"}
    assert dock.prompts == (
        InitialPrompt((300.0, 160.0, 390.0, 240.0)),
        InitialPrompt((10.0, 10.0, 90.0, 120.0), 7),
    )
    assert gate.id == "gate-2" and gate.url == "http://cams.example.com/gate?price=$5"
    assert gate.options == {} and gate.prompts == () and gate.name is None


def test_an_empty_file_declares_nothing() -> None:
    assert _parse((FIXTURES / "empty.yaml").read_text()) == []
    assert _parse("") == [] and _parse("streams:\n") == [] and _parse("streams: []") == []


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_files_name_the_line_and_reason(path: Path) -> None:
    text = path.read_text()
    expected = re.match(r"# expect: (\d+): (.*)", text)
    assert expected is not None
    with pytest.raises(StreamsFileError) as caught:
        _parse(text)
    error = caught.value
    assert error.line == int(expected.group(1)), str(error)
    assert expected.group(2) in error.reason
    assert str(error.at("/etc/streams.yaml")).startswith(f"/etc/streams.yaml:{error.line}: ")


def test_errors_never_quote_a_secret() -> None:
    text = "streams:\n  - id: dock\n    url: rtsp://u:${DOCK_PASSWORD}@169.254.169.254/live\n"
    with pytest.raises(StreamsFileError) as caught:
        _parse(text)
    assert SECRET not in str(caught.value) and caught.value.line == 3
    spaced = "streams:\n  - id: dock\n    url: rtsp://u:${DOCK_PASSWORD}@host name/live\n"
    with pytest.raises(StreamsFileError) as caught:
        _parse(spaced)
    assert SECRET not in str(caught.value)


def test_placeholders() -> None:
    assert expand("a${X}b$$c${Y}", {"X": "1", "Y": "2"}) == "a1b$c2"
    assert expand("$5 and $ alone", {}) == "$5 and $ alone"
    with pytest.raises(KeyError):
        expand("${MISSING}", {})
    with pytest.raises(ValueError, match="placeholder"):
        expand("${not valid}", {})
    literal = "http://h/p?x=${HOME}&y=$$"
    assert expand(escape(literal), {"HOME": "/root"}) == literal


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("dock", True),
        ("Dock_Cam-2", True),
        ("7", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ("", False),
        ("-dock", False),
        ("dock cam", False),
        ("dock/1", False),
        ("dock.1", False),
        ("døck", False),
        ("s1", False),
        ("s12", False),
        ("s1a", True),
        (12, False),
    ],
)
def test_stream_ids(value: object, ok: bool) -> None:
    assert (stream_id_problem(value) is None) is ok


def test_round_trip_keeps_placeholders_and_order() -> None:
    definitions = _parse((FIXTURES / "valid.yaml").read_text())
    text = dump_streams_file(definitions)
    assert SECRET not in text and "${DOCK_PASSWORD}" in text and text.startswith("#")
    again = _parse(text)
    assert again == [
        StreamDefinition(d.id, d.url_template, d.url, d.name, d.options, d.prompts, a.line)
        for d, a in zip(definitions, again, strict=True)
    ]


def test_adding_replacing_and_removing() -> None:
    dock, gate = _parse((FIXTURES / "valid.yaml").read_text())
    new = StreamDefinition("yard", escape("rtsp://10.0.0.9/x?a=$b"), "rtsp://10.0.0.9/x?a=$b")
    assert [d.id for d in with_stream([dock, gate], new)] == ["dock", "gate-2", "yard"]
    moved = StreamDefinition("dock", "rtsp://10.0.0.1/live", "rtsp://10.0.0.1/live")
    assert with_stream([dock, gate], moved) == [moved, gate]
    assert without_stream([dock, gate], "dock") == [gate]
    written = _parse(dump_streams_file(with_stream([dock, gate], new)), ENV)
    assert written[-1].url == "rtsp://10.0.0.9/x?a=$b"


def test_a_file_without_options_validator_or_policy() -> None:
    """The parser needs neither: the server passes its own."""
    text = "streams:\n  - id: dock\n    url: rtsp://127.0.0.1/live\n    options: {anything: 1}\n"
    (only,) = parse_streams_file(text, {})
    assert only.options == {"anything": 1}
