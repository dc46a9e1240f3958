"""IR metrics (rag_core.evaluation.ir_metrics) against figures worked out by hand, trec_eval's definitions."""

from __future__ import annotations

import math
import threading

import pytest

from rag_core.evaluation import ir_metrics

# q1: relevant a (grade 2) and b (grade 1); retrieved x, a, y, b. q2: relevant c, retrieved nothing relevant.
# q3: judged, never run (scores 0). "ghost": run, never judged (ignored).
QRELS = {"q1": {"a": 2, "b": 1, "z": 0}, "q2": {"c": 1}, "q3": {"d": 1}}
RUN = {"q1": {"x": 0.9, "a": 0.8, "y": 0.7, "b": 0.6}, "q2": {"e": 1.0}, "ghost": {"a": 1.0}}


def test_each_metric_as_worked_out_by_hand() -> None:
    means, per_query = ir_metrics(QRELS, RUN, ("ndcg@10", "ndcg@2", "recall@2", "recall@10", "mrr@10", "map@10"))
    dcg = 2 / math.log2(3) + 1 / math.log2(5)  # a at rank 2 (gain 2), b at rank 4 (gain 1)
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    assert per_query["ndcg@10"] == {"q1": pytest.approx(dcg / ideal), "q2": 0.0, "q3": 0.0}
    assert per_query["ndcg@2"]["q1"] == pytest.approx((2 / math.log2(3)) / ideal)
    assert per_query["recall@2"]["q1"] == 0.5 and per_query["recall@10"]["q1"] == 1.0
    assert per_query["mrr@10"]["q1"] == 0.5
    assert per_query["map@10"]["q1"] == pytest.approx((1 / 2 + 2 / 4) / 2)  # precision at each hit, over 2 relevant
    assert means["ndcg@10"] == round(dcg / ideal / 3, 4)  # averaged over the three judged queries, ghost ignored
    assert set(per_query["mrr@10"]) == {"q1", "q2", "q3"}


def test_equal_scores_keep_the_runs_order_and_a_bad_metric_names_the_choices() -> None:
    tied = {"q1": {"x": 1.0, "b": 1.0, "a": 1.0}}
    assert ir_metrics(QRELS, tied, ("mrr@10",))[1]["mrr@10"]["q1"] == 0.5  # b second, as the run listed it
    with pytest.raises(ValueError, match="ndcg, recall, mrr, map, precision"):
        ir_metrics(QRELS, RUN, ("ndgc@10",))


def test_threads_computing_at_once_get_the_same_figures() -> None:
    expected = ir_metrics(QRELS, RUN)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(ir_metrics(QRELS, RUN))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 8
