"""ALS baseline on a tiny shop whose answer is known: two groups of users with disjoint tastes."""
from __future__ import annotations

from pyspark.sql import SparkSession

from recspark import constants as C
from recspark.config import FeaturesConfig
from recspark.evaluation.baselines import als

# The default layout: PAD 0, unknown 1, 64 hashed out-of-vocabulary buckets 2..65, items from 66
# (written out, not taken from the layout code under test).
assert FeaturesConfig().oov_buckets == 64
FIRST = 66


def test_als_recommends_the_users_own_group_and_skips_seen(spark: SparkSession, tmp_path) -> None:
    # Items FIRST.. +5 are group 0's, +6.. +11 group 1's; every user has seen 4 of their group's 6 items.
    group_0, group_1 = range(FIRST, FIRST + 6), range(FIRST + 6, FIRST + 12)
    sequences, queries, vocab = [], [], [(f"item-{i}", i) for i in range(FIRST, FIRST + 12)]
    for user in range(20):
        group = group_0 if user % 2 == 0 else group_1
        seen = [i for n, i in enumerate(group) if (n + user) % 6 < 4]
        sequences.append((f"u{user}", seen, ["train"] * len(seen)))
        queries.append((f"u{user}", [f"item-{i}" for i in seen], seen))
    result = als(
        spark.createDataFrame(sequences, "user_id string, item_idx array<int>, split array<string>"),
        spark.createDataFrame(vocab, "item_id string, item_idx int"),
        spark.createDataFrame(queries, "user_id string, seen array<string>, seen_idx array<int>"),
        k=2, exclude_seen=True, rank=4, reg_param=0.01, max_iter=15, alpha=20.0, seed=1, first_item_idx=FIRST,
        checkpoint_dir=str(tmp_path / "spark-checkpoints"),
    ).collect()
    by_user: dict[str, list] = {}
    for row in result:
        by_user.setdefault(row[C.USER_ID], []).append(row)
    assert sorted(by_user) == sorted(f"u{u}" for u in range(20))
    for user, rows in by_user.items():
        number = int(user[1:])
        seen = set(next(q[1] for q in queries if q[0] == user))
        assert sorted(r[C.RANK] for r in rows) == [1, 2]
        assert not seen & {r[C.ITEM_ID] for r in rows}
        # The two unseen items of the user's own group are the right answer.
        own = {f"item-{i}" for i in (group_0 if number % 2 == 0 else group_1)}
        assert {r[C.ITEM_ID] for r in rows} == own - seen


# --------------------------------------------------------------------------------------------------
# Recent-window popularity and item-item co-occurrence on hand-made data
# --------------------------------------------------------------------------------------------------

import datetime as dt  # noqa: E402

from pyspark.sql import functions as F  # noqa: E402
from pyspark.testing import assertDataFrameEqual  # noqa: E402

from recspark.evaluation.baselines import cooccurrence_neighbours, item_cooccurrence, recent_popular  # noqa: E402

SEQ_SCHEMA = ("user_id string, item_id array<string>, item_idx array<int>, event_ts array<timestamp>, "
              "split array<string>")
QUERY_SCHEMA = "user_id string, history array<int>, seen array<string>, seen_idx array<int>"
VOCAB_SCHEMA = "item_id string, item_idx int, train_count long"
IDX = {"a": FIRST, "b": FIRST + 1, "c": FIRST + 2, "d": FIRST + 3, "e": FIRST + 4,
       "z": 2 + 17}  # z is out of vocabulary: one of the hashed buckets


def sequences_of(spark, users: dict[str, list[tuple[str, float, str]]]):
    """users: {user: [(item, day, split), ...]} in time order -> the gold sequences table."""
    day0 = dt.datetime(2024, 1, 1)
    rows = [(u, [i for i, _, _ in steps], [IDX[i] for i, _, _ in steps],
             [day0 + dt.timedelta(days=d) for _, d, _ in steps], [s for _, _, s in steps])
            for u, steps in users.items()]
    return spark.createDataFrame(rows, SEQ_SCHEMA)


