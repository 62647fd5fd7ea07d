"""Novelty, intra-list diversity, coverage, popularity: hand-derived answers, and Spark = reference."""
from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recspark.evaluation.beyond import (
    COVERAGE, DIVERSITY, NOVELTY, POPULARITY, beyond_accuracy, beyond_accuracy_by_group, beyond_accuracy_reference,
)

# Training counts (total 16): p(a) = 1/4, p(b) = 1/8, p(c) = p(d) = 1/16, p(e) = 1/2,
# so -log2 p is a: 2, b: 3, c: 4, d: 4, e: 1. d has no category (-> "unknown").
COUNTS = {"a": 4, "b": 2, "c": 1, "d": 1, "e": 8}
CATEGORIES = {"a": "fruit", "b": "fruit", "c": "veg", "e": "fruit"}
LISTS = {"u1": ["a", "b"], "u2": ["c", "d", "a"], "u3": ["a", "a"]}
EXPECTED = {
    # u1 (2 + 3) / 2, u2 (4 + 4 + 2) / 3, u3 (2 + 2) / 2 -> mean over users.
    NOVELTY: (2.5 + 10 / 3 + 2.0) / 3,
    # u1: one fruit/fruit pair -> 0; u2: veg, unknown, fruit -> 3 of 3 pairs differ; u3: a/a -> 0.
    DIVERSITY: 1 / 3,
    COVERAGE: 4 / 5,  # a, b, c, d of 5 items
    # occurrences 4 + 2 + 1 + 1 + 4 + 4 + 4 = 20 over 7, mean item 16 / 5.
    POPULARITY: (20 / 7) / (16 / 5),
}


def frames(spark: SparkSession, lists: dict, counts: dict, categories: dict):
    recs = spark.createDataFrame([(u, r + 1, i) for u, items in lists.items() for r, i in enumerate(items)],
                                 "user_id string, rank int, item_id string")
    vocab = spark.createDataFrame(list(counts.items()), "item_id string, train_count long")
    cats = spark.createDataFrame(list(categories.items()), "item_id string, category string")
    return recs, vocab, cats


def test_reference_hand_derived() -> None:
    result = beyond_accuracy_reference(list(LISTS.values()), COUNTS, CATEGORIES)
    assert result == pytest.approx(EXPECTED, abs=1e-12)


def test_spark_hand_derived(spark: SparkSession) -> None:
    assert beyond_accuracy(*frames(spark, LISTS, COUNTS, CATEGORIES)) == pytest.approx(EXPECTED, abs=1e-12)


def test_without_categories_every_list_is_one_category(spark: SparkSession) -> None:
    recs, vocab, _ = frames(spark, LISTS, COUNTS, CATEGORIES)
    assert beyond_accuracy(recs, vocab, None)[DIVERSITY] == 0.0


def test_spark_agrees_with_reference_on_random_lists(spark: SparkSession) -> None:
    rng = np.random.default_rng(11)
    items = [f"i{n}" for n in range(25)]
    counts = {i: int(rng.integers(1, 50)) for i in items}
    # Some items without a category; lists of 0..8 items, drawn with replacement (duplicates).
    categories = {i: f"c{int(rng.integers(0, 4))}" for i in items if rng.random() < 0.8}
    lists = {f"u{n}": [items[j] for j in rng.integers(0, 25, int(rng.integers(1, 9)))] for n in range(60)}
    expected = beyond_accuracy_reference(list(lists.values()), counts, categories)
    assert beyond_accuracy(*frames(spark, lists, counts, categories)) == pytest.approx(expected, abs=1e-9)
    # The random data must exercise the definitions, not sit at a trivial value.
    assert 0.0 < expected[DIVERSITY] < 1.0 and expected[NOVELTY] > 0.0


def test_by_group_equals_each_group_alone(spark: SparkSession) -> None:
    """Two models' lists in one call give each model's own numbers (here the hand-derived ones and
    u1's list alone); a model without rows has no coverage and NaN novelty."""
    recs, vocab, cats = frames(spark, LISTS, COUNTS, CATEGORIES)
    only_u1, _, _ = frames(spark, {"u1": LISTS["u1"]}, COUNTS, CATEGORIES)
    both = recs.withColumn("model", F.lit("m1")).unionByName(only_u1.withColumn("model", F.lit("m2")))
    got = beyond_accuracy_by_group(both, vocab, cats, "model", groups=["m1", "m2", "m3"])
    assert got["m1"] == pytest.approx(EXPECTED, abs=1e-12)
    assert got["m2"] == pytest.approx(beyond_accuracy_reference([LISTS["u1"]], COUNTS, CATEGORIES), abs=1e-12)
    assert got["m3"][COVERAGE] == 0.0 and np.isnan(got["m3"][NOVELTY])
