"""`streamseg bench websocket`: messages per second and per-message latency to 1 and 8
robot clients, with one more client present that never reads; bytes per message with
smaller masks (`scale`, `max_side`, `crop`); and how old the results are that a plain
`websockets` client reading once a second gets, pushed (library receive queue 16 or 1)
and pulled (`delivery=pull`); and the CPU a client spends decoding and validating one
frame header, and the server one prompt (`bench.codec_cost`).

The source is a generated 640x480 H.264 file looped at 30 fps, the model the reduced
`test` one (the point is the fan-out, not the model)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import websockets

from streamseg.bench.codec_cost import codec_costs, describe
from streamseg.media.synthetic import shape_boxes, write_h264
from streamseg.protocol.messages import decode_frame_header, decode_frame_message


async def _reader(
    url: str, headers: dict[str, str], seconds: float, out: list[tuple[float, float]]
) -> None:
    async with websockets.connect(
        url, additional_headers=headers, compression=None, max_size=None
    ) as ws:
        await ws.recv()
        end = time.time() + seconds
        while time.time() < end:
            data = await asyncio.wait_for(ws.recv(), 5)
            if isinstance(data, bytes):
                msg, _ = decode_frame_message(data)
                now = time.time()
                out.append((now, now - (msg.times.sent_ts or now)))


async def _stalled(url: str, headers: dict[str, str], seconds: float) -> None:
    async with websockets.connect(
        url, additional_headers=headers, compression=None, max_queue=1
    ) as ws:
        await ws.recv()
        await asyncio.sleep(seconds)


VIEWS = ("", "&scale=0.5", "&scale=0.25", "&max_side=160", "&crop=bbox", "&scale=0.5&crop=bbox")
SLOW_MODES = {  # name -> (query, max_queue)
    "push, max_queue 16": ("", None),
    "push, max_queue 1": ("", 1),
    "pull": ("&delivery=pull", None),
}


async def _frames(url: str, headers: dict[str, str], count: int = 10) -> list[bytes]:
    """`count` binary frame messages with tracks."""
    async with websockets.connect(
        url, additional_headers=headers, compression=None, max_size=None
    ) as ws:
        await ws.recv()
        out: list[bytes] = []
        while len(out) < count:
            data = await asyncio.wait_for(ws.recv(), 5)
            if isinstance(data, bytes) and decode_frame_header(data).tracks:
                out.append(data)
        return out


async def _slow(
    url: str, headers: dict[str, str], reads: int, max_queue: int | None
) -> list[float]:
    """Ages (now - capture time) of `reads` results read once a second; a push client
    the server cuts off as too slow (its TCP buffers stayed full) ends early."""
    pull = "delivery=pull" in url
    kwargs: dict[str, Any] = {} if max_queue is None else {"max_queue": max_queue}
    ages: list[float] = []
    async with websockets.connect(
        url, additional_headers=headers, compression=None, max_size=None, **kwargs
    ) as ws:
        await ws.recv()
        with contextlib.suppress(websockets.ConnectionClosed):
            for _ in range(reads):
                if pull:
                    await ws.send('{"type": "next"}')
                while not isinstance(data := await asyncio.wait_for(ws.recv(), 10), bytes):
                    pass
                ages.append(time.time() - decode_frame_header(data).times.capture_ts)
                await asyncio.sleep(1.0)
    return ages


async def measure(seconds: float, encoding: str, slow_reads: int = 30) -> dict[str, Any]:
    from streamseg.server.background import running_server, server_token

    rows = []
    sizes: list[dict[str, Any]] = []
    slow: list[dict[str, Any]] = []
    live: list[bytes] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_server(source_media_root=tmp) as (url, runtime),  # the clip is a file source
    ):
        clip = Path(tmp) / "clip.mp4"
        write_h264(str(clip), 640, 480, 90)
        headers = {"Authorization": f"Bearer {server_token(runtime)}"}
        async with httpx.AsyncClient(base_url=url, headers=headers) as http:
            sid = (
                await http.post("/v1/streams", json={"url": str(clip), "options": {"loop": True}})
            ).json()["id"]
            await asyncio.sleep(1.5)
            for k, box in enumerate(shape_boxes(0, 480, 640)):
                await http.post(
                    f"/v1/streams/{sid}/prompts",
                    json={"type": "prompt", "track_id": k + 1, "box": list(box)},
                )
            ws_url = url.replace("http", "ws") + f"/v1/streams/{sid}/masks?encoding={encoding}"
            for clients in (1, 8):
                samples: list[list[tuple[float, float]]] = [[] for _ in range(clients)]
                await asyncio.gather(
                    _stalled(ws_url, headers, seconds + 1),
                    *(_reader(ws_url, headers, seconds, s) for s in samples),
                )
                latency = [lat for s in samples for _, lat in s]
                rows.append(
                    {
                        "clients": clients,
                        "encoding": encoding,
                        "msg_per_s_per_client": float(np.mean([len(s) / seconds for s in samples])),
                        "latency_p50_ms": float(np.percentile(latency, 50)) * 1000,
                        "latency_p99_ms": float(np.percentile(latency, 99)) * 1000,
                    }
                )
            for view in VIEWS:
                got = await _frames(ws_url + view, headers)
                name = view.lstrip("&") or "full"
                sizes.append({"view": name, "bytes_p50": float(np.median([len(g) for g in got]))})
                live = live or got
            if slow_reads > 0:
                ages = await asyncio.gather(
                    *(_slow(ws_url + q, headers, slow_reads, mq) for q, mq in SLOW_MODES.values())
                )
                fps_out = (await http.get(f"/v1/streams/{sid}")).json()["fps_out"]
                for name, aged in zip(SLOW_MODES, ages, strict=True):
                    p50, p95 = np.percentile(aged, [50, 95]) if aged else (np.nan, np.nan)
                    slow.append(
                        {
                            "mode": name,
                            "reads": len(aged),
                            "age_p50_ms": float(p50) * 1000,
                            "age_p95_ms": float(p95) * 1000,
                            "model_period_ms": 1000 / max(fps_out, 1e-3),
                        }
                    )
            await http.delete(f"/v1/streams/{sid}")
    # Measured once the server has stopped: nothing else runs on the CPU meanwhile.
    codec = codec_costs(live[-1] if live else None)
    return {"rows": rows, "sizes": sizes, "slow_plain_client": slow, "codec_us": codec}


def run_websocket_bench(args: argparse.Namespace) -> dict[str, Any]:
    measured = asyncio.run(measure(args.seconds, args.encoding, args.slow_reads))
    rows = measured["rows"]
    print("websocket fan-out (30 fps 640x480 source, 3 tracks, +1 client that never reads):")
    print(f"{'clients':>8} {'encoding':>9} {'msg/s each':>11} {'send->recv p50':>15} {'p99':>8}")
    for r in rows:
        print(
            f"{r['clients']:>8} {r['encoding']:>9} {r['msg_per_s_per_client']:>11.1f} "
            f"{r['latency_p50_ms']:>12.2f} ms {r['latency_p99_ms']:>5.2f} ms"
        )
    print(f"bytes per message ({args.encoding}, 3 tracks, 640x480):")
    for r in measured["sizes"]:
        print(f"{r['view']:>22} {r['bytes_p50']:>9.0f} B")
    print(f"decode+validate per message (this CPU): {describe(measured['codec_us'])}")
    if measured["slow_plain_client"]:
        print("a plain websockets client reading once a second (age = now - capture time):")
        for r in measured["slow_plain_client"]:
            print(
                f"{r['mode']:>22} age p50 {r['age_p50_ms']:>7.0f} ms, p95 "
                f"{r['age_p95_ms']:>7.0f} ms over {r['reads']} reads (model period "
                f"{r['model_period_ms']:.0f} ms)"
            )
    return {"mode": "websocket", **measured}
