"""Image embeddings kept for follow-up prompts, partitioned by owner (the caller's
token id): each owner has its own LRU, bounded by count and bytes, so one client's
uploads evict only its own images. A total byte bound over all owners evicts from the
owner holding the most bytes. Entries expire after a TTL. Ids are unguessable, and an
owner only ever finds its own images."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from streamseg.model.segmenter import ImageEmbedding

DEFAULT_OWNER = "-"


@dataclass(slots=True)
class _Entry:
    embedding: ImageEmbedding
    expires: float


class _Partition:
    """One owner's images, oldest use first."""

    __slots__ = ("items", "nbytes")

    def __init__(self) -> None:
        self.items: OrderedDict[str, _Entry] = OrderedDict()
        self.nbytes = 0

    def add(self, key: str, entry: _Entry) -> None:
        self.items[key] = entry
        self.nbytes += entry.embedding.nbytes

    def pop(self, key: str) -> _Entry | None:
        entry = self.items.pop(key, None)
        if entry is not None:
            self.nbytes -= entry.embedding.nbytes
        return entry

    def pop_oldest(self) -> None:
        key = next(iter(self.items))
        self.pop(key)


class EmbeddingCache:
    def __init__(
        self,
        max_items: int,
        max_bytes: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        total_bytes: int | None = None,
    ) -> None:
        """`max_items` and `max_bytes` bound each owner; `total_bytes` (default:
        `max_bytes`) bounds all owners together."""
        self.max_items, self.max_bytes, self.ttl_s = max_items, max_bytes, ttl_s
        self.total_bytes = max_bytes if total_bytes is None else total_bytes
        self._clock = clock
        self._owners: dict[str, _Partition] = {}
        self._lock = threading.Lock()
        self.evictions = 0

    def put(self, embedding: ImageEmbedding, owner: str = DEFAULT_OWNER) -> str:
        key = secrets.token_urlsafe(16)
        with self._lock:
            self._expire()
            mine = self._owners.setdefault(owner, _Partition())
            mine.add(key, _Entry(embedding, self._clock() + self.ttl_s))
            # The newest entry stays even when it alone exceeds a byte bound.
            while len(mine.items) > self.max_items or (
                len(mine.items) > 1 and mine.nbytes > self.max_bytes
            ):
                mine.pop_oldest()
                self.evictions += 1
            while self.nbytes > self.total_bytes:
                biggest = max(self._owners.values(), key=lambda p: p.nbytes)
                if biggest is mine and len(mine.items) == 1:
                    break
                biggest.pop_oldest()
                self.evictions += 1
            self._owners = {o: p for o, p in self._owners.items() if p.items}
        return key

    def get(self, key: str, owner: str = DEFAULT_OWNER) -> ImageEmbedding | None:
        with self._lock:
            self._expire()
            mine = self._owners.get(owner)
            entry = None if mine is None else mine.items.get(key)
            if mine is None or entry is None:
                return None
            mine.items.move_to_end(key)
            return entry.embedding

    def delete(self, key: str, owner: str = DEFAULT_OWNER) -> bool:
        with self._lock:
            mine = self._owners.get(owner)
            return mine is not None and mine.pop(key) is not None

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self._owners.values())

    def owner_count(self, owner: str) -> int:
        with self._lock:
            self._expire()
            mine = self._owners.get(owner)
            return 0 if mine is None else len(mine.items)

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return sum(len(p.items) for p in self._owners.values())

    def _expire(self) -> None:
        now = self._clock()
        for owner, part in list(self._owners.items()):
            for key in [k for k, e in part.items.items() if e.expires <= now]:
                part.pop(key)
            if not part.items:
                del self._owners[owner]
