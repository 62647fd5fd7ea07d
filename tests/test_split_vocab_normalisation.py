"""The global time split, the category vocabulary and the train-only normalisation, on tiny
hand-made inputs with hand-derived answers; then the whole features stage with split=time."""
from __future__ import annotations

import datetime as dt
import math

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from recspark import constants as C
from recspark.config import ConfigError, FeaturesConfig, load_config
from recspark.pipeline.features import (
    time_cuts,
    build_features, build_sequences, eval_queries, fit_item_vocab, split_events, with_item_idx,
)
from recspark.pipeline.item_features import build_item_features, fit_category_vocab
from recspark.pipeline.normalisation import (
    ITEM_VECTOR, fit_item_stats, fit_user_stats, with_item_vector, with_user_vector,
)
from recspark.pipeline.user_features import build_user_features
from recspark.utils.delta import overwrite_table, read_table

EVENTS = ("event_id string, user_id string, item_id string, event_type string, event_ts timestamp, "
          "session_id string, quantity double, price double, source_file string, source_row long")
ITEMS = "item_id string, category string, brand string, price double, stock long"
INFO = ("split_method string, validation_start timestamp, test_start timestamp, cuts_from string, "
        "train_events long, validation_events long, test_events long")


def day(n: float) -> dt.datetime:
    return dt.datetime(2024, 1, 1) + dt.timedelta(days=n - 1)


def events_at(spark: SparkSession, rows: list[tuple[str, str, str, dt.datetime]]) -> DataFrame:
    """(event_id, user_id, item_id, time) -> silver-shaped purchase events, one session each."""
    return spark.createDataFrame([(e, u, i, "purchase", t, e, 1.0, 1.0, "f", k) for k, (e, u, i, t) in enumerate(rows)],
                                 EVENTS)


def test_time_split_with_configured_cuts_and_queries(spark: SparkSession) -> None:
    # Cuts: validation from day 5 (inclusive), test from day 9 (inclusive).
    events = events_at(spark, [("e1", "u1", "a", day(1)), ("e2", "u1", "b", day(5)), ("e3", "u1", "c", day(8)),
                               ("e4", "u2", "a", day(5)), ("e5", "u2", "b", day(9)), ("e6", "u3", "c", day(9.5)),
                               ("e7", "u3", "a", day(10))])
    config = FeaturesConfig(split="time", validation_start="2024-01-05", test_start="2024-01-09T00:00:00",
                            max_seq_len=2)
    split, info = split_events(events, config)
    assertDataFrameEqual(split.select(C.EVENT_ID, C.SPLIT), spark.createDataFrame(
        [("e1", "train"), ("e2", "validation"), ("e3", "validation"), ("e4", "validation"), ("e5", "test"),
         ("e6", "test"), ("e7", "test")], "event_id string, split string"))
    assertDataFrameEqual(info, spark.createDataFrame(
        [("time", day(5), day(9), "config", 1, 3, 3)], INFO))
    # u1 has a training event -> a validation query (no test events -> no test query); u2 starts in
    # validation -> no validation query, but a test query conditioned on its validation event; u3
    # only has test events -> no query at all.
    # a -> the first vocabulary index (after the default out-of-vocabulary buckets); b, c out of vocabulary.
    vocab = fit_item_vocab(split.filter("split = 'train'"), min_count=1)
    queries = eval_queries(build_sequences(with_item_idx(split, vocab)), config)
    a = C.first_vocab_index(FeaturesConfig.oov_buckets)
    assertDataFrameEqual(queries.select(C.USER_ID, C.SPLIT, C.HISTORY, C.RELEVANT), spark.createDataFrame(
        [("u1", "validation", [0, a], ["b", "c"]), ("u2", "test", [0, a], ["b"])],
        "user_id string, split string, history array<int>, relevant array<string>"))


