"""`streamseg bench websocket`: messages per second and per-message latency to 1 and 8
robot clients, with one more client present that never reads.

The source is a generated 640x480 H.264 file looped at 30 fps, the model the reduced
`test` one (the point is the fan-out, not the model)."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import websockets

from streamseg.media.synthetic import shape_boxes, write_h264
from streamseg.protocol.messages import decode_frame_message


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


async def measure(seconds: float, encoding: str) -> list[dict[str, Any]]:
    from streamseg.server.background import running_server, server_token

    rows = []
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
            await http.delete(f"/v1/streams/{sid}")
    return rows


def run_websocket_bench(args: argparse.Namespace) -> dict[str, Any]:
    rows = asyncio.run(measure(args.seconds, args.encoding))
    print("websocket fan-out (30 fps 640x480 source, 3 tracks, +1 client that never reads):")
    print(f"{'clients':>8} {'encoding':>9} {'msg/s each':>11} {'send->recv p50':>15} {'p99':>8}")
    for r in rows:
        print(
            f"{r['clients']:>8} {r['encoding']:>9} {r['msg_per_s_per_client']:>11.1f} "
            f"{r['latency_p50_ms']:>12.2f} ms {r['latency_p99_ms']:>5.2f} ms"
        )
    return {"mode": "websocket", "rows": rows}
