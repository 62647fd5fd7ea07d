"""ALS tuning on validation and cross-validation folds, on a tiny two-group shop."""
from __future__ import annotations

import datetime as dt
import statistics

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.evaluation.baselines import als
from recspark.evaluation.tuning import (
    cross_validate_als, score_lists, time_folds, tune_als_on_validation, user_folds,
)

DAY0 = dt.datetime(2024, 1, 1)


@pytest.fixture(scope="module")
def shop(spark: SparkSession):
    """20 users, items 2..7 for even users and 8..13 for odd ones: 4 training items, 1 validation
    item (an unseen one of the group), 1 test item. Returns sequences, vocab, eval_queries."""
    sequences, queries = [], []
    for user in range(20):
        group = list(range(2, 8) if user % 2 == 0 else range(8, 14))
        order = group[user % 6:] + group[:user % 6]
        train, val, test = order[:4], order[4], order[5]
        steps = [(i, "train") for i in train] + [(val, "validation"), (test, "test")]
        sequences.append((f"u{user}", [f"item-{i}" for i, _ in steps], [i for i, _ in steps],
                          [DAY0 + dt.timedelta(days=d) for d in range(len(steps))], [s for _, s in steps]))
        queries.append((f"u{user}", C.VALIDATION, [f"item-{val}"], train, [0] + train))
        queries.append((f"u{user}", C.TEST, [f"item-{test}"], train + [val], train + [val]))
    seq = spark.createDataFrame(sequences, "user_id string, item_id array<string>, item_idx array<int>, "
                                           "event_ts array<timestamp>, split array<string>")
    vocab = spark.createDataFrame([(f"item-{i}", i, 10) for i in range(2, 14)], "item_id string, item_idx int, train_count long")
    eval_queries = spark.createDataFrame(queries, "user_id string, split string, relevant array<string>, "
                                                  "seen_idx array<int>, history array<int>")
    return seq, vocab, eval_queries


ALS = dict(max_iter=10, alpha=20.0, seed=1, first_item_idx=2)


def test_validation_choice_is_the_best_grid_point_and_matches_a_direct_fit(spark: SparkSession, shop, tmp_path) -> None:
    sequences, vocab, eval_queries = shop
    validation = eval_queries.filter(F.col(C.SPLIT) == C.VALIDATION)
    result = tune_als_on_validation(sequences, vocab, validation, 2, True, ranks=[1, 4], reg_params=[0.01], **ALS)
    assert [(p["rank"], p["reg_param"]) for p in result["grid"]] == [(1, 0.01), (4, 0.01)]
    best = max(result["grid"], key=lambda p: p["validation"]["ndcg_at_k"])
    assert result["chosen"] == {"rank": best["rank"], "reg_param": best["reg_param"]}
    # Rank 4 separates the two groups: the one unseen own-group item is in every top 2.
    assert result["chosen"]["rank"] == 4 and best["validation"]["hit_rate_at_k"] == 1.0
    # The same numbers from the ALS baseline fitted directly on the training period.
    direct = als(sequences, vocab, validation, 2, True, rank=4, reg_param=0.01, **ALS)
    assert score_lists(direct, validation, 2) == pytest.approx(best["validation"], abs=1e-12)


def test_user_folds_partition_users_and_hide_only_their_validation(spark: SparkSession, shop) -> None:
    sequences, _, eval_queries = shop
    fold_users = []
    for fold, interactions, queries in user_folds(sequences, eval_queries, 3, seed=42, first_item_idx=2):
        users = {r[C.USER_ID] for r in queries.collect()}
        fold_users.append(users)
        pairs = {(r[C.USER_ID], r[C.ITEM_IDX]) for r in interactions.collect()}
        for row in eval_queries.filter(F.col(C.SPLIT) == C.VALIDATION).collect():
            held_out = int(row[C.RELEVANT][0].split("-")[1])
            # A fold's own users' validation items are hidden from its fit; everyone else's are in.
            assert ((row[C.USER_ID], held_out) in pairs) == (row[C.USER_ID] not in users)
    assert sorted(u for users in fold_users for u in users) == sorted(f"u{u}" for u in range(20))


def test_time_folds_cut_at_event_time_quantiles(spark: SparkSession) -> None:
    # One user, 12 training events on days 1..12 (items 2..13). Cuts at the 2/3 and 5/6 quantiles
    # of the times: days 8 and 10. Fold 0 trains on days 1-7 and is scored on days 8-9; fold 1
    # trains on days 1-9 and is scored on days 10-12.
    items = list(range(2, 14))
    seq = spark.createDataFrame([("u", [f"item-{i}" for i in items], items,
                                  [DAY0 + dt.timedelta(days=d) for d in range(1, 13)], ["train"] * 12)],
                                "user_id string, item_id array<string>, item_idx array<int>, "
                                "event_ts array<timestamp>, split array<string>")
    folds = [(fold, sorted(r[C.ITEM_IDX] for r in inter.collect()), queries.first())
             for fold, inter, queries in time_folds(seq, 2, first_item_idx=2)]
    assert [f for f, _, _ in folds] == [0, 1]
    assert folds[0][1] == items[:7] and sorted(folds[0][2][C.RELEVANT]) == ["item-10", "item-9"]
    assert folds[1][1] == items[:9] and sorted(folds[1][2][C.RELEVANT]) == ["item-11", "item-12", "item-13"]
    assert sorted(folds[1][2]["seen_idx"]) == items[:9]


def test_cross_validation_reports_mean_and_std_per_grid_point(spark: SparkSession, shop) -> None:
    sequences, vocab, eval_queries = shop
    cv = cross_validate_als(sequences, vocab, eval_queries, 2, True, scheme="users", folds=2,
                            ranks=[1, 4], reg_params=[0.01], **ALS)
    assert (cv["scheme"], cv["folds"], len(cv["grid"])) == ("users", 2, 2)
    for point in cv["grid"]:
        assert len(point["per_fold"]) == 2
        values = [m["ndcg_at_k"] for m in point["per_fold"]]
        assert point["mean"]["ndcg_at_k"] == pytest.approx(statistics.fmean(values))
        assert point["std"]["ndcg_at_k"] == pytest.approx(statistics.stdev(values))
    best = max(cv["grid"], key=lambda p: p["mean"]["ndcg_at_k"])
    assert cv["chosen"] == {"rank": best["rank"], "reg_param": best["reg_param"]}
    with pytest.raises(ValueError, match="at least 2 folds"):
        cross_validate_als(sequences, vocab, eval_queries, 2, True, scheme="users", folds=1,
                           ranks=[4], reg_params=[0.01], **ALS)
