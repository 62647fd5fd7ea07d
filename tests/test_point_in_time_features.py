"""Point-in-time user features: a training example's user_vector sees only its user's earlier
baskets; a query's and a serving row's are the user features at the end of the periods they
condition on, the same numbers gold user_features computes at the end of training (by a
different path: a groupBy over events there, array functions over the sequences here)."""
from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import FeaturesConfig
from recspark.pipeline.features import (
    build_sequences, eval_queries, fit_item_vocab, serving_histories, train_examples, with_item_idx,
)
from recspark.pipeline.normalisation import USER_VECTOR_FEATURES, fit_user_stats, with_user_vector
from recspark.pipeline.user_features import build_user_features

EVENTS = ("event_id string, user_id string, item_id string, event_type string, event_ts timestamp, quantity double, "
          "price double, session_id string, source_file string, source_row long, split string")
CONFIG = FeaturesConfig(max_seq_len=10, max_examples_per_user=100, repeat_candidates=4)


def _identity_stats(spark: SparkSession) -> DataFrame:
    """feature_stats that leave log1p(x) as it is (mean 0, std 1): the vector is log1p of the raw values."""
    return spark.createDataFrame(
        [("user_features", name, "log1p_standardise", 0.0, 1.0, 1, "test") for name in USER_VECTOR_FEATURES],
        "table string, feature string, transform string, mean double, std double, n_rows long, fitted_on string")


def test_an_example_sees_its_users_earlier_baskets_only(spark: SparkSession) -> None:
    day = lambda d: dt.datetime(2024, 1, d)  # noqa: E731
    rows = [  # one user, three baskets: b1 on day 1 (money 1 x 2.0 + 2 x 3.0), b2 on day 4 (a view), b3 on day 11
        ("e1", "u", "a", "purchase", day(1), 1.0, 2.0, "b1", "f", 1, "train"),
        ("e2", "u", "b", "purchase", day(1), 2.0, 3.0, "b1", "f", 2, "train"),
        ("e3", "u", "c", "view", day(4), 1.0, 9.0, "b2", "f", 3, "train"),
        ("e4", "u", "a", "purchase", day(11), 1.0, 2.0, "b3", "f", 4, "train"),
        ("e5", "u", "d", "cart", day(11), 1.0, 5.0, "b3", "f", 5, "train"),
    ]
    events = spark.createDataFrame(rows, EVENTS)
    vocab = fit_item_vocab(events, min_count=1)
    index = {r[C.ITEM_ID]: r[C.ITEM_IDX] for r in vocab.collect()}
    sequences = build_sequences(with_item_idx(events, vocab))
    got = {r[C.TARGET]: r[C.USER_VECTOR]
           for r in train_examples(sequences, CONFIG, stats=_identity_stats(spark)).collect()}
    log1p = lambda *values: pytest.approx([math.log1p(v) for v in values], rel=1e-6)  # noqa: E731
    # recency_days, n_events, n_sessions, monetary of the baskets before the target's
    assert got[index["b"]] == log1p(0, 0, 0, 0)  # in the first basket: nothing before it (recency: the mean, 0)
    assert got[index["c"]] == log1p(3, 2, 1, 8)
    assert got[index["a"]] == log1p(7, 3, 2, 8)  # b1 and b2; the view has no money
    # d follows a in b3, but a is its own basket's: d's user is the same as a's.
    assert got[index["d"]] == log1p(7, 3, 2, 8)


@pytest.fixture(scope="module")
def shop(spark: SparkSession) -> DataFrame:
    """Eight users' baskets over 60 days, seeded: purchases with prices (some unknown, some without a
    quantity), views and carts; split by time at day 40 (validation) and day 50 (test)."""
    rng = np.random.default_rng(7)
    rows, n = [], 0
    for user in range(8):
        for basket in range(int(rng.integers(2, 9))):
            start = dt.datetime(2024, 1, 1) + dt.timedelta(days=float(rng.uniform(0, 60)))
            for line in range(int(rng.integers(1, 5))):
                n += 1
                kind = str(rng.choice(["purchase", "purchase", "view", "cart"]))
                price = None if rng.random() < 0.15 else round(float(rng.uniform(0.5, 9.0)), 2)
                quantity = None if rng.random() < 0.1 else float(rng.integers(1, 4))
                ts = start + dt.timedelta(minutes=line)
                split = ("test" if ts >= dt.datetime(2024, 2, 20) else
                         "validation" if ts >= dt.datetime(2024, 2, 10) else "train")
                rows.append((f"e{n}", f"u{user}", f"i{int(rng.integers(0, 12))}", kind, ts, quantity, price,
                             f"u{user}b{basket}", "f", n, split))
    return spark.createDataFrame(rows, EVENTS)