def test_time_split_quantile_cuts_are_recorded(spark: SparkSession) -> None:
    # Ten events on days 1..10: the 80% quantile is day 8 (8 of 10 at or before it), the 90% day 9.
    events = events_at(spark, [(f"e{n}", f"u{n % 2}", "a", day(n)) for n in range(1, 11)])
    split, info = split_events(events, FeaturesConfig(split="time"))
    assertDataFrameEqual(info, spark.createDataFrame(
        [("time", day(8), day(9), "quantiles 0.8, 0.9 of event_ts", 7, 1, 2)], INFO))
    got = {r[C.EVENT_ID]: r[C.SPLIT] for r in split.collect()}
    assert got == {**{f"e{n}": "train" for n in range(1, 8)}, "e8": "validation", "e9": "test", "e10": "test"}


def test_sessions_split_stays_the_default_and_is_described(spark: SparkSession) -> None:
    # u1 has three sessions: the last is test, the one before validation; u2 has one: train.
    events = events_at(spark, [("e1", "u1", "a", day(1)), ("e2", "u1", "b", day(2)), ("e3", "u1", "c", day(3)),
                               ("e4", "u2", "a", day(9))])
    split, info = split_events(events, FeaturesConfig())
    assert {r[C.EVENT_ID]: r[C.SPLIT] for r in split.collect()} == {
        "e1": "train", "e2": "validation", "e3": "test", "e4": "train"}
    assertDataFrameEqual(info, spark.createDataFrame(
        [("sessions", None, None, "last 1 session(s) test, 1 before validation, per user", 2, 1, 1)], INFO))


SPLIT_EVENTS = EVENTS + ", split string"


@pytest.fixture(scope="module")
def normalisation_inputs(spark: SparkSession):
    """Training: u1 buys a (day 1, 1 x 10), views b (day 2), buys a (day 3, 2 x 10); u2 views b
    (day 2). Test: u1 buys c (day 10, 99). Items: a shoes 10, b hats 20, c toys 99 (only in test),
    d without category (unknown)."""
    def build(test_price: float, c_price: float):
        events = spark.createDataFrame([
            ("e1", "u1", "a", "purchase", day(1), "s1", 1.0, 10.0, "f", 1, "train"),
            ("e2", "u1", "b", "view", day(2), "s2", 1.0, 20.0, "f", 2, "train"),
            ("e3", "u1", "a", "purchase", day(3), "s3", 2.0, 10.0, "f", 3, "train"),
            ("e4", "u1", "c", "purchase", day(10), "sT", 3.0, test_price, "f", 4, "test"),
            ("e5", "u2", "b", "view", day(2), "s4", 1.0, 20.0, "f", 5, "train"),
        ], SPLIT_EVENTS)
        items = spark.createDataFrame([("a", "shoes", "x", 10.0, 1), ("b", "hats", "y", 20.0, 1),
                                       ("c", "toys", "z", c_price, 1), ("d", "unknown", "z", 5.0, 1)], ITEMS)
        train = events.filter("split = 'train'")
        categories = fit_category_vocab(train, items)
        users = build_user_features(events, None, items, top_n=2, half_life_days=10.0)
        item_rows = build_item_features(events, items, fit_item_vocab(train, 1), 2, categories)
        return categories, users, item_rows
    return build


def test_category_vocab_is_fitted_on_train_and_maps_the_rest(spark: SparkSession, normalisation_inputs) -> None:
    categories, _, item_rows = normalisation_inputs(99.0, 99.0)
    # Training events: shoes 2 (a twice), hats 2 (b twice): tie broken by name -> hats first, then
    # shoes, after PAD, OOV and the default hashed out-of-vocabulary category buckets.
    buckets = FeaturesConfig.category_oov_buckets
    first = C.first_vocab_index(buckets)
    assertDataFrameEqual(categories, spark.createDataFrame(
        [("hats", 2, first), ("shoes", 2, first + 1)], "category string, train_count long, category_idx int"))
    # toys is only seen in the test period -> out of vocabulary: its hashed bucket (xxhash64 of the
    # name, in 2 .. first - 1); unknown -> missing (0).
    toys = spark.range(1).select((F.lit(C.FIRST_BUCKET_IDX) + F.pmod(F.xxhash64(F.lit("toys")), F.lit(buckets)))
                                 .cast("int")).first()[0]
    assert C.FIRST_BUCKET_IDX <= toys < first
    assertDataFrameEqual(item_rows.select(C.ITEM_ID, C.CATEGORY_IDX), spark.createDataFrame(
        [("a", first + 1), ("b", first), ("c", toys), ("d", 0)], "item_id string, category_idx int"))


