"""Prepare and features transforms on tiny inputs, compared as DataFrames."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import math

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from recspark import constants as C
from recspark.config import FeaturesConfig, FeedbackConfig
from recspark.pipeline.features import (
    build_sequences, eval_queries, fit_item_vocab, left_pad, serving_histories, train_baskets, train_examples, train_windows,
    with_item_idx, with_split,
)
from recspark.pipeline.prepare import coarsen_age, dedupe_events, with_pseudonymous_users
from recspark.pipeline.privacy import hmac_sha256, pseudonymise

EVENTS = "event_id string, user_id string, item_id string, event_type string, event_ts timestamp, quantity double, price double, session_id string, source_file string, source_row long"


def ts(day: int, hour: int = 0) -> dt.datetime:
    return dt.datetime(2024, 1, day, hour)


def test_hmac_matches_python_hmac(spark: SparkSession) -> None:
    key = b"test-key"
    df = spark.createDataFrame([("1001",), ("alice",)], "u string")
    got = [row[0] for row in df.select(hmac_sha256("u", key)).collect()]
    assert got == [hmac.new(key, m.encode(), hashlib.sha256).hexdigest() for m in ("1001", "alice")]


def test_pseudonyms_depend_on_the_key(spark: SparkSession) -> None:
    df = spark.createDataFrame([("1001",)], "u string")
    first, second = (df.select(pseudonymise("u", key)).first()[0] for key in (b"k1", b"k2"))
    assert first != second and first.startswith("u_") and "1001" not in first


def test_each_row_gets_the_pseudonym_of_its_own_id(spark: SparkSession) -> None:
    """Hashed once per distinct id and joined back: the same column as hashing every row, in place."""
    df = spark.createDataFrame([("e1", "1001", 1.0), ("e2", "1002", 2.0), ("e3", "1001", 3.0), ("e4", None, 4.0)],
                               "event_id string, user_id string, quantity double")
    got = with_pseudonymous_users(df, b"k1")
    assert got.columns == df.columns
    expected = df.withColumn("user_id", F.when(F.col("user_id").isNotNull(), pseudonymise("user_id", b"k1")))
    assertDataFrameEqual(got, expected)


def test_dedupe_sums_repeated_lines_of_one_interaction(spark: SparkSession) -> None:
    events = spark.createDataFrame([
        ("e1", "u", "i", "purchase", ts(1), 1.0, 2.0, "b1", "f", 7),
        ("e2", "u", "i", "purchase", ts(1), None, 2.0, "b1", "f", 3),
        ("e3", "u", "i", "purchase", ts(2), 2.0, 2.0, "b2", "f", 9),
    ], EVENTS)
    expected = spark.createDataFrame([
        ("e1", "u", "i", "purchase", ts(1), "b1", 2.0, 2.0, "f", 3),
        ("e3", "u", "i", "purchase", ts(2), "b2", 2.0, 2.0, "f", 9),
    ], "event_id string, user_id string, item_id string, event_type string, event_ts timestamp, session_id string, quantity double, price double, source_file string, source_row long")
    assertDataFrameEqual(dedupe_events(events), expected)


def test_coarsen_age(spark: SparkSession) -> None:
    df = spark.createDataFrame([("37",), ("45-54",), (None,)], "age string")
    assert [r[0] for r in df.select(coarsen_age("age")).collect()] == ["30-39", "45-54", None]


def test_left_pad(spark: SparkSession) -> None:
    df = spark.createDataFrame([([5, 6],), ([1, 2, 3, 4, 5],), ([],)], "a array<int>")
    assert [r[0] for r in df.select(left_pad(F.col("a"), 3)).collect()] == [[0, 5, 6], [3, 4, 5], [0, 0, 0]]


@pytest.fixture(scope="module")
def split_events(spark: SparkSession):
    # u1: four baskets (b1..b4): b4 -> test, b3 -> validation. u2: two events without sessions
    # (too few to hold out): all train. Equal timestamps are ordered by source row.
    rows = [
        ("e1", "u1", "a", "purchase", ts(1), 1.0, 1.0, "b1", "f", 1),
        ("e2", "u1", "b", "purchase", ts(1), 1.0, 1.0, "b1", "f", 2),
        ("e3", "u1", "a", "purchase", ts(2), 1.0, 1.0, "b2", "f", 3),
        ("e4", "u1", "c", "purchase", ts(3), 1.0, 1.0, "b3", "f", 4),
        ("e5", "u1", "d", "purchase", ts(4), 1.0, 1.0, "b4", "f", 5),
        ("e6", "u1", "a", "purchase", ts(4), 1.0, 1.0, "b4", "f", 6),
        ("e7", "u2", "a", "purchase", ts(1), 1.0, 1.0, None, "f", 7),
        ("e8", "u2", "b", "purchase", ts(1), 1.0, 1.0, None, "f", 8),
    ]
    return with_split(spark.createDataFrame(rows, EVENTS), n_test=1, n_validation=1)


def test_split_holds_out_each_users_latest_sessions(split_events) -> None:
    got = {row[C.EVENT_ID]: row[C.SPLIT] for row in split_events.collect()}
    assert got == {"e1": "train", "e2": "train", "e3": "train", "e4": "validation", "e5": "test", "e6": "test",
                   "e7": "train", "e8": "train"}


def test_leave_last_out_ties_break_by_row_order(spark: SparkSession) -> None:
    rows = [("e1", "u", "x", "rate", ts(1), 5.0, None, None, "f", 1),
            ("e2", "u", "y", "rate", ts(2), 4.0, None, None, "f", 2),
            ("e3", "u", "z", "rate", ts(2), 3.0, None, None, "f", 3)]
    got = {r[C.EVENT_ID]: r[C.SPLIT] for r in with_split(spark.createDataFrame(rows, EVENTS), 1, 1).collect()}
    assert got == {"e1": "train", "e2": "validation", "e3": "test"}


def test_vocab_is_fitted_on_train_only(split_events) -> None:
    vocab = {r[C.ITEM_ID]: (r[C.ITEM_IDX], r[C.TRAIN_COUNT])
             for r in fit_item_vocab(split_events.filter("split = 'train'"), min_count=2).collect()}
    # train counts: a=3 (u1 twice, u2 once), b=2; c and d are only in validation/test. The vocabulary
    # starts after PAD, OOV and the default hashed out-of-vocabulary buckets.
    first = C.first_vocab_index(FeaturesConfig.oov_buckets)
    assert vocab == {"a": (first, 3), "b": (first + 1, 2)}


def test_examples_queries_and_serving_histories(spark: SparkSession, split_events) -> None:
    # One out-of-vocabulary bucket: every unknown item is OOV_IDX = 1 (buckets: tests/test_oov_buckets.py).
    vocab = fit_item_vocab(split_events.filter("split = 'train'"), min_count=1, buckets=1)  # a=2, b=3
    sequences = build_sequences(with_item_idx(split_events, vocab, 1))
    config = FeaturesConfig(max_seq_len=3, max_examples_per_user=10, oov_buckets=1)

    assertDataFrameEqual(
        train_examples(sequences, config).select(C.USER_ID, C.HISTORY, C.TARGET),
        spark.createDataFrame([("u1", [0, 2, 3], 2), ("u1", [0, 0, 2], 3), ("u2", [0, 0, 2], 3)],
                              "user_id string, history array<int>, target int"),
    )
    queries = {(r[C.USER_ID], r[C.SPLIT]): r for r in eval_queries(sequences, config).collect()}
    assert set(queries) == {("u1", "validation"), ("u1", "test")}
    test = queries[("u1", "test")]
    # c and d are outside the vocabulary (OOV=1): the history keeps them as OOV.
    assert test[C.HISTORY] == [3, 2, 1] and sorted(test[C.RELEVANT]) == ["a", "d"]
    assert sorted(test[C.SEEN]) == ["a", "b", "c"]
    assert queries[("u1", "validation")][C.RELEVANT] == ["c"]
    serving = {r[C.USER_ID]: r[C.HISTORY] for r in serving_histories(sequences, config).collect()}
    assert serving == {"u1": [1, 1, 2], "u2": [0, 2, 3]}


def test_examples_keep_only_latest_per_user(spark: SparkSession, split_events) -> None:
    vocab = fit_item_vocab(split_events.filter("split = 'train'"), min_count=1, buckets=1)
    sequences = build_sequences(with_item_idx(split_events, vocab, 1))
    examples = train_examples(sequences, FeaturesConfig(max_seq_len=3, max_examples_per_user=1, oov_buckets=1))
    assert sorted((r[C.USER_ID], r[C.TARGET]) for r in examples.collect()) == [("u1", 2), ("u2", 3)]


def test_windows_hold_each_training_step_once_back_from_the_latest(spark: SparkSession) -> None:
    # One user, 8 training steps of items 2..9; windows of max_seq_len 3 end at the latest step.
    items = list(range(2, 10))
    ts = [dt.datetime(2024, 1, 1) + dt.timedelta(hours=h) for h in range(len(items))]
    sequences = spark.createDataFrame(
        [("u", items, ["purchase"] * 8, ts, ["train"] * 8, [f"s{i}" for i in items], [None] * 8)],
        "user_id string, item_idx array<int>, event_type array<string>, event_ts array<timestamp>, split array<string>, "
        "session_id array<string>, purchase_value array<double>")

    def windows(most: int) -> list[tuple[list[int], int]]:
        config = FeaturesConfig(max_seq_len=3, max_windows_per_user=most, max_examples_per_user=1, oov_buckets=1)
        return sorted((r[C.HISTORY], r[C.TARGET]) for r in train_windows(sequences, config).collect())

    assert windows(10) == [([0, 0, 2], 3), ([3, 4, 5], 6), ([6, 7, 8], 9)]
    # A model predicting at every step of a window (each real step predicts the next, the last one
    # the target) predicts every step after the first exactly once per epoch.
    predicted = [item for history, target in windows(10) for item in [*[h for h in history if h][1:], target]]
    assert sorted(predicted) == items[1:]
    assert windows(2) == [([3, 4, 5], 6), ([6, 7, 8], 9)]
    # train_examples of the same sequence: one row per step, each user's latest max_examples_per_user.
    every_step = FeaturesConfig(max_seq_len=3, max_examples_per_user=10, oov_buckets=1)
    assert sorted(r[C.TARGET] for r in train_examples(sequences, every_step).collect()) == items[1:]


def test_each_model_names_the_table_it_trains_on() -> None:
    from recspark.models import MODEL_NAMES, model_examples_table

    tables = {name: model_examples_table(name) for name in MODEL_NAMES}
    assert tables == {"mean_pool": C.TRAIN_EXAMPLES, "sasrec": C.TRAIN_WINDOWS, "towers": C.TRAIN_EXAMPLES,
                      "dnn": C.TRAIN_EXAMPLES, "repeatnet": C.TRAIN_BASKETS, "repeatnet_explore": C.TRAIN_BASKETS,
                      "repeatnet_next_item": C.TRAIN_BASKETS}


def test_basket_targets_are_every_item_of_the_next_basket_and_none_of_the_current(spark: SparkSession) -> None:
    # One user, baskets b1 = (2, 3), b2 = (4, 2, 4, 1), b3 = (5), then b4 = (6) in validation. Item 1
    # is the unknown index (never a target); 4 repeats inside b2 (one target).
    steps = [(2, "b1"), (3, "b1"), (4, "b2"), (2, "b2"), (4, "b2"), (1, "b2"), (5, "b3"), (6, "b4")]
    ts = [dt.datetime(2024, 1, 1 + n) for n in (0, 0, 1, 1, 1, 1, 2, 3)]
    sequences = spark.createDataFrame(
        [("u", [i for i, _ in steps], ["purchase"] * 8, ts, ["train"] * 7 + ["validation"], [b for _, b in steps],
          [None] * 8)],
        "user_id string, item_idx array<int>, event_type array<string>, event_ts array<timestamp>, split array<string>, "
        "session_id array<string>, purchase_value array<double>")
    config = FeaturesConfig(max_seq_len=4, max_baskets_per_user=10, max_basket_items=3, oov_buckets=1)
    got = sorted((r[C.HISTORY], r[C.TARGET]) for r in train_baskets(sequences, config).collect())
    # b1 has no history: no row. b2's history is b1; b3's history the last 4 steps (b2). b4 is validation.
    assert got == [([0, 0, 2, 3], [4, 2, 0]), ([4, 2, 4, 1], [5, 0, 0])]
    latest_only = FeaturesConfig(max_seq_len=4, max_baskets_per_user=1, max_basket_items=1, oov_buckets=1)
    assert [r[C.TARGET] for r in train_baskets(sequences, latest_only).collect()] == [[5]]
    # A 1.5-day horizon: b2 (day 1) targets b2 and b3 (day 2); b3's horizon would reach b4 (day 3)
    # but b4 is validation, never a training target.
    horizon = FeaturesConfig(max_seq_len=4, max_baskets_per_user=10, max_basket_items=3, oov_buckets=1,
                             target_horizon_days=1.5)
    assert sorted(r[C.TARGET] for r in train_baskets(sequences, horizon).collect()) == [[4, 2, 5], [5, 0, 0]]
    # The refit's rows (train + validation, gold refit_baskets): the validation basket b4 is now a row
    # of its own, after b1..b3's history.
    refit = sorted(r[C.TARGET] for r in train_baskets(sequences, config, splits=("train", "validation")).collect())
    assert refit == [[4, 2, 0], [5, 0, 0], [6, 0, 0]]
    one_day = FeaturesConfig(max_seq_len=4, max_baskets_per_user=10, max_basket_items=3, oov_buckets=1,
                             target_horizon_days=1.0)  # the next day's basket starts exactly at the horizon
    assert sorted(r[C.TARGET] for r in train_baskets(sequences, one_day).collect()) == [[4, 2, 0], [5, 0, 0]]

    # Repeat profiles, point in time: b3's example sees b1 and b2 only. Item 2 is in 2 of 2 baskets
    # (latest b2, bought on days 1 and 2), 4 in b2, 3 in b1 (fewer baskets, then the latest basket
    # first); 1 is the unknown index and never a candidate. With 2 candidates: [2, 4].
    profiles = FeaturesConfig(max_seq_len=4, max_baskets_per_user=10, max_basket_items=3, oov_buckets=1,
                              repeat_candidates=2)
    rows = {tuple(r[C.TARGET]): r for r in train_baskets(sequences, profiles).collect()}
    b3, b2 = rows[(5, 0, 0)], rows[(4, 2, 0)]
    assert b3[C.REPEAT_ITEMS] == [2, 4] and b2[C.REPEAT_ITEMS] == [2, 3]
    item2 = b3[C.REPEAT_FEATURES][:C.REPEAT_FEATURE_COUNT]
    # log(1 + 2 baskets), share 2/2, log(1 + 1 basket since: b2 is the latest), 0 days before the
    # latest event, log(1 + 1 day between its two purchases), and the item's repurchase rate over the
    # whole training period: its one buyer bought it in 2 baskets, (1 + 1) / (1 + 2); and its
    # repurchase cycle over all buyers, that buyer's log(1 + 1 day between b1 and b2).
    assert item2 == pytest.approx([math.log(3), 1.0, math.log(2), 0.0, math.log(2), 2 / 3, math.log(2)], rel=1e-6)
    item4 = b3[C.REPEAT_FEATURES][C.REPEAT_FEATURE_COUNT:]
    # Item 4 twice in one basket: one basket, so no re-buyer, (0 + 1) / (1 + 2), and no cycle (0).
    assert item4 == pytest.approx([math.log(2), 0.5, math.log(2), 0.0, 0.0, 1 / 3, 0.0], rel=1e-6)
    # b2's example sees b1 only: 1 basket since it, 1 day before... b1 is the latest event itself.
    # The item's rate and cycle are product properties over the training period, not cut at the row.
    assert b2[C.REPEAT_FEATURES][:C.REPEAT_FEATURE_COUNT] == pytest.approx(
        [math.log(2), 1.0, math.log(2), 0.0, 0.0, 2 / 3, math.log(2)])


def test_a_basket_carries_the_ignored_items_of_the_latest_list_shown_before_it(spark: SparkSession) -> None:
    """Baskets b2 (day 1) and b3 (day 2) after lists r1 (day 0, noon) and r2 (day 1, noon). r1's top 4:
    i7, i5 (bought: a response), i8 (outside the vocabulary), i4 (in b2: b2 bought it after all); its
    5th, i3, is beyond k. r2: i6, i3 and i2, an impression of an item the run did not serve."""
    from recspark.feedback import ignored_lists

    steps = [(2, "b1"), (3, "b1"), (4, "b2"), (2, "b2"), (5, "b3"), (6, "b4")]
    sequences = spark.createDataFrame(
        [("u", [i for i, _ in steps], ["purchase"] * 6, [ts(1), ts(1), ts(2), ts(2), ts(3), ts(4)],
          ["train"] * 5 + ["validation"], [b for _, b in steps], [None] * 6)],
        "user_id string, item_idx array<int>, event_type array<string>, event_ts array<timestamp>, split array<string>, "
        "session_id array<string>, purchase_value array<double>")
    vocab = spark.createDataFrame([(f"i{i}", i) for i in range(2, 8)], "item_id string, item_idx int")
    impression = lambda user, item, run, day, rank, served=True: (user, item, run, "impression", ts(day, 12), rank, served)
    feedback = spark.createDataFrame([
        *[impression("u", item, "r1", 1, rank) for rank, item in enumerate(["i7", "i5", "i8", "i4", "i3"], start=1)],
        ("u", "i5", "r1", "purchase", ts(1, 18), None, True),
        *[impression("u", item, "r2", 2, rank) for rank, item in enumerate(["i6", "i3"], start=1)],
        impression("u", "i2", "r2", 2, None, served=False),
        impression("v", "i7", "r2", 2, 1),  # another user's list
    ], "user_id string, item_id string, run_id string, response string, event_ts timestamp, rank int, served boolean")
    lists = ignored_lists(feedback, vocab, k=4)
    config = FeaturesConfig(max_seq_len=4, max_baskets_per_user=10, max_basket_items=3, oov_buckets=1)
    baskets = lambda days: sorted(
        (r[C.TARGET], r[C.IGNORED]) for r in train_baskets(sequences, config, ignored=lists,
                                                           feedback=FeedbackConfig(k=4, ignored_days=days)).collect())
    # b2 takes r1's ignored items [7, 4] less its own 4; b3 takes r2's, the latest before it.
    assert baskets(7.0) == [([4, 2, 0], [7, 0, 0, 0]), ([5, 0, 0], [6, 3, 0, 0])]
    # A list is a basket's negatives for ignored_days after it was shown: 12 hours later is too late.
    assert baskets(0.25) == [([4, 2, 0], [0, 0, 0, 0]), ([5, 0, 0], [0, 0, 0, 0])]
    # Without feedback every basket carries k PADs (the column exists for every schema's reader).
    assert [r[C.IGNORED] for r in train_baskets(sequences, config, feedback=FeedbackConfig(k=2)).collect()] == [[0, 0]] * 2


def test_a_basket_id_that_comes_back_is_a_new_basket_for_the_profile_cut(spark: SparkSession) -> None:
    """Baskets are counted where the basket changes (as basket_steps counts them), not by distinct ids:
    a row's profile sees every basket before it, also when an id comes back (b1, b2, b1 again, b3)."""
    steps = [(2, "b1"), (3, "b2"), (4, "b1"), (5, "b3")]
    sequences = spark.createDataFrame(
        [("u", [i for i, _ in steps], ["purchase"] * 4, [dt.datetime(2024, 1, 1 + n) for n in range(4)],
          ["train"] * 4, [b for _, b in steps], [None] * 4)],
        "user_id string, item_idx array<int>, event_type array<string>, event_ts array<timestamp>, split array<string>, "
        "session_id array<string>, purchase_value array<double>")
    config = FeaturesConfig(max_seq_len=4, max_baskets_per_user=10, max_basket_items=1, oov_buckets=1,
                            repeat_candidates=3)
    got = {r[C.TARGET][0]: r[C.REPEAT_ITEMS] for r in train_baskets(sequences, config).collect()}
    # The third basket (b1 again, item 4) sees baskets 1 and 2 (items 2 and 3, once each: the latest first);
    # the fourth sees all three. Counting distinct ids would give it [2, 0, 0] and the fourth [3, 2, 0].
    assert got == {3: [2, 0, 0], 4: [3, 2, 0], 5: [4, 3, 2]}


