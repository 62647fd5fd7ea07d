"""Feedback on served lists: quarantine and reconciliation at ingest, each row joined to the right run
and rank and pseudonymised, responses as events, served-list metrics, dismissed items out of the next list."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import Config, FeedbackConfig, PathsConfig, ScoreConfig, TrainConfig
from recspark.feedback import refresh_silver_feedback, merge_response_events
from recspark.pipeline.privacy import pseudonym_key, pseudonymise
from recspark.recommendations import write_run
from recspark.served_metrics import served_metrics

AT = dt.datetime(2024, 1, 1, 9)
# Two runs that rank the same items differently.
RUNS = {"r1": {"shop-0": ["item-1", "item-2", "item-3"], "shop-1": ["item-2", "item-1", "item-3"],
               "shop-2": ["item-3", "item-1", "item-2"]},
        "r2": {"shop-0": ["item-3", "item-2", "item-1"], "shop-1": ["item-1", "item-3", "item-2"],
               "shop-2": ["item-2", "item-3", "item-1"]}}
GOOD = [  # user, item, run, response, event_ts, rank, price, quantity
    *[(user, item, "r1", "impression", "2024-01-01T10:00:00", str(rank), "", "")
      for user, items in RUNS["r1"].items() for rank, item in enumerate(items, start=1)],
    ("shop-1", "item-2", "r1", "click", "2024-01-01T11:00:00", "", "", ""),
    ("shop-1", "item-2", "r1", "purchase", "2024-01-01T12:00:00", "", "2.0", "2"),
    ("shop-1", "item-9", "r1", "purchase", "2024-01-01T12:30:00", "", "1.0", "1"),  # not in shop-1's list
    ("shop-2", "item-1", "r1", "dismiss", "2024-01-01T12:00:00", "", "", ""),
    ("shop-0", "item-1", "r2", "purchase", "2024-01-02T10:00:00", "", "2.5", "1"),  # rank 3 in r2, 1 in r1
]
BAD = {  # row -> the quarantine reason
    ("", "item-1", "r1", "click", "2024-01-01T10:00:00", "", "", ""): "missing user_id",
    ("shop-0", "item-1", "", "click", "2024-01-01T10:00:00", "", "", ""): "missing run_id",
    ("shop-0", "item-1", "r1", "like", "2024-01-01T10:00:00", "", "", ""): "unknown response 'like'",
    ("shop-0", "item-1", "r1", "click", "yesterday", "0", "", ""): "unparsable event_ts; rank not a whole number >= 1",
    ("shop-0", "item-1", "r9", "click", "2024-01-01T10:00:00", "", "", ""): "run_id not in recommendations",
    ("shop-0", "item-1", "r1", "purchase", "2024-01-01T10:00:00", "", "-3", ""): "negative price",
}


def _recommendations(spark: SparkSession, path: str) -> None:
    for run_id, lists in RUNS.items():
        rows = [(user, rank, item, 1.0 / rank, 0.5, "why", run_id, "m", "1", AT)
                for user, items in lists.items() for rank, item in enumerate(items, start=1)]
        write_run(spark.createDataFrame(rows, "user_id string, rank int, item_id string, score float, confidence float, "
                                              "reason string, run_id string, model_name string, model_version string, "
                                              "generated_at timestamp"), path, run_id, keep_runs=0)


@pytest.fixture(scope="module")
def ingested(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, list[dict], list[dict]]:
    """A lakehouse with two recommendation runs and one feedback CSV (good and bad rows) ingested twice:
    the configuration and the two ingests' reconciliation rows."""
    from recspark.stages import ingest_feedback_files

    root = tmp_path_factory.mktemp("feedback")
    csv = root / "feedback.csv"
    lines = ["user_id,item_id,run_id,response,event_ts,rank,price,quantity"]
    lines += [",".join(row) for row in [*GOOD, *BAD]]
    csv.write_text("\n".join(lines) + "\n")
    config = Config(paths=PathsConfig(lakehouse=str(root / "lake"), reports=str(root / "reports")),
                    feedback=FeedbackConfig(path=str(csv)))
    _recommendations(spark, config.recommendations_path)
    return config, ingest_feedback_files(spark, config, "ingest-1"), ingest_feedback_files(spark, config, "ingest-2")


@pytest.fixture(scope="module")
def fed(ingested: tuple[Config, list[dict], list[dict]]) -> Config:
    return ingested[0]


