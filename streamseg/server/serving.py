"""uvicorn with a draining phase, for servers behind a load balancer or orchestrator.

On the first stop signal `/readyz` turns 503 at once and the server keeps serving for
`drain_s` seconds, so whoever routes new clients here stops doing so before
connections close; a second signal stops at once (uvicorn's own behaviour).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from types import FrameType
from typing import Any

import uvicorn

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runtime: Any, drain_s: float) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.drain_s = drain_s
        runtime.request_stop = lambda: self.handle_exit(signal.SIGTERM, None)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.runtime.draining or self.drain_s <= 0:
            self.runtime.draining = True
            super().handle_exit(sig, frame)
            return
        self.runtime.draining = True
        log.warning("draining: /readyz answers 503; stopping in %.1f s", self.drain_s)
        timer = threading.Timer(self.drain_s, super().handle_exit, (sig, frame))
        timer.daemon = True
        timer.start()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, then close the mask feeds ourselves (1012 with a reason, and
        a `stopped` event where asked for) before uvicorn closes what is left with
        1012 and no reason."""
        from streamseg.server.stream_events import before_shutdown

        for server in self.servers:
            server.close()
        await before_shutdown(self.runtime)
        await super().shutdown(sockets)
