"""The published protocol (docs/protocol/, docs/PROTOCOL.md's generated tables) against
the models, and the golden fixtures and the server's own messages against the published
schemas with a third-party validator (`jsonschema`, JSON Schema 2020-12)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from streamseg.protocol.doc_tables import MarkerError, fill
from streamseg.protocol.feed_contract import CLOSE_CODES, feed_query_schema
from streamseg.protocol.masks import MaskEncoding
from streamseg.protocol.publish import (
    PROTOCOL_DOC,
    PUBLISHED_DIR,
    REPO,
    SCHEMAS_DIR,
    differences,
    main,
    published_documents,
)

FIXTURES = Path(__file__).parent / "fixtures"
TS_DIR = Path(__file__).parent / "ts"
Validator = jsonschema.Draft202012Validator

# Invalid client messages a JSON Schema cannot refuse, and why (the server refuses them
# at run time with the fixture's code). Every other invalid fixture must be refused by
# the published schema; one listed here that the schema starts refusing fails the test.
RUNTIME_ONLY = {
    "box reversed": "x0 < x1 compares two items of one array",
    "box of zero height": "y0 < y1 compares two items of one array",
}
# Limits a server may configure lower than the published defaults, and frame-dependent
# checks, are runtime-only too; no golden fixture depends on them: `too_many_points`
# below `max_points` configured lower, `out_of_frame` (needs the frame's size),
# `future_frame` (needs the stream's newest frame), and a label per point (equal
# lengths of two arrays).


def _schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = published_documents().schemas[name]
    return schema


def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = _schema(name)
    Validator.check_schema(schema)
    return Validator(schema)


def _strict_json(raw: str) -> Any:
    """JSON as the server's parser reads it: no NaN/Infinity, no number beyond float
    range (Python's json module accepts both)."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text} is beyond float range")
        return value

    return json.loads(raw, parse_constant=refuse, parse_float=finite)


def _fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


# ---- the published files are what the models give -----------------------------------------


def test_committed_files_match_the_models() -> None:
    """`python -m streamseg.protocol.publish --write` after changing a model."""
    assert differences() == []


def _copy_of_the_docs(tmp_path: Path) -> Path:
    (tmp_path / PROTOCOL_DOC).parent.mkdir(parents=True)
    shutil.copy(REPO / PROTOCOL_DOC, tmp_path / PROTOCOL_DOC)
    shutil.copytree(REPO / PUBLISHED_DIR, tmp_path / PUBLISHED_DIR)
    return tmp_path


def test_check_names_each_drifted_file_and_write_mends_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy_of_the_docs(tmp_path)
    assert main(["--check", "--root", str(root)]) == 0
    schema = root / SCHEMAS_DIR / "frame_header.json"
    schema.write_text(schema.read_text().replace('"seq"', '"sequence"'))
    doc = root / PROTOCOL_DOC
    doc.write_text(doc.read_text().replace("| 4404 |", "| 4405 |"))
    (root / SCHEMAS_DIR / "gone.json").write_text("{}")
    assert main(["--check", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "frame_header.json (committed)" in err and "+| 4404 |" in err
    assert "gone.json: no message of that name" in err
    assert main(["--write", "--root", str(root)]) == 0
    assert not (root / SCHEMAS_DIR / "gone.json").exists()
    assert main(["--check", "--root", str(root)]) == 0


def test_generated_blocks_need_their_markers() -> None:
    text = "a\n<!-- generated:begin t -->\nold\n<!-- generated:end -->\nb\n"
    assert fill(text, {"t": "new"}) == text.replace("old", "new")
    with pytest.raises(MarkerError, match="'u'"):
        fill(text.replace("begin t", "begin u"), {"t": "new"})
    with pytest.raises(MarkerError, match="missing"):
        fill(text, {"t": "new", "other": "x"})


def test_protocol_doc_has_every_close_code_the_server_uses() -> None:
    from streamseg.protocol import messages

    used = {v for k, v in vars(messages).items() if k.startswith("CLOSE_")}
    assert used == {c.code for c in CLOSE_CODES if c.code is not None}
    doc = (REPO / PROTOCOL_DOC).read_text()
    assert all(f"| {code} |" in doc for code in used)


def test_asyncapi_references_resolve() -> None:
    document = published_documents().asyncapi

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                target: Any = document
                for part in ref.removeprefix("#/").split("/"):
                    assert part in target, f"{ref} does not resolve"
                    target = target[part]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_asyncapi_is_valid_against_the_asyncapi_specification(tmp_path: Path) -> None:
    """Checked with the specification's own JSON Schema (npm @asyncapi/specs) and ajv."""
    if not (TS_DIR / "node_modules" / "@asyncapi" / "specs").is_dir():
        pytest.fail("npm packages missing: run scripts/test-deps.sh")
    path = REPO / PUBLISHED_DIR / "asyncapi.json"
    node = str(shutil.which("node"))
    run = subprocess.run(
        [node, str(TS_DIR / "validate_asyncapi.js"), str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    broken = json.loads(path.read_text())
    broken["operations"]["maskFeedSendHello"]["action"] = "publish"
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    run = subprocess.run(
        [node, str(TS_DIR / "validate_asyncapi.js"), str(tmp_path / "broken.json")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 1 and "action" in run.stderr


# ---- golden fixtures against the published schemas -----------------------------------------


def test_every_published_schema_is_valid_json_schema() -> None:
    for name, schema in published_documents().schemas.items():
        Validator.check_schema(schema)
        assert schema["title"], name


@pytest.mark.parametrize("case", _fixture("client_messages_valid.json"), ids=lambda c: c["case"])
def test_valid_client_fixtures_validate(case: dict[str, Any]) -> None:
    body = _strict_json(case["raw"])
    _validator(body["type"]).validate(body)
    _validator("client_message").validate(body)


@pytest.mark.parametrize(
    "case", _fixture("client_messages_invalid.json"), ids=lambda c: c["case"][:40]
)
def test_invalid_client_fixtures_are_refused_by_the_schema(case: dict[str, Any]) -> None:
    try:
        body = _strict_json(case["raw"])
    except ValueError:  # the JSON parser refuses it before any schema applies
        assert case["code"] == "bad_json"
        return
    refused = not _validator("client_message").is_valid(body)
    if case["case"] in RUNTIME_ONLY:
        assert not refused, f"the schema now refuses {case['case']!r}: drop it from RUNTIME_ONLY"
    else:
        assert refused, f"{case['case']!r} ({case['code']}) passes the published schema"


# Edges where a schema and the parser could part: null or empty lists are absent ones.
EDGES = [
    '{"type": "prompt", "points": null, "box": [0, 0, 1, 1]}',
    '{"type": "prompt", "points": [], "box": [0, 0, 1, 1]}',
    '{"type": "prompt", "labels": [], "box": [0, 0, 1, 1]}',
    '{"type": "prompt", "points": [], "labels": null, "box": [0, 0, 1, 1]}',
    '{"type": "prompt", "points": [[1, 1]], "labels": null}',
    '{"type": "prompt", "points": [[1, 1]], "labels": [1], "box": null}',
    '{"type": "prompt", "points": null, "labels": null}',
    '{"type": "prompt", "box": null}',
    '{"type": "prompt", "track_id": 3.0, "box": [0, 0, 1, 1]}',
    '{"type": "prompt", "labels": [1.0], "points": [[1, 1]]}',
    '{"type": "remove", "track_id": 2147483647}',
    '{"type": "options", "encoding": null, "include_masks": null, "request_id": null}',
    '{"type": "reset", "request_id": "' + "r" * 128 + '"}',
    '{"type": "reset", "request_id": "' + "r" * 129 + '"}',
    '{"type": "next"}',
]


@pytest.mark.parametrize("raw", EDGES)
def test_the_schema_and_the_server_agree(raw: str) -> None:
    """What the published schema accepts, the server's parser accepts, and the other
    way round (`next` is the feed's own: refused by the every-surface union)."""
    from streamseg.protocol.prompts import PromptError, parse_client_message

    try:
        parse_client_message(raw)
        server_accepts = True
    except PromptError:
        server_accepts = False
    assert _validator("client_message").is_valid(_strict_json(raw)) == server_accepts


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("frame_header_v1*.json")), ids=str)
def test_frame_headers_of_every_revision_validate(path: Path) -> None:
    header = json.loads(path.read_text())
    _validator("frame_header").validate(header)


def test_hello_and_event_fixtures_validate() -> None:
    _validator("hello").validate(_fixture("hello_v1.json"))
    events = [json.loads(line) for line in (FIXTURES / "events_v1.jsonl").read_text().splitlines()]
    for event in events:
        name = "state_event" if event["event"] == "state" else "track_event"
        _validator(name).validate(event)


@pytest.mark.parametrize(
    "change",
    [
        {"v": 2},
        {"type": "hello"},
        {"seq": -1},
        {"width": 0},
        {"encoding": "gif"},
        {"times": {"capture_ts": 1.0}},
        {"tracks": [{"track_id": 1}]},
    ],
    ids=str,
)
def test_frame_header_schema_refuses_what_decoders_refuse(change: dict[str, Any]) -> None:
    header = {**_fixture("frame_header_v1.json"), **change}
    assert not _validator("frame_header").is_valid(header)


def test_frame_header_schema_refuses_a_bad_track() -> None:
    header = _fixture("frame_header_v1.json")
    validator = _validator("frame_header")
    for change in ({"bbox": [1, 2, 3]}, {"source": "guess"}, {"mask": {"offset": -1}}):
        track = {**header["tracks"][0], **change}
        assert not validator.is_valid({**header, "tracks": [track]}), change


# ---- the server's own messages against the published schemas ------------------------------


def _masks() -> list[np.ndarray]:
    first = np.zeros((6, 8), bool)
    first[1:4, 2:6] = True
    return [first, np.zeros((6, 8), bool)]


@pytest.mark.parametrize("encoding", list(MaskEncoding))
def test_frames_the_server_encodes_validate(encoding: MaskEncoding) -> None:
    import struct

    import msgspec

    from streamseg.protocol.messages import (
        FrameResultMessage,
        FrameTimes,
        TrackResultMeta,
        encode_frame_message,
        frame_message_json,
        reduce_masks,
    )

    times = FrameTimes(1.0, "receive", 1.0, 1.5, 2.0, 2.5)
    tracks = (
        TrackResultMeta(1, 0.9, 0.8, True, (2, 1, 6, 4), 12, "propagated", 5, 33.3),
        TrackResultMeta(2, 0.1, 0.2, False, None, 0),
    )
    msg = FrameResultMessage("cam", 7, 8, 6, times, tracks, 3, encoding, {"encoder": 1.0})
    reduced, wire = reduce_masks(msg, _masks(), scale=0.5, crop=True)
    frame_header, data_channel = _validator("frame_header"), _validator("data_channel_frame")
    for message, masks in ((msg, _masks()), (reduced, wire)):
        data = encode_frame_message(message, masks)
        (size,) = struct.unpack_from(">I", data)
        frame_header.validate(json.loads(data[4 : 4 + size]))
        text = frame_message_json(message, masks, {"video_pts": 9000}, encoding=encoding)
        data_channel.validate(json.loads(text))
    bare = msgspec.structs.replace(msg, encoding=None)
    frame_header.validate(json.loads(encode_frame_message(bare)[4:]))
    data_channel.validate(json.loads(frame_message_json(bare)))


def test_control_messages_the_server_sends_validate() -> None:
    from streamseg.protocol import messages
    from streamseg.protocol.prompts import PromptLimits

    hello = messages.hello_message(
        "cam", encoding="rle", limits=PromptLimits(), send_timeout_s=2.0, rate="model",
        state="streaming", width=640, height=480, boot_id="b", epoch="e", events=["state"],
        delivery="pull", scale=0.5, max_side=None, crop="bbox",
    )  # fmt: skip
    _validator("hello").validate(json.loads(hello))
    _validator("ack").validate(json.loads(messages.ack_message("r1", {"track_id": 1})))
    _validator("ack").validate(json.loads(messages.ack_message(None)))
    _validator("error").validate(json.loads(messages.error_message("busy", "later", "r1")))
    _validator("error").validate(json.loads(messages.internal_error_message("9cb0", None)))
    state = messages.state_event_message("cam", "stalled", "streaming", "no_frames", "quiet", 1.0)
    _validator("state_event").validate(json.loads(state))
    found = messages.track_event_message("cam", "found", 3, 812, 1.0)
    _validator("track_event").validate(json.loads(found))


# ---- the mask feed's query parameters against the server's parsers -------------------------


def test_feed_query_parameters_are_the_servers() -> None:
    from streamseg.server.feed_delivery import DELIVERIES
    from streamseg.server.mask_views import ViewError, parse_view
    from streamseg.server.source_rate_feed import RATES
    from streamseg.server.stream_events import parse_events

    query = feed_query_schema()
    props = query["properties"]
    assert props["encoding"]["enum"] == [e.value for e in MaskEncoding]
    assert tuple(props["rate"]["enum"]) == RATES
    assert tuple(props["delivery"]["enum"]) == DELIVERIES
    validator = Validator(query)
    accepted = [
        {"crop": "bbox"}, {"crop": "none"}, {"scale": 1 / 64}, {"scale": 1},
        {"max_side": 8}, {"max_side": 65536},
    ]  # fmt: skip
    refused = [{"crop": "box"}, {"scale": 0.01}, {"scale": 1.5}, {"max_side": 7}]
    for params in accepted:
        assert validator.is_valid(params)
        parse_view({k: str(v) for k, v in params.items()})
    for params in refused:
        assert not validator.is_valid(params)
        with pytest.raises(ViewError):
            parse_view({k: str(v) for k, v in params.items()})
    for events in ("", "none", "all", "state", "tracks", "state,tracks", "tracks,state"):
        assert validator.is_valid({"events": events})
        parse_events(events)
    for events in ("lost", "state,", "every"):
        assert not validator.is_valid({"events": events})
        with pytest.raises(ValueError):
            parse_events(events)