def test_feedback_is_quarantined_with_reasons_and_reconciled(spark: SparkSession, ingested) -> None:
    fed, first, second = ingested
    assert len(first) == 1 and first[0]["entity"] == C.FEEDBACK
    assert (first[0]["rows_read"], first[0]["rows_accepted"], first[0]["rows_quarantined"]) == \
        (len(GOOD) + len(BAD), len(GOOD), len(BAD))
    assert first[0]["table_rows_inserted"] == len(GOOD)
    assert second[0]["rows_accepted"] == len(GOOD) and second[0]["table_rows_inserted"] == 0  # idempotent
    quarantine = spark.read.format("delta").load(fed.table_path(C.BRONZE, C.QUARANTINE)).collect()
    got = {row[C.SOURCE_ROW]: row[C.REASON] for row in quarantine}
    assert len(quarantine) == len(BAD)  # the second ingest added no copy
    assert got == {len(GOOD) + i + 1: reason for i, reason in enumerate(BAD.values())}
    log = spark.read.format("delta").load(fed.table_path(C.BRONZE, C.RUN_LOG)).collect()
    assert sorted(row[C.RUN_ID] for row in log) == ["ingest-1", "ingest-2"]


def test_a_response_is_joined_to_its_own_run_and_rank_and_pseudonymised(spark: SparkSession, fed: Config) -> None:
    inserted = refresh_silver_feedback(spark, fed)["numTargetRowsInserted"]
    assert inserted == len(GOOD) and refresh_silver_feedback(spark, fed)["numTargetRowsInserted"] == 0
    silver = spark.read.format("delta").load(fed.table_path(C.SILVER, C.FEEDBACK))
    key = pseudonym_key(fed.privacy.secret_scope)
    expected = spark.createDataFrame([(u,) for u in ("shop-0", "shop-1")], "u string").select(
        "u", pseudonymise("u", key).alias("p")).collect()
    pseudonym = {row["u"]: row["p"] for row in expected}
    rows = {(r[C.USER_ID], r[C.ITEM_ID], r[C.RUN_ID], r[C.RESPONSE]): r for r in silver.collect()}
    assert all(user.startswith("u_") for user, *_ in rows)
    bought = rows[(pseudonym["shop-0"], "item-1", "r2", "purchase")]
    assert bought[C.RANK] == 3 and bought["served"] and bought["model_version"] == "1"  # r2's rank, not r1's 1
    stray = rows[(pseudonym["shop-1"], "item-9", "r1", "purchase")]
    assert stray[C.RANK] is None and not stray["served"]

    # Responses (not impressions, not dismissals) become silver events once, under their feedback id.
    assert merge_response_events(spark, fed) == 4 and merge_response_events(spark, fed) == 0
    events = spark.read.format("delta").load(fed.table_path(C.SILVER, C.EVENTS))
    assert sorted(r[C.EVENT_TYPE] for r in events.collect()) == ["purchase", "purchase", "purchase", "view"]


def test_served_metrics_per_run(spark: SparkSession, fed: Config) -> None:
    refresh_silver_feedback(spark, fed)
    silver = spark.read.format("delta").load(fed.table_path(C.SILVER, C.FEEDBACK))
    before = silver.filter((F.col(C.RESPONSE) == "purchase") & (F.col(C.ITEM_ID) == "item-2")).select(
        C.USER_ID, C.ITEM_ID, F.lit("purchase").alias(C.EVENT_TYPE), F.lit(dt.datetime(2023, 12, 1)).alias(C.EVENT_TS))
    [row] = served_metrics(silver, before, k=10, catalogue_size=10).collect()  # r2 has no impressions: no row
    assert row[C.RUN_ID] == "r1" and (row["impressions"], row["users"], row["conversions"]) == (9, 3, 1)
    assert row["ctr_at_k"] == pytest.approx(1 / 9) and row["conversion_at_k"] == pytest.approx(1 / 9)
    assert row["user_conversion_at_k"] == pytest.approx(1 / 3) and row["revenue"] == pytest.approx(4.0)
    assert row["coverage"] == pytest.approx(0.3) and row["rebuy_share"] == 1.0 and row["discovery_share"] == 0.0


FIRST = 66  # the default layout's first item