def test_recent_popular_counts_only_the_last_days_of_training(spark: SparkSession) -> None:
    sequences = sequences_of(spark, {
        "u1": [("a", 1, "train"), ("b", 9, "train"), ("c", 10, "train"), ("d", 12, "test")],
        "u2": [("a", 2, "train"), ("b", 3, "train"), ("c", 9.5, "train")],
        "u3": [("d", 8, "train"), ("z", 9, "train"), ("a", 10, "train")],
    })
    vocab = spark.createDataFrame([("a", IDX["a"], 3), ("b", IDX["b"], 2), ("c", IDX["c"], 2), ("d", IDX["d"], 1)],
                                  VOCAB_SCHEMA)
    queries = spark.createDataFrame([("q1", [0], [], []), ("q2", [0], ["c"], [IDX["c"]])], QUERY_SCHEMA)
    # Training ends on day 10 (u1's test event on day 12 does not count); the window (8, 10] holds
    # u1 b, c; u2 c; u3 a (d on day 8 is on the boundary, out; z is out of vocabulary). Recent counts
    # c 2, a 1, b 1, d 0; a before b by all-time count (3 > 2).
    expected = spark.createDataFrame(
        [("q1", 1, "c", 2.0), ("q1", 2, "a", 1.0), ("q1", 3, "b", 1.0),
         ("q2", 1, "a", 1.0), ("q2", 2, "b", 1.0), ("q2", 3, "d", 0.0)],
        "user_id string, rank int, item_id string, score float")
    for exclude_seen in (False, True):
        result = recent_popular(sequences, vocab, queries, 3, exclude_seen, recent_days=2.0, first_item_idx=FIRST)
        wanted = expected if exclude_seen else expected.filter(F.col("user_id") == "q1").unionByName(
            expected.filter(F.col("user_id") == "q1").withColumn("user_id", F.lit("q2")))
        assertDataFrameEqual(result.select("user_id", "rank", "item_id", "score"), wanted)


COOC_USERS = {
    "u1": [("a", 1, "train"), ("b", 2, "train"), ("c", 3, "train"), ("e", 4, "test")],
    "u2": [("a", 1, "train"), ("z", 2, "train"), ("b", 3, "train")],
    "u3": [("b", 1, "train"), ("c", 2, "train"), ("d", 3, "train")],
}
# Pairs at most 2 steps apart among training items in the vocabulary (z and the test step e are
# skipped): u1 a-b, a-c, b-c; u2 a-b; u3 b-c, b-d, c-d. Counts: a-b 2, a-c 1, b-c 2, b-d 1, c-d 1.


def test_cooccurrence_neighbours_hand_counted(spark: SparkSession) -> None:
    result = cooccurrence_neighbours(sequences_of(spark, COOC_USERS), window=2, neighbours=2, first_item_idx=FIRST)
    a, b, c, d = (IDX[i] for i in "abcd")
    # Top 2 per item; ties broken by the smaller index: c has a (1) and d (1) -> a.
    expected = [(a, b, 2), (a, c, 1), (b, a, 2), (b, c, 2), (c, b, 2), (c, a, 1), (d, b, 1), (d, c, 1)]
    assertDataFrameEqual(result, spark.createDataFrame(expected, "item_idx int, neighbour_idx int, count long"))


