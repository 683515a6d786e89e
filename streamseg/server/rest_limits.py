"""Admission for REST inference (`/v1/segment`, `/v1/images`, `/v1/images/{id}/segment`):
per caller (token id) a token-bucket rate and a cap on requests at once, so one client
cannot keep the model's REST queue full. The worker's own bounded REST queue and its
one-REST-job-per-round rule (`pipeline/worker.py`) keep live streams at their rate;
these limits keep one token from taking every REST slot.

Refusals are 429 with `Retry-After`, counted in `streamseg_requests_rejected`."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, HTTPException, Request
from starlette.requests import HTTPConnection

# Buckets of idle callers (full, nothing in flight) are forgotten past this many keys,
# so callers keyed by address (authentication off) cannot grow the table; past
# MAX_KEYS callers that are all still refilling or in flight, a new caller is refused
# as `busy` until one is forgotten.
MAX_IDLE_KEYS = 1024
MAX_KEYS = 8 * MAX_IDLE_KEYS


def caller_key(conn: HTTPConnection) -> str:
    """Who is asking, for per-caller limits and the embedding cache: the token id set
    by the auth dependency; with authentication off, the client address."""
    token_id = getattr(conn.state, "token_id", None)
    if token_id and token_id != "anonymous":
        return str(token_id)
    client = conn.client
    return f"anonymous@{client.host if client else '-'}"


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    inflight: int = 0


class RestAdmission:
    """Token buckets (`rate_per_s`, capacity `burst`) and an in-flight cap per key.
    Thread-safe; each call is a few dictionary operations."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        concurrency: int,
        clock: Callable[[], float] = time.monotonic,
        total: int = 0,
    ) -> None:
        """`total` (0: none) bounds REST requests admitted at once over all callers, so
        a flood is refused before its bodies are read and decoded."""
        self.rate_per_s, self.burst, self.concurrency = rate_per_s, max(1, burst), concurrency
        self.total = total
        self._admitted = 0
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def try_acquire(self, key: str) -> tuple[str, float] | None:
        """None when admitted (call `release` when done), else (reason, seconds to
        wait): reason `busy` (the total), `callers` (too many distinct callers),
        `rate` or `concurrency`."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                self._forget_idle(now)
                if len(self._buckets) >= MAX_KEYS:
                    return "callers", 1.0
                bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            if self.rate_per_s > 0:
                elapsed = now - bucket.stamp
                bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate_per_s)
            bucket.stamp = now
            if self.total > 0 and self._admitted >= self.total:
                return "busy", 1.0
            if self.concurrency > 0 and bucket.inflight >= self.concurrency:
                return "concurrency", 1.0
            if self.rate_per_s > 0:
                if bucket.tokens < 1.0:
                    return "rate", (1.0 - bucket.tokens) / self.rate_per_s
                bucket.tokens -= 1.0
            bucket.inflight += 1
            self._admitted += 1
            return None

    def release(self, key: str) -> None:
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is not None and bucket.inflight > 0:
                bucket.inflight -= 1
                self._admitted -= 1

    def inflight(self, key: str) -> int:
        with self._lock:
            bucket = self._buckets.get(key)
            return 0 if bucket is None else bucket.inflight

    def _forget_idle(self, now: float) -> None:
        if len(self._buckets) < MAX_IDLE_KEYS:
            return
        full_after = self.burst / self.rate_per_s if self.rate_per_s > 0 else 0.0
        self._buckets = {
            k: b for k, b in self._buckets.items() if b.inflight or now - b.stamp < full_after
        }


def admission_of(conn: HTTPConnection) -> RestAdmission:
    """The app's admission control, made from its settings on first use."""
    state = conn.app.state
    found: RestAdmission | None = getattr(state, "rest_admission", None)
    if found is None:
        s = state.runtime.settings
        found = RestAdmission(
            s.rest_rate_per_s, s.rest_burst, s.rest_concurrency_per_token, total=s.rest_queue
        )
        state.rest_admission = found
    return found


async def _admit(request: Request) -> AsyncIterator[None]:
    admission = admission_of(request)
    key = caller_key(request)
    refused = admission.try_acquire(key)
    if refused is not None:
        reason, wait_s = refused
        request.app.state.runtime.metrics.requests_rejected.labels(f"rest_{reason}").inc()
        s = request.app.state.runtime.settings
        messages = {
            "busy": f"{s.rest_queue} REST inference requests are in progress; retry later",
            "callers": "too many distinct callers are using REST inference; retry later",
            "concurrency": f"at most {s.rest_concurrency_per_token} REST inference requests "
            "at once per token",
            "rate": f"at most {s.rest_rate_per_s:g} REST inference requests a second per "
            f"token (bursts of {s.rest_burst})",
        }
        raise HTTPException(
            429,
            {
                "code": "busy" if reason in ("busy", "callers") else "rate_limited",
                "message": messages[reason],
            },
            headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
        )
    try:
        yield
    finally:
        admission.release(key)


def rest_admission() -> Any:
    """A route dependency, listed after `requires(...)` (which sets the token id):
    `dependencies=[requires("control"), rest_admission()]`."""
    return Depends(_admit)
