"""`streamseg bench browser`: the browser demo in headless Chromium with a fake camera
whose frames carry a frame-index barcode; prints true round-trip latency (camera frame
shown locally -> the same frame shown back with overlays) and the received frame rate.

Everything runs in a private network namespace with only loopback up (re-executed
under `unshare -n` when needed), so nothing is sent to another address.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from streamseg.media.synthetic import draw_barcode, scene_frame, write_y4m

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
]  # fmt: skip


def camera_clip(width: int = 640, height: int = 480, count: int = 150) -> list[np.ndarray]:
    return [draw_barcode(scene_frame(i, height, width), i) for i in range(count)]


async def launch(clip: Path) -> Any:
    from playwright.async_api import async_playwright

    pw = await async_playwright().start()
    browser = await pw.chromium.launch(
        executable_path=CHROMIUM,
        args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-video-capture={clip}"],
    )
    return pw, browser


async def measure(seconds: float, model: str, image_size: int | None) -> dict[str, Any]:
    from streamseg.server.background import running_server, server_token

    overrides: dict[str, Any] = {"model": model}
    if image_size:
        overrides["image_size"] = image_size
    with tempfile.TemporaryDirectory() as tmp, running_server(**overrides) as (url, runtime):
        clip = Path(tmp) / "camera.y4m"
        write_y4m(str(clip), camera_clip())
        pw, browser = await launch(clip)
        try:
            page = await browser.new_page()
            await page.goto(f"{url}/?probe#token={server_token(runtime)}")
            await page.click("#connect")
            await page.wait_for_function(
                "window.streamseg.connected && window.streamseg.framesShown > 10", timeout=60_000
            )
            await page.evaluate("window.streamseg.rttSamples.length = 0")
            start = await page.evaluate("window.streamseg.framesShown")
            await asyncio.sleep(seconds)
            shown = await page.evaluate("window.streamseg.framesShown") - start
            rtt = await page.evaluate("window.streamseg.rttSamples")
        finally:
            await browser.close()
            await pw.stop()
    return {
        "model": model,
        "seconds": seconds,
        "fps_received": shown / seconds,
        "rtt_samples": len(rtt),
        "rtt_p50_ms": float(np.percentile(rtt, 50)) if rtt else None,
        "rtt_p90_ms": float(np.percentile(rtt, 90)) if rtt else None,
    }


def run_browser_bench(args: argparse.Namespace) -> dict[str, Any]:
    if os.environ.get("STREAMSEG_NETNS") != "1":
        if not shutil.which("unshare"):
            raise SystemExit("bench browser needs `unshare` (util-linux) for a private network")
        command = " ".join([sys.executable, "-m", "streamseg.cli", *sys.argv[1:]])
        os.execvp(
            "unshare",
            ["unshare", "-n", "sh", "-c", f"ip link set lo up && STREAMSEG_NETNS=1 exec {command}"],
        )
    report = asyncio.run(measure(args.seconds, args.model or "test", args.image_size))
    print(
        f"browser bench ({report['model']} model, {report['seconds']:.0f} s, 640x480 fake camera "
        f"at 30 fps): received {report['fps_received']:.1f} fps, round trip p50 "
        f"{report['rtt_p50_ms']:.0f} ms, p90 {report['rtt_p90_ms']:.0f} ms "
        f"({report['rtt_samples']} samples)"
    )
    return {"mode": "browser", **report}
