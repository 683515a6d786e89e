"""Shutdown drains: /readyz turns 503 as soon as a stop signal arrives, while the server
still answers; a second signal stops at once."""

from __future__ import annotations

import time

import httpx

from streamseg.server.background import running_server


def test_readyz_turns_503_while_draining() -> None:
    with running_server(drain_s=1.5) as (url, runtime):
        assert httpx.get(f"{url}/readyz").status_code == 200
        assert runtime.request_stop is not None
        runtime.request_stop()
        reply = httpx.get(f"{url}/readyz")
        assert reply.status_code == 503 and reply.json()["draining"] is True
        assert httpx.get(f"{url}/healthz").status_code == 200  # still serving
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                httpx.get(f"{url}/healthz", timeout=0.5)
            except httpx.HTTPError:
                break  # stopped after the drain time
            time.sleep(0.2)
        else:
            raise AssertionError("the server kept running after the drain time")