def test_repeat_profiles_equal_each_rows_own_prefix_profile(spark: SparkSession) -> None:
    """Every row of with_repeat_profile gets exactly the profile of its own prefix (the user's
    baskets of its splits before its cut), as the serving module's independent one-user Python
    (ServingRows.repeat_profile) computes it from that prefix. Random shops, three candidates (ties
    and items pushed out of the profile), a reserved index, several cuts per user, rows with other
    splits and rows without a cut."""
    import random

    from recspark.pipeline.repeat_profiles import NO_CUT, basket_steps, with_repeat_profile
    from recspark.serving import ServingRows

    config = FeaturesConfig(oov_buckets=1, repeat_candidates=3)
    first = config.first_item_idx
    rng = random.Random(7)
    users, rows = [], []
    for u in range(6):
        n_baskets = rng.randint(1, 14)
        items, micros, splits, baskets = [], [], [], []
        for b in range(n_baskets):
            split = "train" if b < 0.6 * n_baskets else "validation" if b < 0.8 * n_baskets else "test"
            for item in rng.sample(range(first - 1, first + 6), rng.randint(1, 4)):
                items.append(item)
                micros.append(((u * 100 + b) * 86_400 + rng.randint(0, 3) * 3_600) * 1_000_000)
                splits.append(split)
                baskets.append(f"u{u}b{b}")
        users.append((f"u{u}", items, micros, splits, baskets))
        for pos, cut in enumerate(sorted(rng.sample(range(1, n_baskets + 2), min(4, n_baskets + 1)))):
            rows.append((f"u{u}", pos, cut, ["train"]))
        rows.append((f"u{u}", 10, rng.randint(1, n_baskets + 1), ["train", "validation"]))
        rows.append((f"u{u}", 11, NO_CUT, ["train", "validation", "test"]))
    sequences = spark.createDataFrame(
        [(u, items, [dt.datetime.fromtimestamp(m / 1e6, dt.timezone.utc).replace(tzinfo=None) for m in micros],
          splits, baskets) for u, items, micros, splits, baskets in users],
        "user_id string, item_idx array<int>, event_ts array<timestamp>, split array<string>, session_id array<string>")
    frame = spark.createDataFrame(rows, "user_id string, _pos int, _cut int, _splits array<string>")
    got = {(r[C.USER_ID], r["_pos"]): (r[C.REPEAT_ITEMS], r[C.REPEAT_FEATURES]) for r in with_repeat_profile(
        frame, basket_steps(sequences), config).collect()}

    # Reference: each item's repurchase rate and cycle over the training period by hand (the time of an
    # item in a basket is its latest line there), then each row's own prefix.
    buyers: dict[int, list[list[int]]] = {}
    for _, items, micros, splits, baskets in users:
        per_item: dict[int, dict[str, int]] = {}
        for item, us, split, basket in zip(items, micros, splits, baskets):
            if split == "train" and item >= first:
                times = per_item.setdefault(item, {})
                times[basket] = max(times.get(basket, us), us)
        for item, times in per_item.items():
            buyers.setdefault(item, []).append(sorted(times.values()))
    rates = {item: (sum(len(t) > 1 for t in bought) + 1) / (len(bought) + 2) for item, bought in buyers.items()}
    day = 86_400_000_000
    cycles = {item: [math.log1p((t[-1] - t[0]) / day / (len(t) - 1)) for t in bought if len(t) > 1]
              for item, bought in buyers.items()}
    gaps = {item: sum(c) / len(c) for item, c in cycles.items() if c}
    reference = ServingRows({}, rates, {"event_types": ["purchase"], "oov_buckets": 1,
                                        "repeat_candidates": 3, "first_item": first}, gaps)
    by_user = {u[0]: u for u in users}
    assert len(got) == len(rows)
    for user, pos, cut, allowed in rows:
        _, items, micros, splits, baskets = by_user[user]
        ordinals = [len(dict.fromkeys(baskets[:k + 1])) for k in range(len(baskets))]
        keep = [k for k in range(len(items)) if ordinals[k] < cut and splits[k] in allowed]
        want_items, want_features = reference.repeat_profile(
            [items[k] for k in keep], [micros[k] for k in keep], [baskets[k] for k in keep])
        got_items, got_features = got[(user, pos)]
        assert got_items == want_items, (user, pos, cut, allowed)
        assert got_features == pytest.approx(want_features, rel=1e-5, abs=1e-6), (user, pos, cut, allowed)