def stats_rows(stats: DataFrame) -> dict:
    return {(r.table, r.feature): (r.mean, r.std, r.n_rows) for r in stats.collect()}


def test_statistics_come_from_training_rows_only(normalisation_inputs) -> None:
    _, users, items = normalisation_inputs(99.0, 99.0)
    _, users_changed, items_changed = normalisation_inputs(5000.0, 777.0)  # test purchase and test-only item
    before = stats_rows(fit_user_stats(users).unionByName(fit_item_stats(items)))
    after = stats_rows(fit_user_stats(users_changed).unionByName(fit_item_stats(items_changed)))
    assert before == after
    # n_events: u1 3, u2 1 -> log1p: ln 4, ln 2 -> mean 1.5 ln 2, population std 0.5 ln 2.
    mean, std, n = before[("user_features", "n_events")]
    assert (mean, std, n) == (pytest.approx(1.5 * math.log(2)), pytest.approx(0.5 * math.log(2)), 2)
    # price over the items with training events only (a 10, b 20): c (99, test only) and d are out.
    mean, std, n = before[("item_features", "price")]
    assert (mean, n) == (pytest.approx((math.log1p(10) + math.log1p(20)) / 2), 2)


def test_stored_statistics_are_the_applied_transform(spark: SparkSession, normalisation_inputs, tmp_path) -> None:
    _, users, items = normalisation_inputs(99.0, 99.0)
    path = str(tmp_path / "feature_stats")
    overwrite_table(fit_user_stats(users).unionByName(fit_item_stats(items)), path)
    stored = read_table(spark, path)
    # Each feature has two training users with values (x1, x2): log1p-standardised they are -1 and +1.
    # recency 0 / 1 day, events 3 / 1, sessions 3 / 1, monetary 30 / 0 -> u1 [-1, 1, 1, 1], u2 the opposite.
    assertDataFrameEqual(with_user_vector(users, stored).select(C.USER_ID, C.USER_VECTOR), spark.createDataFrame(
        [("u1", [-1.0, 1.0, 1.0, 1.0]), ("u2", [1.0, -1.0, -1.0, -1.0])], "user_id string, user_vector array<float>"))
    # Items: every component recomputed in Python from the stored table and the raw columns.
    stats = stats_rows(stored)
    from recspark.pipeline.normalisation import ITEM_VECTOR_FEATURES
    for row in with_item_vector(items, stored).collect():
        expected = []
        for name in ITEM_VECTOR_FEATURES:
            mean, std, _ = stats[("item_features", name)]
            expected.append(0.0 if row[name] is None else (math.log1p(max(row[name], 0.0)) - mean) / std)
        assert row[ITEM_VECTOR] == pytest.approx(expected, abs=1e-6), row[C.ITEM_ID]


def test_config_rejects_bad_cuts() -> None:
    with pytest.raises(ConfigError, match="features.validation_start"):
        load_config(None, ["features.validation_start='2024-02-01'", "features.test_start='2024-01-01'"])
    with pytest.raises(ConfigError, match="features.test_start"):
        load_config(None, ["features.test_start='next week'"])
    with pytest.raises(ConfigError, match="features.gap_buckets"):
        load_config(None, ["features.gap_buckets=0"])


