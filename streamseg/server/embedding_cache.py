"""Image embeddings kept for follow-up prompts: LRU, bounded by count and bytes,
entries expire after a TTL. Ids are unguessable so one client cannot read another's."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from streamseg.model.segmenter import ImageEmbedding


@dataclass(slots=True)
class _Entry:
    embedding: ImageEmbedding
    expires: float


class EmbeddingCache:
    def __init__(
        self,
        max_items: int,
        max_bytes: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_items, self.max_bytes, self.ttl_s = max_items, max_bytes, ttl_s
        self._clock = clock
        self._items: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.evictions = 0

    def put(self, embedding: ImageEmbedding) -> str:
        key = secrets.token_urlsafe(16)
        with self._lock:
            self._expire()
            self._items[key] = _Entry(embedding, self._clock() + self.ttl_s)
            while len(self._items) > self.max_items or (
                len(self._items) > 1 and self.nbytes > self.max_bytes
            ):
                self._items.popitem(last=False)
                self.evictions += 1
        return key

    def get(self, key: str) -> ImageEmbedding | None:
        with self._lock:
            self._expire()
            entry = self._items.get(key)
            if entry is None:
                return None
            self._items.move_to_end(key)
            return entry.embedding

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._items.pop(key, None) is not None

    @property
    def nbytes(self) -> int:
        return sum(e.embedding.nbytes for e in self._items.values())

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._items)

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, e in self._items.items() if e.expires <= now]:
            del self._items[key]
