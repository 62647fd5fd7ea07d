"""Repeat / explore metrics (Reality Check, Li et al. TOIS 2023) against answers worked out by hand."""
from __future__ import annotations

import math

import pytest
from pyspark.sql import SparkSession

from recspark.evaluation.repeat_explore import repeat_explore_by_group, repeat_explore_metrics, with_repeat_explore

SCHEMA = "user_id string, prediction array<string>, relevant array<string>, seen array<string>"
# k = 3 throughout.
ROWS = [
    # A: top 3 = a b c. Held out a x b y; had before a y q c.
    #    repeat held-out = {a, y}: a listed -> 1/2; new held-out = {x, b}: b listed -> 1/2;
    #    listed items had before: a, c -> 2/3.
    ("A", ["a", "b", "c", "d", "e"], ["a", "x", "b", "y"], ["a", "y", "q", "c"]),
    # B: top = p q (a short list). No repeat held-out item (left out of recall_rep); new = {r}: 0;
    #    q had before -> 1/2.
    ("B", ["p", "q"], ["r"], ["q"]),
    # C: no list at all. Repeat held-out {s}: 0; no new held-out item; no list: left out of the share.
    ("C", None, ["s"], ["s"]),
    # D: a duplicated item counts once: top 3 = m m n -> {m, n}. Nothing had before: new = {m, n, o}:
    #    2/3; share 0/2.
    ("D", ["m", "m", "n", "o"], ["m", "n", "o"], []),
    # E: nothing held out (in neither recall), seen unknown (null): share 0/1.
    ("E", ["a"], [], None),
    # F: nothing held out; top 3 = f f g -> {f, g}, f had before: share 1/2 (not 2/3 nor 1/3).
    ("F", ["f", "f", "g", "h"], [], ["f"]),
]


def test_per_user_values(spark: SparkSession) -> None:
    rows = {r["user_id"]: r for r in with_repeat_explore(spark.createDataFrame(ROWS, SCHEMA), 3).collect()}
    expected = {  # (recall_rep, recall_expl, repeat_share); None = not defined for this user
        "A": (1 / 2, 1 / 2, 2 / 3), "B": (None, 0.0, 1 / 2), "C": (0.0, None, None),
        "D": (None, 2 / 3, 0.0), "E": (None, None, 0.0), "F": (None, None, 1 / 2),
    }
    for user, (rep, expl, share) in expected.items():
        got = (rows[user]["recall_rep"], rows[user]["recall_expl"], rows[user]["repeat_share"])
        assert got == pytest.approx((rep, expl, share)), user
    assert set(rows["A"].asDict()) == {"user_id", "prediction", "relevant", "seen", "recall_rep", "recall_expl",
                                      "repeat_share"}


def test_means_over_the_users_each_metric_is_defined_for(spark: SparkSession) -> None:
    got = repeat_explore_metrics(spark.createDataFrame(ROWS, SCHEMA), 3)
    assert got == pytest.approx({
        "recall_rep": (1 / 2 + 0) / 2,              # A, C
        "recall_expl": (1 / 2 + 0 + 2 / 3) / 3,     # A, B, D
        "repeat_share": (2 / 3 + 1 / 2 + 0 + 0 + 1 / 2) / 5,  # A, B, D, E, F
        "users_rep": 2, "users_expl": 3,
    })


def test_k_cuts_the_list(spark: SparkSession) -> None:
    # At k = 1 A's list is [a]: a is a repeat hit (1/2), no new hit (0), share 1/1.
    got = repeat_explore_metrics(spark.createDataFrame(ROWS[:1], SCHEMA), 1)
    assert got == pytest.approx({"recall_rep": 0.5, "recall_expl": 0.0, "repeat_share": 1.0, "users_rep": 1,
                                 "users_expl": 1})


def test_no_users_gives_nan_and_zero_counts(spark: SparkSession) -> None:
    got = repeat_explore_metrics(spark.createDataFrame([], SCHEMA), 10)
    assert all(math.isnan(got[name]) for name in ("recall_rep", "recall_expl", "repeat_share"))
    assert got["users_rep"] == 0 and got["users_expl"] == 0


def test_ids_of_different_types_are_refused(spark: SparkSession) -> None:
    df = spark.createDataFrame([([1], ["1"], ["1"])], "prediction array<int>, relevant array<string>, seen array<string>")
    with pytest.raises(TypeError):
        repeat_explore_metrics(df, 10)


def test_by_group_equals_each_group_alone(spark: SparkSession) -> None:
    rows = [("m1", *row) for row in ROWS] + [("m2", *row) for row in ROWS[:1]]
    df = spark.createDataFrame(rows, "model string, " + SCHEMA)
    got = repeat_explore_by_group(df, 3, "model", groups=["m1", "m2", "m3"])
    assert got["m1"] == pytest.approx(repeat_explore_metrics(spark.createDataFrame(ROWS, SCHEMA), 3))
    assert got["m2"] == pytest.approx({"recall_rep": 0.5, "recall_expl": 0.5, "repeat_share": 2 / 3,
                                       "users_rep": 1, "users_expl": 1})
    assert math.isnan(got["m3"]["recall_rep"]) and got["m3"]["users_rep"] == 0
