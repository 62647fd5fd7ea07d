"""The recommendations table: a run's partition replaced by its re-run, other runs kept, retention,
the older layout carried over; reasons from the user's own repeat profile and category popularity."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession

from recspark import constants as C
from recspark.recommendations import (COLUMNS, GENERATED_AT, MODEL_VERSION, PLAIN_REASON, basket_items,
                                      blocked_items, bought_with, popular_items, with_reasons, write_run)

FIRST = 66  # the default layout's first item


def _run(spark: SparkSession, run_id: str, users: list[str], items: list[str], at: dt.datetime) -> DataFrame:
    rows = [(user, rank, item, float(10 - rank), 0.5, "why", run_id, "sasrec", "3", at)
            for user in users for rank, item in enumerate(items, start=1)]
    return spark.createDataFrame(rows, "user_id string, rank int, item_id string, score float, confidence float, "
                                       "reason string, run_id string, model_name string, model_version string, "
                                       "generated_at timestamp")


def _rows(spark: SparkSession, path: str, run_id: str) -> list[tuple]:
    table = spark.read.format("delta").load(path).filter(f"run_id = '{run_id}'")
    return sorted((r[C.USER_ID], r[C.RANK], r[C.ITEM_ID]) for r in table.collect())


def test_a_rerun_replaces_only_its_own_run_and_old_runs_are_pruned(spark: SparkSession, tmp_path: Path) -> None:
    path = str(tmp_path / "recommendations")
    t0 = dt.datetime(2026, 12, 1, 6, 0)
    write_run(_run(spark, "run-a", ["u1", "u2"], ["x", "y", "z"], t0), path, "run-a", keep_runs=2)
    write_run(_run(spark, "run-b", ["u1", "u3"], ["p", "q"], t0 + dt.timedelta(hours=1)), path, "run-b", keep_runs=2)
    run_b = _rows(spark, path, "run-b")
    # Re-run of run-a with other users and items: its rows are replaced, run-b's untouched.
    write_run(_run(spark, "run-a", ["u4"], ["m"], t0 + dt.timedelta(hours=2)), path, "run-a", keep_runs=2)
    assert _rows(spark, path, "run-a") == [("u4", 1, "m")]
    assert _rows(spark, path, "run-b") == run_b and len(run_b) == 4
    # The same re-run again: the same table content (idempotent).
    write_run(_run(spark, "run-a", ["u4"], ["m"], t0 + dt.timedelta(hours=2)), path, "run-a", keep_runs=2)
    assert spark.read.format("delta").load(path).count() == 5
    detail = DeltaTable.forPath(spark, path).detail().collect()[0]
    assert list(detail["partitionColumns"]) == [C.RUN_ID]
    assert spark.read.format("delta").load(path).columns == list(COLUMNS)
    # A third run: only the latest two (by generated_at: run-a's re-run is newer than run-b) stay.
    out = write_run(_run(spark, "run-c", ["u5"], ["n"], t0 + dt.timedelta(hours=3)), path, "run-c", keep_runs=2)
    assert out["deleted_runs"] == ["run-b"]
    runs = {r[C.RUN_ID] for r in spark.read.format("delta").load(path).select(C.RUN_ID).distinct().collect()}
    assert runs == {"run-a", "run-c"}


def test_a_table_of_the_older_layout_keeps_its_rows(spark: SparkSession, tmp_path: Path) -> None:
    path = str(tmp_path / "recommendations")
    old = spark.createDataFrame([("u1", 1, "x", 2.0, 0.3, "old-run", "sasrec")],
                                "user_id string, rank int, item_id string, score float, confidence float, "
                                "run_id string, model_name string")
    old.write.format("delta").save(path)
    write_run(_run(spark, "new-run", ["u2"], ["y"], dt.datetime(2026, 12, 1)), path, "new-run", keep_runs=0)
    table = spark.read.format("delta").load(path)
    got = {r[C.RUN_ID]: (r[C.USER_ID], r[C.REASON], r[MODEL_VERSION], r[GENERATED_AT]) for r in table.collect()}
    assert got == {"old-run": ("u1", None, None, None), "new-run": ("u2", "why", "3", dt.datetime(2026, 12, 1))}


def test_reasons_quote_the_users_own_profile_else_category_popularity(spark: SparkSession) -> None:
    a, b, c, d = FIRST, FIRST + 1, FIRST + 2, FIRST + 3

    def features(baskets: int, days: int) -> list[float]:
        # log(1 + baskets), share, log(1 + baskets since), log(1 + days before the latest event), interval,
        # the item's repurchase rate and cycle (C.REPEAT_FEATURE_COUNT numbers)
        return [float(np.log1p(baskets)), 0.5, 0.7, float(np.log1p(days)), 0.3, 0.6, 1.2]

    top = spark.createDataFrame(
        [("u1", 1, b, [a, b, 0], features(1, 0) + features(6, 9) + [0.0] * C.REPEAT_FEATURE_COUNT),
         ("u1", 2, a, [a, b, 0], features(1, 0) + features(6, 9) + [0.0] * C.REPEAT_FEATURE_COUNT),
         ("u2", 1, b, [c, 0, 0], features(2, 1) + [0.0] * 2 * C.REPEAT_FEATURE_COUNT),  # b is u1's, not u2's: no re-buy reason
         ("u2", 2, c, [c, 0, 0], features(2, 1) + [0.0] * 2 * C.REPEAT_FEATURE_COUNT),
         ("u2", 3, d, [c, 0, 0], features(2, 1) + [0.0] * 2 * C.REPEAT_FEATURE_COUNT)],
        f"user_id string, rank int, item_idx int, {C.REPEAT_ITEMS} array<int>, {C.REPEAT_FEATURES} array<float>")
    # Category popularity: b tops "dairy"; d is in "dairy" too but beyond the top 1; reserved rows ignored.
    item_features = spark.createDataFrame(
        [(a, "bakery", 5), (b, "dairy", 50), (c, "dairy", 40), (d, "dairy", 1), (3, "dairy", 999)],
        "item_idx int, category string, events_all long")
    popular = popular_items(item_features, FIRST, top=2)
    assert sorted((r[C.ITEM_IDX], r["_popular_in"]) for r in popular.collect()) == [(a, "bakery"), (b, "dairy"),
                                                                                     (c, "dairy")]
    got = {(r[C.USER_ID], r[C.RANK]): r[C.REASON] for r in with_reasons(top, popular).collect()}
    assert got == {("u1", 1): "bought 6 times, last 9 days before your latest visit",
                   ("u1", 2): "bought once, on your latest visit",
                   ("u2", 1): "popular in dairy",
                   ("u2", 2): "bought 2 times, last 1 day before your latest visit",
                   ("u2", 3): PLAIN_REASON}


def test_often_bought_with_names_the_users_own_item_from_a_pattern_of_many_households(spark: SparkSession) -> None:
    a, x, y, z = FIRST, FIRST + 1, FIRST + 2, FIRST + 3
    # Households h0..h5 bought a with x in one basket (6), h0..h3 also a with y (4: below the minimum of 5);
    # h6 viewed a and x together (not a purchase) and h7 bought them on different visits.
    rows = [(f"h{h}", [a, x] + ([y] if h < 4 else []), ["purchase"] * (3 if h < 4 else 2), ["b1"] * (3 if h < 4 else 2))
            for h in range(6)]
    rows += [("h6", [a, x], ["view", "view"], ["b1", "b1"]), ("h7", [a, x], ["purchase"] * 2, ["b1", "b2"])]
    sequences = spark.createDataFrame(rows, "user_id string, item_idx array<int>, event_type array<string>, "
                                            "session_id array<string>")
    vocab = spark.createDataFrame([("item-a", a), ("item-x", x), ("item-y", y), ("item-z", z)],
                                  "item_id string, item_idx int")
    top = spark.createDataFrame(
        [("u1", 1, a, [y, x, 0], [0.0] * 3 * C.REPEAT_FEATURE_COUNT),  # x is u1's own and a pattern with a: the reason names it
         ("u2", 1, a, [y, z, 0], [0.0] * 3 * C.REPEAT_FEATURE_COUNT),  # y with a: only 4 households; z never: no such reason
         ("u3", 1, x, [x, 0, 0], [float(np.log1p(2))] * 18)],  # a re-buy keeps its own reason
        f"user_id string, rank int, item_idx int, {C.REPEAT_ITEMS} array<int>, {C.REPEAT_FEATURES} array<float>")
    together = bought_with(top, basket_items(sequences, FIRST), vocab, FIRST, min_users=5)
    assert sorted(tuple(r) for r in together.collect()) == [("u1", a, "item-x")]
    got = {r[C.USER_ID]: r[C.REASON] for r in with_reasons(top, None, together).collect()}
    assert got == {"u1": "often bought with item-x", "u2": PLAIN_REASON,
                   "u3": "bought 2 times, last 2 days before your latest visit"}
    # With a lower bar y counts too, and x still wins for u1: bought with a in more baskets (6 against 4).
    lower = {r[C.USER_ID]: r[C.REASON] for r in with_reasons(
        top, None, bought_with(top, basket_items(sequences, FIRST), vocab, FIRST, min_users=4)).collect()}
    assert lower["u1"] == "often bought with item-x" and lower["u2"] == "often bought with item-y"


def test_score_stage_writes_every_user_once_and_its_rerun_replaces_its_run(spark: SparkSession, tmp_path: Path) -> None:
    """The score stage on a hand-made lakehouse and a saved repeatnet: every user once with at most k
    rows, no reserved or out-of-stock item, reasons from the user's own profile, and a second run of the
    same run id leaving the same rows (one run in the table)."""
    import json

    from conftest import SERVING_HISTORIES_SCHEMA, save_untrained_repeatnet
    from recspark.config import Config, PathsConfig, ScoreConfig, TrainConfig
    from recspark.stages import score_stage

    config = Config(paths=PathsConfig(lakehouse=str(tmp_path / "lake"), checkpoints=str(tmp_path / "ck"),
                                      reports=str(tmp_path / "reports")),
                    train=TrainConfig(models=["repeatnet"]),
                    score=ScoreConfig(k=4, item_block=8, batch_size=2, similar_k=3))
    num_items, length, candidates = FIRST + 30, 5, 3
    folder = config.model_dir("repeatnet")
    save_untrained_repeatnet(folder, num_items=num_items, length=length, candidates=candidates, first_item=FIRST)
    (folder / "run.json").write_text(json.dumps({C.RUN_ID: "train-1", "mlflow": {"version": 7}}))

    def save(df: DataFrame, layer: str, table: str) -> None:
        df.write.format("delta").save(config.table_path(layer, table))

    rng = np.random.default_rng(0)
    rows = []
    for u in range(9):
        items = rng.integers(FIRST, num_items, length).tolist()
        profile = list(dict.fromkeys(items))[:candidates]
        profile += [0] * (candidates - len(profile))
        feats = [float(np.log1p(3)), 0.5, 0.1, float(np.log1p(4)), 0.2, 0.6, 1.1] * candidates
        rows.append((f"p{u}", items, [1] * length, list(range(length, 0, -1)), items, profile, feats))
    save(spark.createDataFrame(rows, SERVING_HISTORIES_SCHEMA), C.GOLD, C.SERVING_HISTORIES)
    vocab = spark.createDataFrame([(f"item-{i}", i) for i in range(FIRST, num_items)], "item_id string, item_idx int")
    save(vocab, C.GOLD, C.ITEM_VOCAB)
    # The serving side's vocabulary: the same, no item new since the training period here.
    save(vocab.selectExpr("item_id", f"1L AS {C.TRAIN_COUNT}", "item_idx"), C.GOLD, C.SERVING_ITEM_VOCAB)
    out_of_stock = {FIRST + 2, FIRST + 11}
    save(spark.createDataFrame([(i, f"cat{i % 3}", 0 if i in out_of_stock else 5, 100 - i) for i in range(FIRST, num_items)],
                               "item_idx int, category string, stock long, events_all long"), C.GOLD, "item_features")
    # The identity map as prepare writes it: the shop's id encrypted under the run's key, the pseudonym bound in.
    from pyspark.sql import functions as F

    from recspark.pipeline.privacy import encrypt_id, identity_map_key

    plain = spark.createDataFrame([(f"p{u}", f"shop-{u}") for u in range(9)], "user_id string, shop_id string")
    save(plain.select(encrypt_id("shop_id", C.USER_ID, identity_map_key(config.privacy.secret_scope)).alias("raw_user_id"),
                      F.col(C.USER_ID)), C.BRONZE, "identity_map")

    # Validation and test queries: the calibration is fitted on validation's and stored with the model;
    # the test queries are evaluate's alone (the score stage never measures on them).
    queries = []
    for u in range(9):
        for split in (C.VALIDATION, C.TEST):
            history = rows[u][1]
            bought = [f"item-{i}" for i in rng.integers(FIRST, num_items, 8)]
            queries.append((f"p{u}", split, history, [1] * length, list(range(length, 0, -1)), history, rows[u][5],
                            rows[u][6], bought))
    queries_schema = (f"user_id string, split string, {C.HISTORY} array<int>, {C.HISTORY_TYPES} array<int>, "
                      f"{C.HISTORY_GAPS} array<int>, {C.SEEN_IDX} array<int>, {C.REPEAT_ITEMS} array<int>, "
                      f"{C.REPEAT_FEATURES} array<float>, {C.RELEVANT} array<string>")
    save(spark.createDataFrame(queries, queries_schema), C.GOLD, C.EVAL_QUERIES)

    # Each user's history as one purchase basket: the stage pairs baskets for "often bought with".
    save(spark.createDataFrame([(r[0], r[1], ["purchase"] * length, ["b"] * length) for r in rows],
                               "user_id string, item_idx array<int>, event_type array<string>, session_id array<string>"),
         C.GOLD, C.SERVING_SEQUENCES)

    first = score_stage(spark, config)
    # The model's vectors for every user (the shop's ids) and every item, and each item's neighbours.
    from recspark.vectors import ITEM_VECTORS, SIMILAR_ITEM_ID, SIMILAR_ITEMS, USER_VECTORS, VECTOR, vector_table_path

    def output(name: str) -> list:
        return spark.read.format("delta").load(vector_table_path(config, name)).collect()

    users = output(USER_VECTORS)
    assert sorted(r[C.USER_ID] for r in users) == sorted(f"shop-{u}" for u in range(9))
    assert all(len(r[VECTOR]) == 8 and r[C.RUN_ID] == "train-1" for r in users)
    assert sorted(r[C.ITEM_ID] for r in output(ITEM_VECTORS)) == sorted(f"item-{i}" for i in range(FIRST, num_items))
    similar = output(SIMILAR_ITEMS)
    assert len({r[C.ITEM_ID] for r in similar}) == 30 and len(similar) == 30 * config.score.similar_k
    assert all(r[SIMILAR_ITEM_ID] != r[C.ITEM_ID] and int(r[SIMILAR_ITEM_ID].split("-")[1]) not in out_of_stock
               for r in similar)
    from recspark.calibration import Calibration

    calibration = Calibration.load(folder)
    assert calibration is not None and calibration.model_run_id == "train-1" and calibration.pairs == 9 * 4
    assert calibration.ece_validation is not None and calibration.ece_test is None
    assert sum(n for _, n, _, _ in calibration.reliability_validation) == 9 * 4 and not calibration.reliability_test
    assert "test not measured" in first["confidence"]
    table = spark.read.format("delta").load(config.recommendations_path)
    got = table.collect()
    assert first[C.RUN_ID] == "train-1" and {r[C.RUN_ID] for r in got} == {"train-1"}
    per_user: dict[str, list] = {}
    for r in got:
        per_user.setdefault(r[C.USER_ID], []).append(r)
    assert sorted(per_user) == sorted(f"shop-{u}" for u in range(9))
    for user_rows in per_user.values():
        assert sorted(r[C.RANK] for r in user_rows) == list(range(1, len(user_rows) + 1)) and len(user_rows) <= 4
    assert all(int(r[C.ITEM_ID].split("-")[1]) not in out_of_stock for r in got)
    assert {r[MODEL_VERSION] for r in got} == {"7"} and all(r[GENERATED_AT] is not None for r in got)
    assert any(r[C.REASON] == "bought 3 times, last 4 days before your latest visit" for r in got)
    assert all(r[C.REASON] for r in got)
    # Calibrated: values of the fitted map, within its range.
    assert all(min(calibration.predictions) - 1e-6 <= r[C.CONFIDENCE] <= max(calibration.predictions) + 1e-6
               for r in got)
    before = sorted((r[C.USER_ID], r[C.RANK], r[C.ITEM_ID]) for r in got)
    score_stage(spark, config)
    again = spark.read.format("delta").load(config.recommendations_path).collect()
    assert sorted((r[C.USER_ID], r[C.RANK], r[C.ITEM_ID]) for r in again) == before

    # Evaluate's test lists measure the same map on test: ranks beyond score.k are not pairs, and a
    # listed item the user bought in the test period is a hit (here rank 1 of every user, of 4 pairs).
    from recspark.calibration import measure_on_test

    k = config.score.k
    test_queries = spark.createDataFrame([q for q in queries if q[1] == C.TEST], queries_schema)
    lists = spark.createDataFrame(
        [(q[0], rank, q[-1][0] if rank == 1 else "item-none", 0.5) for q in queries if q[1] == C.TEST
         for rank in range(1, k + 3)], "user_id string, rank int, item_id string, confidence double")
    measured = measure_on_test(spark, config, "repeatnet", "train-1", lists, test_queries)
    assert sum(n for _, n, _, _ in measured.reliability_test) == 9 * k
    assert sum(n * y for _, n, _, y in measured.reliability_test) == pytest.approx(9)
    assert measured.ece_test is not None and Calibration.load(folder) == measured
    assert (measured.boundaries, measured.reliability_validation) == (calibration.boundaries,
                                                                       calibration.reliability_validation)


def test_blocked_items_by_stock_and_category_rules(spark: SparkSession) -> None:
    items = spark.createDataFrame(
        [(FIRST, "dairy", 0), (FIRST + 1, "dairy", 3), (FIRST + 2, "alcohol", 5), (FIRST + 3, None, None),
         (FIRST + 4, "bakery", 1), (5, "alcohol", 0)],  # 5: a reserved bucket row, never in the answer
        "item_idx int, category string, stock long")
    assert blocked_items(items, FIRST) == {"out of stock": [FIRST]}
    assert blocked_items(items, FIRST, exclude_categories=["alcohol"]) == {"out of stock": [FIRST],
                                                                            "category rules": [FIRST + 2]}
    # Only dairy and bakery allowed: alcohol and the item without a category are out.
    assert blocked_items(items, FIRST, include_categories=["dairy", "bakery"])["category rules"] == [FIRST + 2, FIRST + 3]
    assert blocked_items(items.drop("stock"), FIRST) == {}
