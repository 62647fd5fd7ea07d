"""Gold user_features and item_features on tiny hand-made events with hand-computed values.

Training period ends at day 31 (its latest train event). Held-out events (u1's test purchase of
d on day 35, u2's validation view of a on day 33) must not change any feature.
"""
from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import Row, SparkSession
from pyspark.testing import assertDataFrameEqual

from recspark import constants as C
from recspark.pipeline.features import fit_item_vocab
from recspark.pipeline.item_features import build_item_features, fit_category_vocab
from recspark.pipeline.user_features import build_user_features, filter_train

SPLIT_EVENTS = ("event_id string, user_id string, item_id string, event_type string, event_ts timestamp, "
                "quantity double, price double, session_id string, source_file string, source_row long, split string")
ITEMS = "item_id string, category string, brand string, price double, stock long"


def day(n: int) -> dt.datetime:
    return dt.datetime(2024, 1, 1) + dt.timedelta(days=n - 1)


@pytest.fixture(scope="module")
def inputs(spark: SparkSession):
    events = spark.createDataFrame([
        ("e1", "u1", "a", "view", day(31), 1.0, 10.0, "s1", "f", 1, "train"),
        ("e2", "u1", "a", "cart", day(31), 1.0, 10.0, "s1", "f", 2, "train"),
        ("e3", "u1", "a", "purchase", day(31), 2.0, 10.0, "s1", "f", 3, "train"),
        ("e4", "u1", "b", "view", day(1), 1.0, 20.0, "s2", "f", 4, "train"),
        ("e5", "u1", "c", "view", day(21), 1.0, 30.0, "s3", "f", 5, "train"),
        ("e10", "u1", "e", "view", day(11), 1.0, 50.0, "s5", "f", 6, "train"),
        ("e6", "u1", "d", "purchase", day(35), 1.0, 40.0, "sT", "f", 7, "test"),
        ("e7", "u2", "c", "view", day(25), 1.0, None, "s4", "f", 8, "train"),
        ("e8", "u2", "c", "cart", day(28), 1.0, None, "s4", "f", 9, "train"),
        ("e9", "u2", "a", "view", day(33), 1.0, 10.0, "sV", "f", 10, "validation"),
    ], SPLIT_EVENTS)
    items = spark.createDataFrame([
        ("a", "shoes", "x", 10.0, 5), ("b", "hats", "y", 20.0, 0), ("c", "shoes", "x", 30.0, 1),
        ("d", "bags", "z", 40.0, 2), ("e", "bags", "z", 50.0, 3),
    ], ITEMS)
    users = spark.createDataFrame([("u1", "30-39", "f", "123")], "user_id string, age string, gender string, region string")
    return events, items, users


@pytest.fixture(scope="module")
def user_rows(inputs) -> dict:
    events, items, users = inputs
    rows = build_user_features(events, users, items, top_n=2, half_life_days=10.0).collect()  # one job
    return {row[C.USER_ID]: row for row in rows}


@pytest.fixture(scope="module")
def item_rows(inputs) -> list[Row]:
    events, items, _ = inputs
    # One out-of-vocabulary bucket (every unknown id is OOV_IDX = 1): the index layout with hashed
    # buckets is tested in tests/test_oov_buckets.py.
    vocab = fit_item_vocab(events.transform(filter_train), min_count=2, buckets=1)  # a=3 -> 2, c=3 -> 3; b, d, e OOV
    # Training events per category: shoes 6 (a 3, c 3) -> 2; bags 1 (e) and hats 1 (b) -> 3, 4 by name.
    categories = fit_category_vocab(events.transform(filter_train), items, buckets=1)
    return build_item_features(events, items, vocab, price_buckets=5, category_vocab=categories,
                               item_buckets=1, category_buckets=1).collect()  # one job