def _user_features_vectors(events: DataFrame, stats: DataFrame) -> dict[str, list[float]]:
    """gold user_features' user_vector of ``events`` (its training period: split = 'train')."""
    items = events.select(C.ITEM_ID).distinct().withColumn(C.CATEGORY, F.lit("c"))
    features = build_user_features(events, None, items, top_n=3, half_life_days=14.0)
    return {r[C.USER_ID]: r[C.USER_VECTOR] for r in with_user_vector(features, stats).collect()}


def test_queries_and_serving_rows_see_the_user_features_at_the_end_of_their_periods(spark: SparkSession,
                                                                                   shop: DataFrame) -> None:
    splits = {r[C.SPLIT] for r in shop.select(C.SPLIT).distinct().collect()}
    assert splits == {"train", "validation", "test"}
    vocab = fit_item_vocab(shop.filter(F.col(C.SPLIT) == "train"), min_count=1)
    sequences = build_sequences(with_item_idx(shop, vocab))
    train_only = shop.filter(F.col(C.SPLIT) == "train")
    stats = fit_user_stats(build_user_features(train_only, None, shop.select(C.ITEM_ID).distinct()
                                               .withColumn(C.CATEGORY, F.lit("c")), 3, 14.0))
    queries = {(r[C.USER_ID], r[C.SPLIT]): r[C.USER_VECTOR]
               for r in eval_queries(sequences, CONFIG, stats=stats).collect()}
    assert {split for _, split in queries} == {"validation", "test"}
    # As of the end of training / of validation / of the data: the same events relabelled as the
    # training period of gold user_features.
    as_train = lambda kept: shop.filter(F.col(C.SPLIT).isin(*kept)).withColumn(C.SPLIT, F.lit("train"))  # noqa: E731
    expected = {split: _user_features_vectors(as_train(kept), stats)
                for split, kept in (("validation", ["train"]), ("test", ["train", "validation"]),
                                    ("serving", ["train", "validation", "test"]))}
    for (user, split), vector in queries.items():
        np.testing.assert_allclose(vector, expected[split][user], rtol=1e-5, atol=1e-5, err_msg=f"{user} {split}")
    serving = {r[C.USER_ID]: r[C.USER_VECTOR] for r in serving_histories(sequences, CONFIG, stats=stats).collect()}
    assert set(serving) == set(expected["serving"]) and len(serving) == 8
    for user, vector in serving.items():
        np.testing.assert_allclose(vector, expected["serving"][user], rtol=1e-5, atol=1e-5, err_msg=user)
    # The test query sees validation's events too: at least one user's vector moved.
    moved = [user for (user, split) in queries if split == "test" and (user, "validation") in queries
             and not np.allclose(queries[(user, "test")], queries[(user, "validation")])]
    assert moved


def test_every_example_of_the_shop_matches_a_reference_over_its_earlier_baskets(spark: SparkSession,
                                                                              shop: DataFrame) -> None:
    """train_examples computes the vectors by running sums over each user's steps; here they are
    recomputed in Python from the events, filtering each target's prefix by its basket."""
    train = shop.filter(F.col(C.SPLIT) == "train")
    vocab = fit_item_vocab(train, min_count=1)
    index = {r[C.ITEM_ID]: r[C.ITEM_IDX] for r in vocab.collect()}
    got: dict[str, list] = {}
    for r in train_examples(build_sequences(with_item_idx(shop, vocab)), CONFIG, stats=_identity_stats(spark)).collect():
        got.setdefault(r[C.USER_ID], []).append((r[C.TARGET], r[C.USER_VECTOR]))

    expected: dict[str, list] = {}
    events = sorted(train.collect(), key=lambda e: (e[C.USER_ID], e[C.EVENT_TS], e[C.SOURCE_ROW]))
    for user in {e[C.USER_ID] for e in events}:
        steps = [e for e in events if e[C.USER_ID] == user]
        for pos in range(1, len(steps)):  # a target needs a history
            target = steps[pos]
            earlier = [e for e in steps[:pos] if e[C.SESSION_ID] != target[C.SESSION_ID]]
            money = sum(e[C.QUANTITY] * e[C.PRICE] for e in earlier
                        if e[C.EVENT_TYPE] == "purchase" and e[C.PRICE] is not None and e[C.QUANTITY] is not None)
            recency = ((target[C.EVENT_TS] - max(e[C.EVENT_TS] for e in earlier)).total_seconds() / 86_400
                       if earlier else 0.0)
            raw = (recency, len(earlier), len({e[C.SESSION_ID] for e in earlier}), money)
            expected.setdefault(user, []).append((index[target[C.ITEM_ID]], [math.log1p(v) for v in raw]))

    assert set(got) == set(expected) and sum(map(len, expected.values())) > 50
    for user, rows in expected.items():
        key = lambda row: (row[0], [round(v, 6) for v in row[1]])  # noqa: E731
        mine, reference = sorted(got[user], key=key), sorted(rows, key=key)
        assert [t for t, _ in mine] == [t for t, _ in reference], user
        np.testing.assert_allclose([v for _, v in mine], [v for _, v in reference], rtol=1e-6, atol=1e-6,
                                   err_msg=user)
