import time

import pytest

from rag_core.cache import LRUCache, RedisCache, cache_key
from rag_core.ratelimit import RateLimiter
from rag_core.retrieval import FusionConfig, InvalidFilter, filter_expression, fuse, fuse_rrf, with_head_bonus
from rag_core.store import Hit


def test_filter_expression_always_scopes_the_tenant():
    assert filter_expression({}, "acme") == 'tenant == "acme"'
    assert filter_expression({"doc_id": ["a", "b"], "source": "x.md"}, "t") == (
        'tenant == "t" and doc_id in ["a", "b"] and source in ["x.md"]'
    )
    quoted = filter_expression({"title": 'He said "hi" \\ bye'}, "t")
    assert quoted.endswith('title in ["He said \\"hi\\" \\\\ bye"]')  # JSON escaping: no expression injection


@pytest.mark.parametrize(
    "filters, message",
    [
        ({"tenant": "x"}, "cannot filter"),
        ({"doc_id": []}, "1 to 100"),
        ({"doc_id": [1]}, "strings"),
        ({"doc_id": ["x"] * 101}, "1 to 100"),
    ],
)
def test_bad_filters_are_refused(filters, message):
    with pytest.raises(InvalidFilter, match=message):
        filter_expression(filters, "t")


def _hits(*ids: str) -> list[Hit]:
    return [Hit(chunk_id, 0.0, {"doc_id": chunk_id}) for chunk_id in ids]


def test_weighted_rrf():
    fused = fuse_rrf({"dense": _hits("a", "b", "c"), "bm25": _hits("c", "a", "d")}, {"dense": 1, "bm25": 1}, k=60)
    assert [hit.chunk_id for hit, _, _ in fused] == ["a", "c", "b", "d"]
    assert fused[0][2] == {"dense": 1, "bm25": 2}
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    dense_only = fuse_rrf({"dense": _hits("a", "b"), "bm25": _hits("b", "z")}, {"dense": 1, "bm25": 0}, k=60)
    assert [hit.chunk_id for hit, _, _ in dense_only][:2] == ["a", "b"]


def test_lru_cache_expires_and_evicts():
    cache = LRUCache(max_items=2)
    cache.set("a", 1, ttl_s=1)
    cache.set("b", 2, ttl_s=60)
    cache.set("c", 3, ttl_s=60)
    assert cache.get("a") is None and cache.get("b") == 2
    short = LRUCache()
    short.set("x", [1.5], ttl_s=0)
    time.sleep(0.01)
    assert short.get("x") is None


def test_cache_keys_change_with_the_index_version():
    assert cache_key("retrieve", "v1", "q", 5) != cache_key("retrieve", "v2", "q", 5)
    assert cache_key("retrieve", "v1", "q", 5) == cache_key("retrieve", "v1", "q", 5)


def test_unreachable_redis_is_a_miss_not_an_error():
    cache = RedisCache("redis://127.0.0.1:1/0")
    cache.set("k", {"a": 1}, 10)
    assert cache.get("k") is None and cache.healthy() is False


def test_in_process_rate_limit():
    limiter = RateLimiter(per_minute=3, clock=lambda: 1_000.0)  # every hit in the same instant
    decisions = [limiter.hit("key") for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert 1 <= decisions[-1].retry_after_s <= 61
    assert limiter.hit("other").allowed
    assert RateLimiter(per_minute=0).hit("key").allowed


def test_convex_fusion_weights_normalised_scores():
    dense = [Hit("a", 0.9, {}), Hit("b", 0.5, {}), Hit("c", 0.1, {})]
    bm25 = [Hit("c", -12.0, {}), Hit("d", -6.0, {}), Hit("a", -0.0, {})]  # signed on some engines
    fused = fuse(
        {"dense": dense, "bm25": bm25}, FusionConfig(dense_weight=0.55, bm25_weight=0.45, method="convex")
    )
    scores = {hit.chunk_id: round(score, 4) for hit, score, _ in fused}
    assert scores == {"a": 0.55, "b": 0.275, "c": 0.45, "d": 0.225}
    assert [hit.chunk_id for hit, _, _ in fused] == ["a", "c", "b", "d"]
    assert fused[0][2] == {"dense": 1, "bm25": 3}


def _chunk(chunk_id: str, score: float, position: int) -> Hit:
    return Hit(chunk_id, score, {"doc_id": chunk_id.split("#")[0], "position": position})


def test_the_head_bonus_lifts_first_chunks_over_a_close_passage_and_no_further():
    # a long document's middle passage just above a short document's only chunk; a far first chunk
    dense = [_chunk("long#3", 0.61, 3), _chunk("short#0", 0.60, 0), _chunk("far#0", 0.40, 0), _chunk("long#4", 0.39, 4)]
    boosted = with_head_bonus(dense, 0.02)
    assert [(hit.chunk_id, round(hit.score, 4)) for hit in boosted] == [
        ("short#0", 0.62), ("long#3", 0.61), ("far#0", 0.42), ("long#4", 0.39)
    ]
    assert with_head_bonus(dense, 0.0) == dense  # off: the engine's order, untouched
    fused = fuse({"dense": dense, "bm25": []}, FusionConfig(method="rrf", rrf_k=60, head_bonus=0.02))
    assert [hit.chunk_id for hit, _, _ in fused] == ["short#0", "long#3", "far#0", "long#4"]
    assert fused[0][2] == {"dense": 1}  # ranks are the boosted list's


def test_a_fusion_recorded_before_the_head_bonus_gets_the_default_one():
    recorded = '{"bm25_weight": 0.3, "candidates": 100, "dense_weight": 0.7, "method": "convex", "rrf_k": 60}'
    assert FusionConfig.from_json(recorded) == FusionConfig(dense_weight=0.7, bm25_weight=0.3)
    tuned = FusionConfig(dense_weight=0.7, bm25_weight=0.3, head_bonus=0.05)
    assert FusionConfig.from_json(tuned.to_json()) == tuned
