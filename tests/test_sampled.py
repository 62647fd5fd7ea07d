"""Sampled-negatives protocol: hand-derived ranks, Spark = reference, seeded candidate sampling."""
from __future__ import annotations

import math

import numpy as np
import pytest
from pyspark.sql import SparkSession

from recspark.evaluation import sampled as S
from recspark.evaluation.ranking import HIT_RATE_AT_K, MRR_AT_K, NDCG_AT_K

# u1: relevant scored 0.5 against 0.9, 0.5, 0.1 -> two negatives >= 0.5 (ties count against): rank 3.
# u2: an unscorable relevant item (rank n + 1 = 3) and one scored 0.8 above 0.1, 0.2: rank 1.
RELEVANT = {"u1": [0.5], "u2": [None, 0.8]}
NEGATIVES = {"u1": [0.9, 0.5, 0.1], "u2": [0.1, 0.2]}
EXPECTED = {
    2: {HIT_RATE_AT_K: (0 + 1 / 2) / 2, NDCG_AT_K: (0 + 1 / 2) / 2, MRR_AT_K: (0 + 1 / 2) / 2},
    3: {HIT_RATE_AT_K: (1 + 1) / 2, NDCG_AT_K: (1 / math.log2(4) + (1 / math.log2(4) + 1) / 2) / 2,
        MRR_AT_K: (1 / 3 + (1 / 3 + 1) / 2) / 2},
}


def frames(spark: SparkSession, relevant: dict, negatives: dict):
    """Candidates with item indices 100.. for relevant items (-1 when unscorable), 200.. for negatives."""
    cand_rows, score_rows = [], []
    for user in relevant:
        rel_idx = []
        for j, s in enumerate(relevant[user]):
            rel_idx.append(-1 if s is None else 100 + j)
            if s is not None:
                score_rows.append((user, 100 + j, float(s)))
        neg_idx = [200 + j for j in range(len(negatives[user]))]
        score_rows += [(user, 200 + j, float(s)) for j, s in enumerate(negatives[user])]
        cand_rows.append((user, rel_idx, neg_idx))
    candidates = spark.createDataFrame(cand_rows, "user_id string, relevant_idx array<int>, negatives array<int>")
    scores = spark.createDataFrame(score_rows, "user_id string, item_idx int, score double")
    return candidates, scores


def test_reference_hand_derived() -> None:
    for k, expected in EXPECTED.items():
        assert S.reference_from_frames(RELEVANT, NEGATIVES, k) == pytest.approx(expected, abs=1e-12)


def test_spark_hand_derived(spark: SparkSession) -> None:
    got = S.sampled_metrics(*frames(spark, RELEVANT, NEGATIVES), [2, 3])
    assert set(got) == {2, 3}
    for k, expected in EXPECTED.items():
        assert got[k] == pytest.approx(expected, abs=1e-12)


def test_spark_agrees_with_reference_on_random_scores(spark: SparkSession) -> None:
    rng = np.random.default_rng(8)
    relevant, negatives = {}, {}
    for u in range(40):
        # Scores rounded to 1 decimal: many ties between relevant items and negatives.
        relevant[f"u{u}"] = [None if rng.random() < 0.1 else float(np.round(rng.random(), 1))
                             for _ in range(int(rng.integers(1, 4)))]
        negatives[f"u{u}"] = [float(np.round(rng.random(), 1)) for _ in range(8)]
    got = S.sampled_metrics(*frames(spark, relevant, negatives), [1, 3, 5])
    for k in (1, 3, 5):
        assert got[k] == pytest.approx(S.reference_from_frames(relevant, negatives, k), abs=1e-9)


def test_candidates_exclude_relevant_and_seen_and_are_seeded(spark: SparkSession) -> None:
    vocab = spark.createDataFrame([(f"i{i}", i) for i in range(2, 12)], "item_id string, item_idx int")
    queries = spark.createDataFrame([("u1", ["i3", "unknown"], [4, 5]), ("u2", ["i2"], [])],
                                    "user_id string, relevant array<string>, seen_idx array<int>")

    def negatives(seed: int, exclude_seen: bool, n: int = 4) -> dict:
        rows = S.sampled_candidates(queries, vocab, n, exclude_seen, seed).collect()
        return {r["user_id"]: (r[S.RELEVANT_IDX], r[S.NEGATIVES], r[S.CANDIDATES]) for r in rows}

    first = negatives(1, True)
    rel, neg, cand = first["u1"]
    assert sorted(rel) == [-1, 3]  # the item outside the vocabulary is kept as unscorable
    assert len(neg) == 4 == len(set(neg)) and not set(neg) & {3, 4, 5} and set(neg) <= set(range(2, 12))
    assert cand == [3] + neg
    assert negatives(1, True) == first  # same seed, same sample
    assert any(negatives(seed, True)["u1"][1] != neg for seed in (2, 3, 4))  # the seed matters
    assert not {3} & set(negatives(1, False)["u1"][1])
    # More negatives than the pool holds: the whole pool (10 items minus relevant 3, seen 4 and 5).
    assert sorted(negatives(1, True, n=50)["u1"][1]) == [2, 6, 7, 8, 9, 10, 11]
