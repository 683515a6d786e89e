from __future__ import annotations

import numpy as np
import torch

from streamseg.backends.base import ImageFeatures
from streamseg.backends.torch_graphs import TorchGraphs
from streamseg.media.synthetic import scene_frame
from streamseg.model.build import build_sam2
from streamseg.model.segmenter import ImageEmbedding, ImagePrompt, ImageSegmenter
from streamseg.model.tracker import StreamTracker
from streamseg.server.embedding_cache import EmbeddingCache
from tests.conftest import TEST_CONFIG


def _embedding(nbytes_side: int = 4) -> ImageEmbedding:
    t = torch.zeros(1, 1, nbytes_side, nbytes_side)
    return ImageEmbedding(ImageFeatures(t, t, t, t), 8, 8, 0.0)


def test_lru_by_count_bytes_and_ttl() -> None:
    now = [0.0]
    cache = EmbeddingCache(max_items=2, max_bytes=10_000, ttl_s=10, clock=lambda: now[0])
    a, b = cache.put(_embedding()), cache.put(_embedding())
    assert cache.get(a) is not None  # a is now most recent
    c = cache.put(_embedding())
    assert cache.get(b) is None and cache.get(a) is not None and cache.get(c) is not None
    big = cache.put(_embedding(40))  # 3 x 6.4 KB > 10 KB: older entries go
    assert cache.get(big) is not None and len(cache) == 1
    now[0] = 11
    assert cache.get(big) is None and len(cache) == 0
    assert len({cache.put(_embedding()) for _ in range(5)}) == 5


def test_segmenter_equals_tracker_first_frame() -> None:
    graphs = TorchGraphs(build_sam2(TEST_CONFIG, seed=0))
    image = scene_frame(5, 96, 128)
    seg = ImageSegmenter(graphs)
    (mask,), _ = seg.segment(seg.encode(image), [ImagePrompt(((30.0, 30.0),), (1,))])
    tracker = StreamTracker(graphs)
    tracker.step(image, seq=0)
    outcome = tracker.add_prompt(1, points=[[30, 30]], labels=[1])
    assert np.array_equal(mask.mask, outcome.result.mask)
    assert abs(mask.score - outcome.result.score) < 1e-5


def test_owners_evict_only_their_own_images() -> None:
    """Issue 12 item 7: one client's uploads cannot evict another's images, nor read
    or delete them by id."""
    cache = EmbeddingCache(max_items=2, max_bytes=100_000, ttl_s=60)
    mine = cache.put(_embedding(), "robot-1")
    flood = [cache.put(_embedding(), "robot-2") for _ in range(50)]
    assert cache.get(mine, "robot-1") is not None
    assert cache.owner_count("robot-1") == 1 and cache.owner_count("robot-2") == 2
    assert [cache.get(k, "robot-2") is not None for k in flood[-3:]] == [False, True, True]
    assert cache.get(mine, "robot-2") is None and not cache.delete(mine, "robot-2")
    assert cache.get(flood[-1], "robot-1") is None
    assert cache.delete(mine, "robot-1") and cache.get(mine, "robot-1") is None


def test_total_bytes_evict_from_the_biggest_owner() -> None:
    one = _embedding(40).nbytes  # 6.4 KB
    cache = EmbeddingCache(max_items=10, max_bytes=10 * one, ttl_s=60, total_bytes=6 * one)
    small = cache.put(_embedding(40), "small")
    big = [cache.put(_embedding(40), "big") for _ in range(8)]
    assert cache.nbytes <= 6 * one
    assert cache.get(small, "small") is not None
    assert cache.owner_count("big") == 5 and cache.get(big[-1], "big") is not None