def test_features_stage_with_time_split(spark: SparkSession, tmp_path) -> None:
    config = load_config(None, [f"paths.lakehouse={tmp_path}", "dataset.name=synthetic", "features.split=time",
                                "features.min_item_count=1", "features.max_seq_len=3"])
    # u1 on days 1, 2, 3, 4, 5 and u2 half a day later each time: of the 10 times, the 80% quantile
    # is the 8th (day 4.5, u2's), the 90% the 9th (day 5, u1's): 7 train, 1 validation, 2 test events.
    times = [("u1", d) for d in range(1, 6)] + [("u2", d + 0.5) for d in range(1, 6)]
    rows = [(f"e{k}", u, f"i{k % 3}", "purchase", day(d), None, 1.0, 2.0, "f", k) for k, (u, d) in enumerate(times)]
    overwrite_table(spark.createDataFrame(rows, EVENTS), config.table_path(C.SILVER, C.EVENTS))
    overwrite_table(spark.createDataFrame([("i0", "c0", "b", 2.0, 1), ("i1", "c1", "b", 2.0, 1), ("i2", "c0", "b", 2.0, 1)],
                                          ITEMS), config.table_path(C.SILVER, C.ITEMS))
    written = build_features(spark, config)
    info = read_table(spark, written["split_info"]).collect()
    assert [(r.validation_start, r.test_start, r.train_events, r.validation_events, r.test_events) for r in info] == [
        (day(4.5), day(5), 7, 1, 2)]
    queries = read_table(spark, written[C.EVAL_QUERIES])
    # u1: no validation event, day 5 in test; u2: day 4.5 in validation, day 5.5 in test.
    assert sorted((r.user_id, r.split) for r in queries.collect()) == [("u1", "test"), ("u2", "test"),
                                                                       ("u2", "validation")]
    assert {C.HISTORY_TYPES, C.HISTORY_GAPS} <= set(queries.columns)
    stats = read_table(spark, written[C.FEATURE_STATS])
    assert stats.filter(F.col("table") == "user_features").count() == 4
    users = read_table(spark, written["user_features"])
    assert [len(r[C.USER_VECTOR]) for r in users.collect()] == [4, 4]
    assert C.CATEGORY_IDX in read_table(spark, written["item_features"]).columns


def test_constant_and_empty_features_are_left_unscaled(spark: SparkSession) -> None:
    from recspark.pipeline.normalisation import fit_feature_stats, with_feature_vector

    # x is 3.0 on every row (its std may come out as rounding noise, not 0): stored std 1, mean
    # ln 4; y has no value at all: mean 0, std 1. Both normalise to 0 on every row.
    rows = spark.createDataFrame([(k, 3.0, None) for k in range(7)], "k int, x double, y double")
    stats = fit_feature_stats(rows, "t", ("x", "y"), "test rows")
    got = {r.feature: (r.mean, r.std, r.n_rows) for r in stats.collect()}
    assert got == {"x": (pytest.approx(math.log(4)), 1.0, 7), "y": (0.0, 1.0, 0)}
    vectors = [r.v for r in with_feature_vector(rows, stats, "t", ("x", "y"), "v").collect()]
    assert vectors == [pytest.approx([0.0, 0.0], abs=1e-6)] * 7


def test_quantile_cuts_are_minute_starts_whatever_the_layout(spark: SparkSession) -> None:
    # 20 events, one every 7 min 30 s from 20 s past: the 16th (80%) is at 120 min 20 s, the 18th
    # (90%) at 135 min 20 s; the cuts are the starts of their minutes.
    start = dt.datetime(2024, 1, 1)
    at = lambda n: start + dt.timedelta(seconds=450 * n + 20)
    rows = [(f"e{n}", f"u{n % 3}", "a", at(n)) for n in range(1, 21)]
    expected = (start + dt.timedelta(minutes=120), start + dt.timedelta(minutes=135))
    layouts = [events_at(spark, rows).coalesce(1), events_at(spark, rows[::-1]).repartition(7),
               events_at(spark, rows).repartition(3, C.USER_ID)]
    for events in layouts:
        cuts = time_cuts(events, None, None).collect()[0]
        assert (cuts["validation_start"], cuts["test_start"]) == expected