def test_rfm_demographics_and_type_counts(user_rows: dict) -> None:
    u1, u2 = user_rows["u1"], user_rows["u2"]
    # u1: last train event day 31 -> recency 0; 6 train events in sessions s1, s2, s3, s5; monetary
    # only from purchases with a price: 2 x 10 = 20 (the test purchase of d, 40, is not counted).
    assert (u1.age, u1.gender, u1.region) == ("30-39", "f", "123")
    assert (u1.recency_days, u1.n_events, u1.n_sessions, u1.monetary) == (0.0, 6, 4, 20.0)
    assert u1.event_type_counts == {"view": 4, "cart": 1, "purchase": 1}
    # u2: not in silver users -> unknown; last train event day 28 -> 3 days before the end (31).
    assert (u2.age, u2.gender, u2.region) == ("unknown", "unknown", "unknown")
    assert (u2.recency_days, u2.n_events, u2.n_sessions, u2.monetary) == (3.0, 2, 1, 0.0)
    assert u2.event_type_counts == {"view": 1, "cart": 1}
    assert set(user_rows) == {"u1", "u2"}


def test_interest_tags_decay_and_top_n(user_rows: dict) -> None:
    # Half-life 10 days, age from day 31. u1:
    #   shoes: a three times at age 0 -> 3 x 1 = 3; c at age 10 -> 2^-1 = 0.5; total 3.5
    #   bags:  e at age 20 -> 2^-2 = 0.25
    #   hats:  b at age 30 -> 2^-3 = 0.125 (third: dropped by top_n=2)
    #   normalised over the kept 3.75: shoes 3.5/3.75 = 14/15, bags 0.25/3.75 = 1/15.
    tags = [(t.category, t.weight) for t in user_rows["u1"].interest_tags]
    assert [c for c, _ in tags] == ["shoes", "bags"]
    assert [w for _, w in tags] == pytest.approx([14 / 15, 1 / 15])
    # u2: only shoes (2^-0.6 + 2^-0.3, normalised) -> weight 1.
    assert [(t.category, t.weight) for t in user_rows["u2"].interest_tags] == [("shoes", pytest.approx(1.0))]


def test_item_features_popularity_conversion_and_buckets(item_rows: list[Row]) -> None:
    # Prices 10..50, 5 buckets: cuts (percentile_approx 0.2, 0.4, 0.6, 0.8) = 10, 20, 30, 40;
    # bucket = cuts strictly below the price. Ages from day 31: a 0,0,0; b 30; c 10, 6, 3; e 20.
    # 7d = age < 7, 30d = age < 30. d has only a test event: no activity, rates null.
    # Category indices: shoes 2, bags 3, hats 4 (d's bags is known from e's training events).
    # item_id, item_idx, category, category_idx, brand, price, bucket, stock, 7d, 30d, all, views,
    # carts, purchases, v->c, c->p
    expected = [
        Row("a", 2, "shoes", 2, "x", 10.0, 0, 5, 3, 3, 3, 1, 1, 1, 1.0, 1.0),
        Row("b", 1, "hats", 4, "y", 20.0, 1, 0, 0, 0, 1, 1, 0, 0, 0.0, None),
        Row("c", 3, "shoes", 2, "x", 30.0, 2, 1, 2, 3, 3, 2, 1, 0, 0.5, 0.0),
        Row("d", 1, "bags", 3, "z", 40.0, 3, 2, 0, 0, 0, 0, 0, 0, None, None),
        Row("e", 1, "bags", 3, "z", 50.0, 4, 3, 0, 1, 1, 1, 0, 0, 0.0, None),
    ]
    assertDataFrameEqual([tuple(r) for r in item_rows], [tuple(r) for r in expected])
    assert item_rows[0].__fields__ == [
        "item_id", "item_idx", "category", "category_idx", "brand", "price", "price_bucket", "stock", "events_7d",
        "events_30d", "events_all", "n_views", "n_carts", "n_purchases", "view_to_cart", "cart_to_purchase"]


def test_no_leakage_of_held_out_events(user_rows: dict, item_rows: list[Row]) -> None:
    # Had u1's test purchase of d (day 35, 40.0) leaked: monetary 60, recency measured from day 35,
    # a purchase in u1's counts, bags heavier, d with activity; had u2's validation view of a
    # leaked: u2 would count 3 events and a would have 2 views (view_to_cart 0.5).
    assert user_rows["u1"].monetary == 20.0 and user_rows["u1"].event_type_counts["purchase"] == 1
    assert user_rows["u2"].n_events == 2
    by_item = {r.item_id: r for r in item_rows}
    assert by_item["d"].events_all == 0 and by_item["a"].n_views == 1 and by_item["a"].view_to_cart == 1.0
