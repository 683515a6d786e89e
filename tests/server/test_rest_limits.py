"""REST admission (per-token rate and concurrency) and per-address connection counts,
with a fake clock and fake transports."""

from __future__ import annotations

from streamseg.server.client_limits import ClientConnections
from streamseg.server.rest_limits import RestAdmission


def test_rate_is_per_key_with_a_burst_and_refills() -> None:
    now = [0.0]
    admission = RestAdmission(rate_per_s=2.0, burst=3, concurrency=0, clock=lambda: now[0])
    assert [admission.try_acquire("a") for _ in range(3)] == [None, None, None]
    refused = admission.try_acquire("a")
    assert refused is not None and refused[0] == "rate" and 0 < refused[1] <= 0.5
    assert admission.try_acquire("b") is None  # another token has its own bucket
    now[0] = 0.5  # one token back at 2/s
    assert admission.try_acquire("a") is None
    assert admission.try_acquire("a") is not None


def test_concurrency_is_per_key_and_released() -> None:
    admission = RestAdmission(rate_per_s=0, burst=1, concurrency=2)
    assert admission.try_acquire("a") is None and admission.try_acquire("a") is None
    assert admission.try_acquire("a") == ("concurrency", 1.0)
    assert admission.try_acquire("b") is None
    admission.release("a")
    assert admission.inflight("a") == 1 and admission.try_acquire("a") is None


class _Transport:
    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing


def test_connections_per_address_count_until_closing() -> None:
    conns = ClientConnections(limit=2)
    a, b, c = _Transport(), _Transport(), _Transport()
    assert conns.admit("10.0.0.1", a) and conns.admit("10.0.0.1", b)
    assert not conns.admit("10.0.0.1", c)
    assert conns.admit("10.0.0.2", c)
    a.closing = True  # e.g. an upgraded websocket that ended: no connection_lost here
    assert conns.admit("10.0.0.1", _Transport())
    conns.discard("10.0.0.2", c)
    assert conns.count("10.0.0.2") == 0


def test_the_caller_table_is_bounded_by_refusing_new_callers() -> None:
    from streamseg.server import rest_limits

    now = [0.0]
    admission = RestAdmission(rate_per_s=1.0, burst=1, concurrency=0, clock=lambda: now[0])
    for i in range(rest_limits.MAX_KEYS):
        key = f"10.0.{i // 256}.{i % 256}"
        assert admission.try_acquire(key) is None
        admission.release(key)
    assert admission.try_acquire("new") == ("callers", 1.0)
    assert admission.try_acquire("10.0.0.0") is not None  # a known caller keeps its bucket
    now[0] = 2.0  # every bucket is full again: idle ones are forgotten
    assert admission.try_acquire("new") is None