def test_item_cooccurrence_scores_recent_items_and_fills_with_popular(spark: SparkSession) -> None:
    sequences = sequences_of(spark, COOC_USERS)
    vocab = spark.createDataFrame([(i, IDX[i], count) for i, count in zip("abcde", (2, 4, 2, 1, 9))], VOCAB_SCHEMA)
    a, b, c, d = (IDX[i] for i in "abcd")
    queries = spark.createDataFrame([
        # Recent (last 2 distinct known items) = a, d: a -> b 2, c 1; d -> b 1, c 1: b 3, c 2; then
        # the most popular filler not already listed: e.
        ("q1", [0, a, IDX["z"], d], ["a", "d"], [a, d]),  # z: a hashed bucket, never "recent"
        # Recent = c: c -> b 2, a 1; with seen items excluded b goes, a stays; fillers e, then d.
        ("q2", [0, 0, b, c], ["b", "c"], [b, c]),
    ], QUERY_SCHEMA)
    schema = "user_id string, rank int, item_id string, score float"
    got = item_cooccurrence(sequences, vocab, queries, 3, False, window=2, neighbours=2, recent_items=2, first_item_idx=FIRST)
    assertDataFrameEqual(got, spark.createDataFrame(
        [("q1", 1, "b", 3.0), ("q1", 2, "c", 2.0), ("q1", 3, "e", 0.0),
         # q2 recent = b, c: b -> a 2, c 2; c -> b 2, a 1: a 3, b 2, c 2 (b before c by index).
         ("q2", 1, "a", 3.0), ("q2", 2, "b", 2.0), ("q2", 3, "c", 2.0)], schema))
    got = item_cooccurrence(sequences, vocab, queries, 3, True, window=2, neighbours=2, recent_items=2, first_item_idx=FIRST)
    assertDataFrameEqual(got, spark.createDataFrame(
        [("q1", 1, "b", 3.0), ("q1", 2, "c", 2.0), ("q1", 3, "e", 0.0),
         ("q2", 1, "a", 3.0), ("q2", 2, "e", 0.0), ("q2", 3, "d", 0.0)], schema))


def test_cooccurrence_skips_reserved_indices(spark: SparkSession) -> None:
    # With the vocabulary starting after a's index, a is a hashed out-of-vocabulary bucket: it
    # neither has neighbours nor is one. Left: b-c 2, b-d 1, c-d 1 (u1 b-c, u3 b-c, b-d, c-d).
    result = cooccurrence_neighbours(sequences_of(spark, COOC_USERS), window=2, neighbours=2,
                                     first_item_idx=IDX["a"] + 1)
    b, c, d = (IDX[i] for i in "bcd")
    expected = [(b, c, 2), (b, d, 1), (c, b, 2), (c, d, 1), (d, b, 1), (d, c, 1)]
    assertDataFrameEqual(result, spark.createDataFrame(expected, "item_idx int, neighbour_idx int, count long"))


# --------------------------------------------------------------------------------------------------
# "Buy again": the user's own most frequent items, then popular fillers
# --------------------------------------------------------------------------------------------------

from recspark.evaluation.baselines import repeat_purchase, repeat_purchase_scores  # noqa: E402
from recspark.evaluation.evaluate import REPEAT, baseline_names  # noqa: E402

REPEAT_USERS = {
    # u1: a x2, then b and c once each (c later than b), z (out of vocabulary) three times; in
    # validation d once; in test e three times (the held-out period: never history).
    "u1": [("a", 1, "train"), ("z", 2, "train"), ("b", 3, "train"), ("z", 3, "train"), ("a", 4, "train"),
           ("c", 5, "train"), ("z", 6, "train"), ("d", 7, "validation"), ("e", 8, "test"), ("e", 8, "test"),
           ("e", 9, "test")],
    # u2: only b, once; u3 has no query.
    "u2": [("b", 2, "train"), ("e", 9, "test")],
    "u3": [("e", 1, "train"), ("e", 2, "train")],
}
REPEAT_VOCAB = [(i, IDX[i], count) for i, count in zip("abcde", (2, 2, 1, 1, 5))]  # popularity: e, a, b, c, d
REPEAT_SCHEMA = "user_id string, rank int, item_id string, score float"


