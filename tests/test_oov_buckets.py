"""Hashed out-of-vocabulary buckets for items and categories: the index layout of
recspark.constants (0 PAD, 1 OOV, buckets from 2, then the vocabulary), on tiny hand-made data."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from recspark import constants as C
from recspark.config import ConfigError, FeaturesConfig, load_config
from recspark.models import ModelSpec
from recspark.models.early_stopping import top_k_items
from recspark.pipeline.features import build_sequences, fit_item_vocab, train_examples, with_item_idx
from recspark.pipeline.item_features import build_item_features, fit_category_vocab

SPLIT_EVENTS = ("event_id string, user_id string, item_id string, event_type string, event_ts timestamp, "
                "quantity double, price double, session_id string, source_file string, source_row long, split string")
ITEMS = "item_id string, category string, brand string, price double, stock long"
ITEM_BUCKETS, CATEGORY_BUCKETS = 16, 4
FIRST_ITEM = C.FIRST_BUCKET_IDX + ITEM_BUCKETS  # 18: vocabulary items from here
FIRST_CATEGORY = C.FIRST_BUCKET_IDX + CATEGORY_BUCKETS  # 6


def day(n: int) -> dt.datetime:
    return dt.datetime(2024, 1, 1) + dt.timedelta(days=n)


def _events(spark: SparkSession, steps: list[tuple[str, str, int, str]]) -> DataFrame:
    """(user, item, day, split) -> split events, one session per event."""
    return spark.createDataFrame(
        [(f"e{k}", user, item, "view", day(d), 1.0, 1.0, f"s{k}", "f", k, split)
         for k, (user, item, d, split) in enumerate(steps)], SPLIT_EVENTS)


@pytest.fixture(scope="module")
def events(spark: SparkSession) -> DataFrame:
    # a: 3 training events, b: 2 -> vocabulary with min_count 2 (a -> 18, b -> 19); r1, r2: one
    # training event each (rare), n1..n12: only held out, never seen in training.
    steps = [("u1", "a", 1, "train"), ("u1", "r1", 2, "train"), ("u1", "a", 3, "train"), ("u1", "b", 4, "train"),
             ("u2", "a", 1, "train"), ("u2", "r2", 2, "train"), ("u2", "b", 3, "train")]
    steps += [("u3", f"n{k}", 10 + k, "test") for k in range(1, 13)]
    return _events(spark, steps)


def _indexed(events: DataFrame) -> DataFrame:
    vocab = fit_item_vocab(events.filter("split = 'train'"), min_count=2, buckets=ITEM_BUCKETS)
    return with_item_idx(events, vocab, ITEM_BUCKETS).select(C.ITEM_ID, C.ITEM_IDX).distinct()


def test_first_vocab_index_layout() -> None:
    assert [C.first_vocab_index(b) for b in (1, 2, 64)] == [2, 4, 66]  # 1: the single shared OOV_IDX
    with pytest.raises(ValueError, match="buckets must be >= 1"):
        C.first_vocab_index(0)


def test_vocabulary_follows_the_buckets(spark: SparkSession, events: DataFrame) -> None:
    vocab = fit_item_vocab(events.filter("split = 'train'"), min_count=2, buckets=ITEM_BUCKETS)
    assertDataFrameEqual(vocab.select(C.ITEM_ID, C.ITEM_IDX),
                         spark.createDataFrame([("a", FIRST_ITEM), ("b", FIRST_ITEM + 1)], "item_id string, item_idx int"))


def test_unseen_items_land_in_buckets_deterministically(spark: SparkSession, events: DataFrame) -> None:
    first, second = _indexed(events), _indexed(events)  # two independent plans: same buckets
    assertDataFrameEqual(first, second)
    rows = {row[C.ITEM_ID]: row[C.ITEM_IDX] for row in first.collect()}
    assert (rows["a"], rows["b"]) == (FIRST_ITEM, FIRST_ITEM + 1)
    unknown = {item: idx for item, idx in rows.items() if item not in ("a", "b")}
    assert len(unknown) == 14 and all(C.FIRST_BUCKET_IDX <= idx < FIRST_ITEM for idx in unknown.values())
    # Hashed, not one shared index: 14 unknown ids over 16 buckets use several of them.
    assert len(set(unknown.values())) > 1
    # The bucket is Spark's xxhash64 of the id, modulo the bucket count (pmod: never negative).
    expected = spark.createDataFrame([(item,) for item in unknown], "item_id string").select(
        C.ITEM_ID, (F.expr(f"pmod(xxhash64(item_id), {ITEM_BUCKETS})") + C.FIRST_BUCKET_IDX).cast("int").alias(C.ITEM_IDX))
    assertDataFrameEqual(first.filter(~F.col(C.ITEM_ID).isin("a", "b")), expected)


def test_one_bucket_keeps_the_single_unknown_index(events: DataFrame) -> None:
    vocab = fit_item_vocab(events.filter("split = 'train'"), min_count=2, buckets=1)
    rows = {r[C.ITEM_ID]: r[C.ITEM_IDX] for r in with_item_idx(events, vocab, 1).select(C.ITEM_ID, C.ITEM_IDX).collect()}
    assert (rows["a"], rows["b"]) == (2, 3)  # PAD 0, the shared unknown 1, then the items
    assert {idx for item, idx in rows.items() if item not in ("a", "b")} == {C.OOV_IDX}


def test_targets_in_buckets_are_dropped_from_train_examples(spark: SparkSession, events: DataFrame) -> None:
    vocab = fit_item_vocab(events.filter("split = 'train'"), min_count=2, buckets=ITEM_BUCKETS)
    sequences = build_sequences(with_item_idx(events, vocab, ITEM_BUCKETS))
    bucket = {r[C.ITEM_ID]: r[C.ITEM_IDX] for r in _indexed(events).filter(F.col(C.ITEM_ID).isin("r1", "r2")).collect()}
    config = FeaturesConfig(max_seq_len=3, oov_buckets=ITEM_BUCKETS)
    a, b = FIRST_ITEM, FIRST_ITEM + 1
    # u1: a r1 a b -> targets r1 (bucket: dropped), a, b; u2: a r2 b -> r2 dropped, b. The bucket
    # stays in the histories as an input.
    expected = spark.createDataFrame([
        ("u1", [0, a, bucket["r1"]], a), ("u1", [a, bucket["r1"], a], b), ("u2", [0, a, bucket["r2"]], b),
    ], "user_id string, history array<int>, target int")
    assertDataFrameEqual(train_examples(sequences, config).select(C.USER_ID, C.HISTORY, C.TARGET), expected)


def test_categories_outside_the_vocabulary_land_in_their_buckets(spark: SparkSession) -> None:
    events = _events(spark, [("u1", "a", 1, "train"), ("u1", "a", 2, "train"), ("u1", "b", 3, "train")])
    # shoes (a, 2 events) -> 6, hats (b) -> 7; bags and toys have no training event; d's category is missing.
    items = spark.createDataFrame([("a", "shoes", "x", 1.0, 1), ("b", "hats", "x", 2.0, 1), ("c", "bags", "x", 3.0, 1),
                                   ("t", "toys", "x", 4.0, 1), ("d", None, "x", 5.0, 1)], ITEMS)
    train = events.filter("split = 'train'")
    categories = fit_category_vocab(train, items, CATEGORY_BUCKETS)
    assertDataFrameEqual(categories.select(C.CATEGORY, C.CATEGORY_IDX), spark.createDataFrame(
        [("shoes", FIRST_CATEGORY), ("hats", FIRST_CATEGORY + 1)], "category string, category_idx int"))
    vocab = fit_item_vocab(train, min_count=1, buckets=ITEM_BUCKETS)
    rows = {r[C.ITEM_ID]: r for r in build_item_features(
        events, items, vocab, 2, categories, item_buckets=ITEM_BUCKETS, category_buckets=CATEGORY_BUCKETS).collect()}
    assert (rows["a"][C.CATEGORY_IDX], rows["b"][C.CATEGORY_IDX], rows["d"][C.CATEGORY_IDX]) == (6, 7, C.PAD_IDX)
    for item in ("c", "t"):  # catalogue items without training events: item and category in buckets
        assert C.FIRST_BUCKET_IDX <= rows[item][C.CATEGORY_IDX] < FIRST_CATEGORY
        assert C.FIRST_BUCKET_IDX <= rows[item][C.ITEM_IDX] < FIRST_ITEM
    expected = spark.createDataFrame([("bags",), ("toys",)], "category string").select(
        C.CATEGORY, (F.expr(f"pmod(xxhash64(category), {CATEGORY_BUCKETS})") + C.FIRST_BUCKET_IDX).cast("int").alias("i"))
    assert {r[C.CATEGORY]: r["i"] for r in expected.collect()} == {"bags": rows["c"][C.CATEGORY_IDX],
                                                                    "toys": rows["t"][C.CATEGORY_IDX]}


def test_top_k_never_returns_a_reserved_index() -> None:
    first = C.first_vocab_index(4)  # 6 reserved indices, then 5 items
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(20, first + 5))
    logits[:, :first] += 100.0  # the reserved rows score best: they must still never come out
    items = top_k_items(logits, 10, first_item=first)
    assert items.shape == (20, 5)  # k capped at the 5 real items
    assert (items >= first).all()
    top = top_k_items(logits, 3, first_item=first)
    assert (top >= first).all()
    np.testing.assert_array_equal(top, np.argsort(-logits[:, first:], axis=1, kind="stable")[:, :3] + first)


def test_model_spec_counts_the_reserved_indices() -> None:
    assert ModelSpec(num_items=C.first_vocab_index(4) + 1, max_seq_len=2, first_item_idx=C.first_vocab_index(4))
    with pytest.raises(ValueError, match="reserved"):
        ModelSpec(num_items=C.first_vocab_index(4), max_seq_len=2, first_item_idx=C.first_vocab_index(4))


def test_model_spec_states_its_first_item() -> None:
    """No default layout: a spec without first_item_idx is an error, except when read from an old
    model_meta.json (written before the field existed, i.e. with the single unknown: items from 2)."""
    with pytest.raises(TypeError, match="first_item_idx"):
        ModelSpec(num_items=70, max_seq_len=2)
    assert ModelSpec.from_dict({"num_items": 5, "max_seq_len": 2}).first_item_idx == 2
    assert ModelSpec.from_dict({"num_items": 70, "max_seq_len": 2, "first_item_idx": 66}).first_item_idx == 66


def test_layout_follows_the_configuration() -> None:
    # Written out from the README's item_vocab row: 0 pads, 1 unknown, 2 .. 1 + buckets, then items.
    for buckets, first in ((1, 2), (4, 6), (64, 66)):
        layout = load_config(None, [f"features.oov_buckets={buckets}"]).features.item_layout
        assert (layout.pad, layout.unknown, layout.first_item) == (0, 1, first)
        assert [i for i in range(first + 3) if layout.reserved(i)] == list(range(first))
    assert load_config(None, ["features.category_oov_buckets=8"]).features.category_layout.first_item == 10


@pytest.mark.parametrize("key", ["oov_buckets", "category_oov_buckets"])
def test_bucket_counts_must_be_positive(key: str) -> None:
    assert getattr(load_config(None, [f"features.{key}=1"]).features, key) == 1
    with pytest.raises(ConfigError, match=f"features.{key}: must be >= 1"):
        load_config(None, [f"features.{key}=0"])
    assert issubclass(ConfigError, ValueError)
