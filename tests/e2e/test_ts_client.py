"""A client in another language, generated from the published schema, reads a live
frame: the real server on loopback, a looping file stream with a prompted track, a
plain `websockets` client that authenticates as a browser would (subprotocols), and a
TypeScript program whose types json-schema-to-typescript generated from the schema the
server serves. tsc typechecks it; node runs it: it parses the binary message (length
prefix + JSON header), validates the header with ajv against the same schema and
reads typed fields, which must equal what the Python decoder reads."""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from streamseg.media.synthetic import write_h264
from streamseg.protocol.messages import decode_frame_message
from streamseg.server.background import running_server
from tests.auth_helpers import AUTH, TOKEN

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
TS_DIR = REPO / "tests" / "protocol" / "ts"
NODE = shutil.which("node")


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    return subprocess.run(
        [NODE, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def ts_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build folder with the check program and the npm packages; skipped without node."""
    if NODE is None:
        pytest.skip("node is not installed: the TypeScript client check needs node 18+ and npm")
    if not (TS_DIR / "node_modules" / "typescript").is_dir():
        pytest.fail("the TypeScript check's npm packages are missing: run scripts/test-deps.sh")
    build = tmp_path_factory.mktemp("ts")
    (build / "node_modules").symlink_to(TS_DIR / "node_modules")
    for name in ("check_frame.ts", "tsconfig.json"):
        shutil.copy(TS_DIR / name, build / name)
    return build


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("media")
    clip = root / "clip.mp4"
    write_h264(str(clip), 160, 120, 60)
    with running_server(source_media_root=str(root)) as (url, _):
        yield url, clip


def _prompted_stream(http: httpx.Client, clip: Path) -> str:
    created = http.post("/v1/streams", json={"url": str(clip), "options": {"loop": True}})
    assert created.status_code == 201, created.text
    sid: str = created.json()["id"]
    deadline = time.time() + 60
    while http.get(f"/v1/streams/{sid}/frame.jpg").status_code != 200:
        assert time.time() < deadline, "the stream processed no frame"
        time.sleep(0.1)
    body = {"type": "prompt", "box": [40, 30, 120, 90], "request_id": "ts"}
    ack = http.post(f"/v1/streams/{sid}/prompts", json=body)
    assert ack.status_code == 200, ack.text
    return sid


async def _frame_with_a_track(ws_url: str) -> bytes:
    """The first binary frame message that carries a track and its mask, read by a
    client offering the two subprotocols (token in the second), as a browser does."""
    protocols: Any = ["streamseg.v1", f"streamseg.bearer.{TOKEN}"]
    async with websockets.connect(ws_url, subprotocols=protocols, compression=None) as ws:
        assert ws.subprotocol == "streamseg.v1"
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "hello"
        deadline = time.time() + 30
        while time.time() < deadline:
            data = await asyncio.wait_for(ws.recv(), 10)
            if isinstance(data, bytes):
                msg, masks = decode_frame_message(data)
                if msg.tracks and masks:
                    return data
    raise AssertionError("no frame message with a track within 30 s")


def _tampered(data: bytes, change: dict[str, Any]) -> bytes:
    (size,) = struct.unpack_from(">I", data)
    header = json.loads(data[4 : 4 + size])
    header.update(change)
    head = json.dumps(header).encode()
    return struct.pack(">I", len(head)) + head + data[4 + size :]


def test_typescript_client_reads_a_live_frame_header(
    server: tuple[str, Path], ts_build: Path
) -> None:
    url, clip = server
    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as http:
        schema = http.get("/v1/protocol/schemas/frame_header.json")
        assert schema.status_code == 200, schema.text
        sid = _prompted_stream(http, clip)
        ws_url = url.replace("http://", "ws://") + f"/v1/streams/{sid}/masks?encoding=rle"
        data = asyncio.run(_frame_with_a_track(ws_url))
        http.delete(f"/v1/streams/{sid}")
    (ts_build / "frame_header.json").write_text(schema.text)
    (ts_build / "message.bin").write_bytes(data)

    generator = "node_modules/json-schema-to-typescript/dist/src/cli.js"
    made = _run(generator, "-i", "frame_header.json", "-o", "frame_header.ts", cwd=ts_build)
    assert made.returncode == 0, made.stderr
    assert "export interface FrameHeader" in (ts_build / "frame_header.ts").read_text()
    compiled = _run("node_modules/typescript/bin/tsc", "-p", ".", cwd=ts_build)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr

    ran = _run("out/check_frame.js", "frame_header.json", "message.bin", cwd=ts_build)
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout)
    msg, masks = decode_frame_message(data)
    assert masks is not None
    assert seen["seq"] == msg.seq and (seen["width"], seen["height"]) == (msg.width, msg.height)
    assert seen["capture_ts"] == msg.times.capture_ts and seen["encoding"] == "rle"
    assert seen["track_ids"] == [t.track_id for t in msg.tracks]
    assert seen["bboxes"] == [None if t.bbox is None else list(t.bbox) for t in msg.tracks]
    (size,) = struct.unpack_from(">I", data)
    header = json.loads(data[4 : 4 + size])
    assert seen["masks"] == [t["mask"] for t in header["tracks"]]
    assert seen["payload_bytes"] == len(data) - 4 - size

    # The same program refuses what the schema refuses: another version, a bad box.
    for change in ({"v": 2}, {"tracks": [{**header["tracks"][0], "bbox": [1, 2, 3]}]}):
        (ts_build / "bad.bin").write_bytes(_tampered(data, change))
        refused = _run("out/check_frame.js", "frame_header.json", "bad.bin", cwd=ts_build)
        assert refused.returncode == 1 and "schema refused" in refused.stderr, (change, refused)