def _scoring_lakehouse(spark: SparkSession, config: Config, users: int, num_items: int, length: int) -> None:
    """A saved (untrained) repeatnet and the gold and bronze tables the score stage reads."""
    from conftest import SERVING_HISTORIES_SCHEMA, save_untrained_repeatnet
    from recspark.pipeline.privacy import encrypt_id, identity_map_key

    candidates = 3
    folder = config.model_dir("repeatnet")
    save_untrained_repeatnet(folder, num_items=num_items, length=length, candidates=candidates, first_item=FIRST)
    (folder / "run.json").write_text(json.dumps({C.RUN_ID: "train-1"}))

    def save(df: DataFrame, layer: str, table: str) -> None:
        df.write.format("delta").save(config.table_path(layer, table))

    rng = np.random.default_rng(0)
    rows = []
    for u in range(users):
        items = rng.integers(FIRST, num_items, length).tolist()
        profile = (list(dict.fromkeys(items)) + [0] * candidates)[:candidates]
        rows.append((f"p{u}", items, [1] * length, list(range(length, 0, -1)), items, profile, [0.5] * C.REPEAT_FEATURE_COUNT * candidates))
    save(spark.createDataFrame(rows, SERVING_HISTORIES_SCHEMA), C.GOLD, C.SERVING_HISTORIES)
    vocab = spark.createDataFrame([(f"item-{i}", i) for i in range(FIRST, num_items)], "item_id string, item_idx int")
    save(vocab, C.GOLD, C.ITEM_VOCAB)
    # The serving side's vocabulary: the same, no item new since the training period here.
    save(vocab.selectExpr("item_id", f"1L AS {C.TRAIN_COUNT}", "item_idx"), C.GOLD, C.SERVING_ITEM_VOCAB)
    plain = spark.createDataFrame([(f"p{u}", f"shop-{u}") for u in range(users)], "user_id string, shop_id string")
    save(plain.select(encrypt_id("shop_id", C.USER_ID, identity_map_key(config.privacy.secret_scope)).alias("raw_user_id"),
                      F.col(C.USER_ID)), C.BRONZE, "identity_map")


def test_dismissed_items_are_absent_from_the_next_list_for_dismiss_days(spark: SparkSession, tmp_path: Path) -> None:
    from recspark.stages import score_stage

    as_of = dt.datetime(2024, 3, 1)
    config = Config(paths=PathsConfig(lakehouse=str(tmp_path / "lake"), checkpoints=str(tmp_path / "ck")),
                    train=TrainConfig(models=["repeatnet"]),
                    score=ScoreConfig(k=4, item_block=8, batch_size=2, calibrate=False, run_id="before"),
                    feedback=FeedbackConfig(dismiss_days=30, as_of=as_of.isoformat()))
    _scoring_lakehouse(spark, config, users=4, num_items=FIRST + 20, length=5)
    score_stage(spark, config)

    def lists(run_id: str) -> dict[str, list[str]]:
        rows = (spark.read.format("delta").load(config.recommendations_path).filter(F.col(C.RUN_ID) == run_id)
                .orderBy(C.USER_ID, C.RANK).collect())
        out: dict[str, list[str]] = {}
        for row in rows:
            out.setdefault(row[C.USER_ID], []).append(row[C.ITEM_ID])
        return out

    before = lists("before")
    # shop-0 dismissed its first item yesterday, shop-1 its first 40 days ago (the window is 30 days).
    dismissals = [("p0", before["shop-0"][0], "dismiss", as_of - dt.timedelta(days=1)),
                  ("p1", before["shop-1"][0], "dismiss", as_of - dt.timedelta(days=40)),
                  ("p2", before["shop-2"][0], "click", as_of - dt.timedelta(days=1))]
    spark.createDataFrame(dismissals, "user_id string, item_id string, response string, event_ts timestamp") \
        .write.format("delta").save(config.table_path(C.SILVER, C.FEEDBACK))
    config.score.run_id = "after"
    summary = score_stage(spark, config)
    after = lists("after")
    assert before["shop-0"][0] not in after["shop-0"] and len(after["shop-0"]) == 4
    assert after["shop-0"][:3] == before["shop-0"][1:]  # the rest moves up, in the same order
    assert after["shop-1"] == before["shop-1"] and after["shop-2"] == before["shop-2"] and after["shop-3"] == before["shop-3"]
    assert summary["dismissed items"].startswith("kept out for 30 days")