def test_repeat_purchase_ranks_own_items_by_count_then_recency_and_fills_with_popular(spark: SparkSession) -> None:
    sequences = sequences_of(spark, REPEAT_USERS)
    vocab = spark.createDataFrame(REPEAT_VOCAB, VOCAB_SCHEMA)
    queries = spark.createDataFrame([("u1", [0], [], []), ("u2", [0], [], [])], QUERY_SCHEMA)
    # Validation queries: training history only. u1: a (2), then c before b (1 each, c later);
    # z never (reserved index); fillers e, then d (a, b, c already listed). u2: b, then e, a, c.
    got = repeat_purchase(sequences, vocab, queries, 5, first_item_idx=FIRST)
    assertDataFrameEqual(got, spark.createDataFrame(
        [("u1", 1, "a", 2.0), ("u1", 2, "c", 1.0), ("u1", 3, "b", 1.0), ("u1", 4, "e", 0.0), ("u1", 5, "d", 0.0),
         ("u2", 1, "b", 1.0), ("u2", 2, "e", 0.0), ("u2", 3, "a", 0.0), ("u2", 4, "c", 0.0), ("u2", 5, "d", 0.0)],
        REPEAT_SCHEMA))
    # Test queries: train + validation; d (validation, day 7) is now u1's most recent single item.
    # The test-period e (3 events) is still never an own item: it comes only as the top filler.
    got = repeat_purchase(sequences, vocab, queries, 4, splits=("train", "validation"), first_item_idx=FIRST)
    assertDataFrameEqual(got, spark.createDataFrame(
        [("u1", 1, "a", 2.0), ("u1", 2, "d", 1.0), ("u1", 3, "c", 1.0), ("u1", 4, "b", 1.0),
         ("u2", 1, "b", 1.0), ("u2", 2, "e", 0.0), ("u2", 3, "a", 0.0), ("u2", 4, "c", 0.0)], REPEAT_SCHEMA))


def test_repeat_purchase_never_returns_reserved_indices(spark: SparkSession) -> None:
    # With the vocabulary starting at b, a (index FIRST) is a hashed bucket: not an own item even though
    # u1 had it most often, and not in the vocabulary the fillers come from.
    sequences = sequences_of(spark, REPEAT_USERS)
    vocab = spark.createDataFrame([v for v in REPEAT_VOCAB if v[1] >= IDX["b"]], VOCAB_SCHEMA)
    queries = spark.createDataFrame([("u1", [0], [], [])], QUERY_SCHEMA)
    got = repeat_purchase(sequences, vocab, queries, 4, first_item_idx=IDX["b"])
    assertDataFrameEqual(got, spark.createDataFrame(
        [("u1", 1, "c", 1.0), ("u1", 2, "b", 1.0), ("u1", 3, "e", 0.0), ("u1", 4, "d", 0.0)], REPEAT_SCHEMA))


def test_repeat_purchase_scores_keep_the_ranking_order(spark: SparkSession) -> None:
    # The sampled protocol's single number: count + 1 + dense rank by last time / (items + 1).
    sequences = sequences_of(spark, REPEAT_USERS)
    queries = spark.createDataFrame([("u1", [0], [], [])], QUERY_SCHEMA)
    got = repeat_purchase_scores(sequences, queries, ("train", "validation"), first_item_idx=FIRST)
    a, b, c, d = (IDX[i] for i in "abcd")  # last times: b 3, a 4, c 5, d 7 -> dense ranks 1..4 of 4
    assertDataFrameEqual(got, spark.createDataFrame(
        [("u1", a, 2 + 1 + 2 / 5), ("u1", d, 1 + 1 + 4 / 5), ("u1", c, 1 + 1 + 3 / 5), ("u1", b, 1 + 1 + 1 / 5)],
        "user_id string, item_idx int, score double"))


def test_repeat_purchase_is_reported_only_when_seen_items_are_allowed() -> None:
    assert REPEAT == "repeat_purchase"
    assert REPEAT in baseline_names(exclude_seen=False)
    assert REPEAT not in baseline_names(exclude_seen=True)
    # The other baselines are there either way.
    assert set(baseline_names(True)) == {"most_popular", "most_popular_recent", "item_cooccurrence", "als"}


def test_the_configured_baselines_come_in_report_order_and_the_default_run_skips_als() -> None:
    from recspark.config import EvaluateConfig

    assert baseline_names(False, ["tifu_knn", "most_popular"]) == ("most_popular", "tifu_knn")
    assert baseline_names(True, ["tifu_knn", "most_popular"]) == ("most_popular",)
    # The default run's baselines are the cheap ones a shop compares against: no ALS grid.
    assert baseline_names(False, EvaluateConfig().baselines) == ("most_popular", "repeat_purchase", "tifu_knn")