def test_the_serving_side_holds_every_period_and_the_items_first_seen_in_the_last_week(spark: SparkSession,
                                                                                       tmp_path) -> None:
    """The model that serves is fitted on serve_baskets (every period) with serving_item_vocab: the
    training vocabulary, unchanged, plus the items that reach min_item_count only later; the tested
    refit's rows (refit_baskets) stop before the test period and never see those items."""
    config = load_config(None, [f"paths.lakehouse={tmp_path}", "dataset.name=synthetic", "features.split=time",
                                "features.validation_start='2024-01-05'", "features.test_start='2024-01-09'",
                                "features.min_item_count=2", "features.max_seq_len=3", "train.models=[repeatnet]"])
    # Baskets (user, day, items): a and b are bought in training; n first in the test week, twice.
    baskets = [("u1", 1, "ab"), ("u1", 2, "a"), ("u1", 3, "b"), ("u1", 6, "a"), ("u1", 10, "na"),
               ("u2", 1, "a"), ("u2", 2, "b"), ("u2", 7, "b"), ("u2", 11, "n")]
    rows = [(f"e{len(seen)}", user, item, "purchase", day(d), f"{user}-{d}", 1.0, 2.0, "f", len(seen))
            for seen in [[]] for user, d, items in baskets for item in items if not seen.append(item)]
    overwrite_table(spark.createDataFrame(rows, EVENTS), config.table_path(C.SILVER, C.EVENTS))
    overwrite_table(spark.createDataFrame([(i, "c0", "b", 2.0, 1) for i in "abn"], ITEMS),
                    config.table_path(C.SILVER, C.ITEMS))
    written = build_features(spark, config)

    pairs = lambda table: sorted((r.item_id, r.item_idx) for r in read_table(spark, written[table]).collect())
    first = config.features.first_item_idx
    assert pairs(C.ITEM_VOCAB) == [("a", first), ("b", first + 1)]
    assert pairs(C.SERVING_ITEM_VOCAB) == [("a", first), ("b", first + 1), ("n", first + 2)]
    # Baskets with a history: train u1 d2, d3, u2 d2; + validation u1 d6, u2 d7; + test u1 d10, u2 d11.
    counts = {table: read_table(spark, written[table]).count()
              for table in (C.TRAIN_BASKETS, C.REFIT_BASKETS, C.SERVE_BASKETS)}
    assert counts == {C.TRAIN_BASKETS: 3, C.REFIT_BASKETS: 5, C.SERVE_BASKETS: 7}
    targets = lambda table: {i for r in read_table(spark, written[table]).collect() for i in r[C.TARGET]}
    assert first + 2 in targets(C.SERVE_BASKETS) and first + 2 not in targets(C.REFIT_BASKETS)
    # Everyone is scored now from their latest steps, n by its own row (the training side's bucket before).
    histories = {r.user_id: r[C.HISTORY] for r in read_table(spark, written[C.SERVING_HISTORIES]).collect()}
    assert histories == {"u1": [first, first + 2, first], "u2": [first + 1, first + 1, first + 2]}
    # The serving fit's model: sized for the serving vocabulary, the popularity sampler's counts over
    # every period (a: 5 lines, b: 4, n: 2); without one, n could never be a negative.
    from recspark.models.spec import ModelSpec
    from recspark.stages import serving_spec

    spec = ModelSpec(num_items=first + 2, max_seq_len=3, item_counts=[0] * first + [3, 3], first_item_idx=first)
    served = serving_spec(spec, read_table(spark, written[C.SERVING_ITEM_VOCAB]),
                          read_table(spark, written[C.SERVING_SEQUENCES]))
    assert served.num_items == first + 3 and served.item_counts == [0] * first + [5, 4, 2]
    assert serving_spec(ModelSpec(num_items=first + 2, max_seq_len=3, first_item_idx=first),
                        read_table(spark, written[C.SERVING_ITEM_VOCAB]),
                        read_table(spark, written[C.SERVING_SEQUENCES])).item_counts is None
