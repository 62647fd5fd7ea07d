"""history_types and history_gaps beside history, on a tiny hand-made sequence with hand-derived answers.

Event types ["view", "cart", "purchase"] -> ids 1, 2, 3; any other type ("click") -> 4; 0 pads.
Gap bucket of a step = 1 + min(gap_buckets - 1, floor(log2(1 + minutes to the latest step))); with
gap_buckets = 4: 0 min -> 1, [1, 3) min -> 2, [3, 7) -> 3, >= 7 -> 4 (capped).
"""
from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.testing import assertDataFrameEqual

from recspark.config import Config, FeaturesConfig, IngestConfig
from recspark.pipeline.features import (
    build_sequences, eval_queries, event_type_table_size, fit_item_vocab, gap_table_size, serving_histories,
    train_examples, with_item_idx,
)

EVENTS = ("event_id string, user_id string, item_id string, event_type string, event_ts timestamp, "
          "source_file string, source_row long, split string")
TYPES = ["view", "cart", "purchase"]
# One out-of-vocabulary bucket: the vocabulary starts at 2 (hashed buckets: tests/test_oov_buckets.py).
CONFIG = FeaturesConfig(max_seq_len=3, max_examples_per_user=10, gap_buckets=4, oov_buckets=1)
HISTORIES = "history array<int>, history_types array<int>, history_gaps array<int>"


def at(minutes: float) -> dt.datetime:
    return dt.datetime(2024, 1, 1) + dt.timedelta(minutes=minutes)


@pytest.fixture(scope="module")
def sequences(spark: SparkSession) -> DataFrame:
    # u1 trains on a, b, a, c (minutes 0, 1, 4, 18), then views b in validation and buys a in test.
    # u2 trains on a, b, a at 0 s, 59 s, 119 s (59 s is still 0 whole minutes; 60 s is one).
    events = spark.createDataFrame([
        ("e1", "u1", "a", "view", at(0), "f", 1, "train"),
        ("e2", "u1", "b", "cart", at(1), "f", 2, "train"),
        ("e3", "u1", "a", "purchase", at(4), "f", 3, "train"),
        ("e4", "u1", "c", "click", at(18), "f", 4, "train"),
        ("e5", "u1", "b", "view", at(1000), "f", 5, "validation"),
        ("e6", "u1", "a", "purchase", at(3000), "f", 6, "test"),
        ("e7", "u2", "a", "view", at(0), "f", 7, "train"),
        ("e8", "u2", "b", "view", at(59 / 60), "f", 8, "train"),
        ("e9", "u2", "a", "cart", at(119 / 60), "f", 9, "train"),
    ], EVENTS)
    # Training counts a=4, b=2, c=1 -> a=2, b=3, c=4.
    vocab = fit_item_vocab(events.filter("split = 'train'"), min_count=1, buckets=CONFIG.oov_buckets)
    return build_sequences(with_item_idx(events, vocab, CONFIG.oov_buckets))


def test_train_examples_carry_aligned_types_and_gaps(spark: SparkSession, sequences: DataFrame) -> None:
    # u1 target c (pos 3): history a@0 view, b@1 cart, a@4 purchase; gaps to minute 4: 4 -> log2(5)
    # = 2.3 -> 3; 3 -> log2(4) = 2 exactly -> 3; 0 -> 1. u2 target a: a@0 s, b@59 s: both 0 minutes -> 1.
    expected = spark.createDataFrame([
        ("u1", [0, 0, 2], [0, 0, 1], [0, 0, 1], 3),
        ("u1", [0, 2, 3], [0, 1, 2], [0, 2, 1], 2),
        ("u1", [2, 3, 2], [1, 2, 3], [3, 3, 1], 4),
        ("u2", [0, 0, 2], [0, 0, 1], [0, 0, 1], 3),
        ("u2", [0, 2, 3], [0, 1, 1], [0, 1, 1], 2),
    ], f"user_id string, {HISTORIES}, target int")
    assertDataFrameEqual(train_examples(sequences, CONFIG, TYPES), expected)


def test_eval_queries_measure_gaps_to_the_last_step_before_the_period(spark: SparkSession, sequences: DataFrame) -> None:
    # validation: the last 3 training steps b@1 cart, a@4 purchase, c@18 click; gaps to minute 18:
    # 17 -> floor(log2 18) = 4, capped at 3 -> 4; 14 -> log2(15) = 3.9 -> 4; 0 -> 1.
    # test: a@4 purchase, c@18 click, b@1000 view; 996 and 982 minutes -> capped 4; 0 -> 1.
    expected = spark.createDataFrame([
        ("u1", "validation", [3, 2, 4], [2, 3, 4], [4, 4, 1], ["b"], ["a", "b", "c"], [2, 3, 4]),
        ("u1", "test", [2, 4, 3], [3, 4, 1], [4, 4, 1], ["a"], ["a", "b", "c"], [2, 3, 4]),
    ], f"user_id string, split string, {HISTORIES}, relevant array<string>, seen array<string>, seen_idx array<int>")
    got = eval_queries(sequences, CONFIG, TYPES)
    assertDataFrameEqual(got.select(*expected.columns), expected)


def test_serving_histories_span_every_period(spark: SparkSession, sequences: DataFrame) -> None:
    # u1: c@18 click, b@1000 view, a@3000 purchase. u2: a@0 s, b@59 s, a@119 s: 119 s and 60 s are
    # one whole minute -> log2(2) = 1 exactly -> 2.
    expected = spark.createDataFrame([
        ("u1", [4, 3, 2], [4, 1, 3], [4, 4, 1], [2, 3, 4]),
        ("u2", [2, 3, 2], [1, 1, 2], [2, 2, 1], [2, 3]),
    ], f"user_id string, {HISTORIES}, seen_idx array<int>")
    # The repeat profile columns are checked in tests/test_features.py.
    got = serving_histories(sequences, CONFIG, TYPES).select(*expected.columns)
    assertDataFrameEqual(got, expected, checkRowOrder=False, ignoreNullable=True)


def test_embedding_table_sizes_follow_the_config() -> None:
    config = Config(ingest=IngestConfig(event_types=["view", "cart", "purchase", "rate"]),
                    features=FeaturesConfig(gap_buckets=16))
    # 0 pads, 1..4 the declared types, 5 any other type; 0 pads, 1..16 the gap buckets.
    assert (event_type_table_size(config), gap_table_size(config)) == (6, 17)
