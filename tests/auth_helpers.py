"""The token every test server accepts, and how tests send it.

`tests/conftest.py` exports it as `STREAMSEG_TOKEN`, which `running_server` and the
clients (`StreamsegClient`, `WebRTCClient`) read, so tests that use them need nothing
more; plain httpx/websockets calls pass `headers=AUTH` / `additional_headers=AUTH`."""

from __future__ import annotations

TOKEN = "streamseg-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
