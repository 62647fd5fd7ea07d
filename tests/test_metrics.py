"""Known-answer tests for the reference ranking metrics; every expectation is worked out by hand.

Notation: hits = 1/0 per position of the top k; log2(2) = 1, log2(4) = 2, 1/log2(3) = 0.63092975...
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from recspark.evaluation.metrics import (
    hit_rate_at_k,
    map_at_k,
    mean_average_precision,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
)

INV_LOG2_3 = 1 / math.log2(3)  # discount of position 2
AT_K = [precision_at_k, recall_at_k, ndcg_at_k, map_at_k, hit_rate_at_k, mrr_at_k]


def all_metrics(predicted, relevant, k):
    return {
        "precision": precision_at_k(predicted, relevant, k),
        "recall": recall_at_k(predicted, relevant, k),
        "ndcg": ndcg_at_k(predicted, relevant, k),
        "map_at_k": map_at_k(predicted, relevant, k),
        "map": mean_average_precision(predicted, relevant),
        "hit_rate": hit_rate_at_k(predicted, relevant, k),
        "mrr": mrr_at_k(predicted, relevant, k),
    }


def assert_metrics(predicted, relevant, k, expected):
    assert all_metrics(predicted, relevant, k) == pytest.approx(expected, abs=1e-12)


def test_hits_at_positions_1_and_3():
    # top 3 = [a, b, c], hits = [1, 0, 1] -> 2 hits; |relevant| = 3
    # precision = 2/3, recall = 2/3
    # DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG (3 positions) = 1 + 1/log2(3) + 1/2
    # AP@3 = (1/1 + 2/3) / min(3, 3) = 5/9; whole list: d, e miss, so MAP = 5/9 too
    assert_metrics([["a", "b", "c", "d", "e"]], [["a", "c", "f"]], 3, {
        "precision": 2 / 3, "recall": 2 / 3, "ndcg": 1.5 / (1 + INV_LOG2_3 + 0.5),
        "map_at_k": 5 / 9, "map": 5 / 9, "hit_rate": 1.0, "mrr": 1.0,
    })


def test_relevant_at_position_1():
    # hits = [1, 0, 0]: precision 1/3, recall 1/1, DCG = IDCG = 1, AP = 1/1 / min(1, 3) = 1
    assert_metrics([[7, 8, 9]], [[7]], 3, {
        "precision": 1 / 3, "recall": 1.0, "ndcg": 1.0, "map_at_k": 1.0, "map": 1.0,
        "hit_rate": 1.0, "mrr": 1.0,
    })


def test_relevant_at_position_3():
    # hits = [0, 0, 1]: precision 1/3, recall 1, DCG = 1/log2(4) = 0.5 over IDCG = 1,
    # AP = (1/3) / min(1, 3) = 1/3, first hit at rank 3 -> MRR 1/3
    assert_metrics([[8, 9, 7]], [[7]], 3, {
        "precision": 1 / 3, "recall": 1.0, "ndcg": 0.5, "map_at_k": 1 / 3, "map": 1 / 3,
        "hit_rate": 1.0, "mrr": 1 / 3,
    })


def test_relevant_just_outside_top_k():
    # k = 2, top 2 = [8, 9]: no hit, every @k metric is 0; whole-list MAP still sees rank 3: 1/3
    assert_metrics([[8, 9, 7]], [[7]], 2, {
        "precision": 0.0, "recall": 0.0, "ndcg": 0.0, "map_at_k": 0.0, "map": 1 / 3,
        "hit_rate": 0.0, "mrr": 0.0,
    })


def test_duplicate_predictions_count_every_occurrence_like_spark():
    # hits = [1, 1, 0] (a twice): precision 2/3, recall 2/|{a}| = 2 (> 1, as in Spark)
    # DCG = 1 + 1/log2(3); IDCG = 1 (one relevant item) -> NDCG = 1.6309...
    # AP = (1/1 + 2/2) / min(1, 3) = 2; MRR = 1
    assert_metrics([["a", "a", "b"]], [["a"]], 3, {
        "precision": 2 / 3, "recall": 2.0, "ndcg": 1 + INV_LOG2_3, "map_at_k": 2.0, "map": 2.0,
        "hit_rate": 1.0, "mrr": 1.0,
    })


def test_duplicate_non_relevant_predictions_still_take_rank_slots():
    # hits = [0, 0, 1]: exactly as relevant at position 3
    assert mrr_at_k([["x", "x", "a"]], [["a"]], 3) == pytest.approx(1 / 3)
    assert precision_at_k([["x", "x", "a"]], [["a"]], 3) == pytest.approx(1 / 3)


def test_duplicates_in_relevant_are_a_set():
    # relevant {a, c}: recall@2 of [a, b] = 1/2 (not 1/3)
    assert recall_at_k([["a", "b"]], [["a", "a", "c"]], 2) == pytest.approx(0.5)
    # IDCG from min(2, |{a, c}|) = 2 positions: 1 + 1/log2(3); DCG = 1
    assert ndcg_at_k([["a", "b"]], [["a", "a", "c"]], 2) == pytest.approx(1 / (1 + INV_LOG2_3))


def test_fewer_predictions_than_k():
    # k = 5, one prediction (a hit): precision = 1/5 (divides by k), recall = 1/2,
    # DCG = 1, IDCG from min(5, 2) = 2 positions = 1 + 1/log2(3),
    # AP@5 = 1 / min(2, 5) = 1/2, MAP = 1/2
    assert_metrics([["a"]], [["a", "b"]], 5, {
        "precision": 0.2, "recall": 0.5, "ndcg": 1 / (1 + INV_LOG2_3), "map_at_k": 0.5, "map": 0.5,
        "hit_rate": 1.0, "mrr": 1.0,
    })


def test_k_larger_than_both_lists():
    # k = 10, hits = [0, 1]: precision 1/10, recall 1, DCG = 1/log2(3) over IDCG = 1,
    # AP = (1/2) / min(1, 10) = 1/2, MRR = 1/2
    assert_metrics([["b", "a"]], [["a"]], 10, {
        "precision": 0.1, "recall": 1.0, "ndcg": INV_LOG2_3, "map_at_k": 0.5, "map": 0.5,
        "hit_rate": 1.0, "mrr": 0.5,
    })


def test_map_at_k_divides_by_min_relevant_k_and_map_by_relevant():
    # relevant {a, b, c, d}, k = 2, hits = [0, 1]:
    # AP@2 = (1/2) / min(4, 2) = 1/4; whole list hits [0, 1, 1]: (1/2 + 2/3) / 4 = 7/24
    # precision 1/2, recall 1/4, NDCG = (1/log2(3)) / (1 + 1/log2(3))
    assert_metrics([["x", "a", "b"]], [["a", "b", "c", "d"]], 2, {
        "precision": 0.5, "recall": 0.25, "ndcg": INV_LOG2_3 / (1 + INV_LOG2_3),
        "map_at_k": 0.25, "map": 7 / 24, "hit_rate": 1.0, "mrr": 0.5,
    })


def test_no_relevant_items_scores_zero():
    assert_metrics([["a", "b"]], [[]], 2, dict.fromkeys(
        ["precision", "recall", "ndcg", "map_at_k", "map", "hit_rate", "mrr"], 0.0))


def test_query_without_relevant_items_counts_in_the_mean():
    # user 1: a perfect 1.0 on everything at k = 1; user 2 has no relevant items -> 0; mean 0.5
    assert_metrics([["a"], ["a"]], [["a"], []], 1, dict.fromkeys(
        ["precision", "recall", "ndcg", "map_at_k", "map", "hit_rate", "mrr"], 0.5))


def test_empty_prediction_list_scores_zero():
    assert_metrics([[]], [["a"]], 3, dict.fromkeys(
        ["precision", "recall", "ndcg", "map_at_k", "map", "hit_rate", "mrr"], 0.0))


def test_spark_docstring_example():
    # The three queries of Spark's RankingMetrics doc, checked by hand:
    # q1 = [1,6,2,7,8,3,9,10,4,5] vs {1..5}: hits at ranks 1, 3, 6, 9, 10
    # q2 = [4,1,5,6,2,7,3,8,9,10] vs {1,2,3}: hits at ranks 2, 5, 7
    # q3 has no relevant items -> 0
    predicted = [[1, 6, 2, 7, 8, 3, 9, 10, 4, 5], [4, 1, 5, 6, 2, 7, 3, 8, 9, 10], [1, 2, 3, 4, 5]]
    relevant = [[1, 2, 3, 4, 5], [1, 2, 3], []]
    # precision@5: q1 2/5, q2 2/5 -> 0.8 / 3
    assert precision_at_k(predicted, relevant, 5) == pytest.approx(0.8 / 3)
    # recall@5: q1 2/5, q2 2/3
    assert recall_at_k(predicted, relevant, 5) == pytest.approx((2 / 5 + 2 / 3) / 3)
    # MAP: q1 (1 + 2/3 + 3/6 + 4/9 + 5/10) / 5, q2 (1/2 + 2/5 + 3/7) / 3
    q1 = (1 + 2 / 3 + 3 / 6 + 4 / 9 + 5 / 10) / 5
    q2 = (1 / 2 + 2 / 5 + 3 / 7) / 3
    assert mean_average_precision(predicted, relevant) == pytest.approx((q1 + q2) / 3)
    # MAP@2: q1 (1/1) / 2, q2 (1/2) / 2
    assert map_at_k(predicted, relevant, 2) == pytest.approx((0.5 + 0.25) / 3)
    # NDCG@3: q1 (1 + 1/2) / (1 + 1/log2(3) + 1/2), q2 (1/log2(3)) / (1 + 1/log2(3) + 1/2)
    idcg3 = 1 + INV_LOG2_3 + 0.5
    assert ndcg_at_k(predicted, relevant, 3) == pytest.approx((1.5 / idcg3 + INV_LOG2_3 / idcg3) / 3)
    # MRR@3: q1 1, q2 1/2; hit rate@1: q1 only
    assert mrr_at_k(predicted, relevant, 3) == pytest.approx(0.5)
    assert hit_rate_at_k(predicted, relevant, 1) == pytest.approx(1 / 3)


def test_accepts_tuples_sets_and_numpy():
    # relevant as a set, predicted as numpy rows: hits = [0, 1] -> precision 1/2
    predicted = np.array([[3, 1], [2, 4]])
    relevant = [{1}, frozenset({9})]
    assert precision_at_k(predicted, relevant, 2) == pytest.approx((0.5 + 0.0) / 2)
    assert mrr_at_k((("a", "b"),), (("b",),), 2) == pytest.approx(0.5)


def test_zero_queries_is_nan():
    assert math.isnan(precision_at_k([], [], 3))
    assert math.isnan(mean_average_precision([], []))


# --------------------------------------------------------------------------------------------------
# Argument validation
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", AT_K, ids=lambda f: f.__name__)
@pytest.mark.parametrize("k", [0, -1])
def test_non_positive_k_is_a_value_error(metric, k):
    with pytest.raises(ValueError, match="k must be a positive int"):
        metric([["a"]], [["a"]], k)


@pytest.mark.parametrize("metric", AT_K, ids=lambda f: f.__name__)
@pytest.mark.parametrize("k", [1.0, 2.5, "3", None, True])
def test_non_int_k_is_a_type_error(metric, k):
    with pytest.raises(TypeError, match="k must be a positive int"):
        metric([["a"]], [["a"]], k)


def test_numpy_int_k_is_accepted():
    assert precision_at_k([["a"]], [["a"]], np.int64(1)) == 1.0


@pytest.mark.parametrize("metric", AT_K, ids=lambda f: f.__name__)
def test_length_mismatch_is_a_value_error(metric):
    with pytest.raises(ValueError, match="same length"):
        metric([["a"], ["b"]], [["a"]], 1)


def test_length_mismatch_is_a_value_error_for_map():
    with pytest.raises(ValueError, match="same length"):
        mean_average_precision([["a"]], [["a"], ["b"]])


@pytest.mark.parametrize(
    "predicted, relevant, message",
    [
        (["abc"], [["a"]], r"predicted\[0\] must be a sequence"),   # a str is not an item list
        ([None], [["a"]], r"predicted\[0\] must be a sequence"),
        ([["a"]], [5], r"relevant\[0\] must be a sequence"),
        ([{"a", "b"}], [["a"]], r"predicted\[0\] must be an ordered sequence"),  # a set has no rank
        ("ab", [["a"], ["b"]], "predicted must be a sequence"),
        ([["a"]], None, "relevant must be a sequence"),
    ],
)
def test_malformed_lists_are_type_errors(predicted, relevant, message):
    with pytest.raises(TypeError, match=message):
        precision_at_k(predicted, relevant, 1)
    with pytest.raises(TypeError, match=message):
        mean_average_precision(predicted, relevant)