def test_protocol_filter_drops_rare_items_then_users_with_few_baskets(spark: SparkSession) -> None:
    from recspark.pipeline.features import filter_protocol

    # Item x: 3 events, y: 2, z: 1. u1 has baskets b1, b2 (z only in b3: after dropping z, b3 is gone);
    # u2 has one basket.
    rows = [("e1", "u1", "x", "purchase", ts(1), 1.0, 1.0, "b1", "f", 1),
            ("e2", "u1", "y", "purchase", ts(1), 1.0, 1.0, "b1", "f", 2),
            ("e3", "u1", "x", "purchase", ts(2), 1.0, 1.0, "b2", "f", 3),
            ("e4", "u1", "z", "purchase", ts(3), 1.0, 1.0, "b3", "f", 4),
            ("e5", "u2", "x", "purchase", ts(1), 1.0, 1.0, "c1", "f", 5),
            ("e6", "u2", "y", "purchase", ts(1), 1.0, 1.0, "c1", "f", 6)]
    events = spark.createDataFrame(rows, EVENTS)
    kept = lambda **kw: sorted(r[C.EVENT_ID] for r in filter_protocol(events, FeaturesConfig(**kw)).collect())
    assert kept() == ["e1", "e2", "e3", "e4", "e5", "e6"]
    assert kept(min_item_events=2) == ["e1", "e2", "e3", "e5", "e6"]
    assert kept(min_item_events=2, min_user_sessions=2) == ["e1", "e2", "e3"]
    assert kept(min_user_sessions=3) == ["e1", "e2", "e3", "e4"]
