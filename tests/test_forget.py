"""Erasure: jobs/forget.py on a small generated shop, then no trace of the people anywhere.

The lakehouse is ingest + prepare + features of a tiny shop, plus recommendations and evaluation
predictions mapped back to the shop's ids as the score and evaluate stages do (no training needed).
The replayed loop's own lakehouse (copies of silver and the identity map, a feedback file) is there too.
Two people are forgotten: "user-000", the smallest raw id (so the min statistic of bronze files in
the Delta log), and the person with the smallest pseudonym (the min statistic of silver and gold
files). Then every table is read and every file under the lakehouse is searched, as raw bytes and,
for Parquet, decoded (compressed pages need not hold a string verbatim), for their raw ids and their
pseudonyms; the same search finds them before the erasure, so it can fail.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import Config, load_config
from recspark.datasets import RawSources
from recspark.evaluation.evaluate import with_original_user_id
from recspark.pipeline import privacy
from recspark.pipeline.features import SEQUENCES
from recspark.pipeline.forget import audit_path
from recspark.pipeline.prepare import IDENTITY_MAP, RAW_USER_ID
from recspark.pipeline.privacy import identity_map_key
from recspark.stages import features_stage, ingest_stage, prepare_stage
from recspark.utils.delta import overwrite_table

USERS, ITEMS, BASKETS = 8, 6, 4
SECRET = "forget-test-key-5e0b7a21"


def pseudonym(raw: str) -> str:
    return "u_" + hmac.new(SECRET.encode(), raw.encode(), hashlib.sha256).hexdigest()[:24]


RAW_IDS = [f"user-{u:03d}" for u in range(USERS)]
FORGOTTEN = sorted({RAW_IDS[0], min(RAW_IDS, key=pseudonym)})


def shop(spark: SparkSession) -> RawSources:
    """Baskets of 3 purchases; each person also has one rejected event (an unknown event type)."""
    rng = random.Random(7)
    rows, n = [], 0
    for user, raw in enumerate(RAW_IDS):
        for basket in range(BASKETS):
            when = dt.datetime(2024, 1, 1) + dt.timedelta(days=basket * 3 + user % 3, hours=basket)
            for _ in range(3):
                n += 1
                rows.append((raw, f"item-{rng.randrange(ITEMS):02d}", "purchase", when, 1.0, 2.0,
                             f"b-{user}-{basket}", "shop.csv", n))
        n += 1
        rows.append((raw, "item-00", "teleport", dt.datetime(2024, 1, 2), 1.0, 2.0, None, "shop.csv", n))
    events = spark.createDataFrame(rows, "user_id string, item_id string, event_type string, event_ts timestamp, "
                                         "quantity double, price double, session_id string, source_file string, "
                                         "source_row long")
    items = spark.createDataFrame([(f"item-{i:02d}", "g", "b", 2.0, 10, "items.csv", i + 1) for i in range(ITEMS)],
                                  "item_id string, category string, brand string, price double, stock long, "
                                  "source_file string, source_row long")
    users = spark.createDataFrame([(raw, str(20 + u), "f", "12345", "users.csv", u + 1) for u, raw in enumerate(RAW_IDS)],
                                  "user_id string, age string, gender string, region string, source_file string, "
                                  "source_row long")
    return RawSources(events, items, users)


def traces(root: Path, needles: list[str]) -> dict[str, set[str]]:
    """needle -> the files under ``root`` that hold it, as bytes or in a Parquet file's decoded rows."""
    found: dict[str, set[str]] = {}
    for file in sorted(root.rglob("*")):
        if not file.is_file():
            continue
        texts = [file.read_bytes()]
        if file.name.endswith(".parquet"):
            texts.append(repr(pq.read_table(file).to_pylist()).encode())
        for needle in needles:
            if any(needle.encode() in text for text in texts):
                found.setdefault(needle, set()).add(str(file.relative_to(root)))
    return found


def table_traces(spark: SparkSession, root: Path, needles: list[str]) -> dict[str, set[str]]:
    """needle -> the Delta tables under ``root`` whose current rows hold it."""
    found: dict[str, set[str]] = {}
    for log in root.rglob("_delta_log"):
        text = repr(spark.read.format("delta").load(str(log.parent)).collect())
        for needle in needles:
            if needle in text:
                found.setdefault(needle, set()).add(str(log.parent.relative_to(root)))
    return found


def user_rows(spark: SparkSession, config: Config) -> dict[str, int]:
    """Rows per user-holding table, for the people kept."""
    def count(layer: str, table: str) -> int:
        return spark.read.format("delta").load(config.table_path(layer, table)).count()
    return {f"{layer}/{table}": count(layer, table) for layer, table in [
        (C.BRONZE, C.EVENTS), (C.BRONZE, C.USERS), (C.BRONZE, C.QUARANTINE), (C.BRONZE, IDENTITY_MAP),
        (C.SILVER, C.EVENTS), (C.SILVER, C.USERS), (C.GOLD, SEQUENCES), (C.GOLD, C.SERVING_HISTORIES)]}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    root = tmp_path_factory.mktemp("forget")
    return load_config(None, ["dataset.name=synthetic", f"paths.lakehouse={root}/lakehouse",
                              "features.max_seq_len=5", "features.min_item_count=1"])


@pytest.fixture(scope="module")
def lakehouse(spark: SparkSession, config: Config) -> dict:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(privacy.KEY_ENV, SECRET)
        ingest_stage(spark, config, shop(spark))
        prepare_stage(spark, config)
        features_stage(spark, config)
        # The outputs as score and evaluate write them: per user, mapped back to the shop's ids.
        users = spark.read.format("delta").load(config.table_path(C.GOLD, C.SERVING_HISTORIES)).select(C.USER_ID)
        ranked = users.crossJoin(spark.range(1, 3).select(F.col("id").cast("int").alias(C.RANK))).select(
            C.USER_ID, C.RANK, F.lit("item-01").alias(C.ITEM_ID), F.lit(0.5).alias(C.SCORE))
        identity = spark.read.format("delta").load(config.table_path(C.BRONZE, IDENTITY_MAP))
        mapped = with_original_user_id(ranked, identity, identity_map_key())
        overwrite_table(mapped, config.recommendations_path)
        overwrite_table(mapped.withColumn(C.RUN_ID, F.lit("run-1")),
                        str(config.outputs_dir / "evaluation" / "predictions"))
        # The replayed loop's own lakehouse (recspark.loop): copies of silver and the identity map.
        from recspark.loop import start_world

        start_world(spark, config, dt.datetime(2024, 1, 8))
        replayed = Path(config.paths.lakehouse) / "synthetic-loop" / "feedback" / "cycle-00"
        replayed.mkdir(parents=True)
        (replayed / "feedback.csv").write_text("".join(f"{raw},item-01,impression\n" for raw in RAW_IDS))
        return {"before": user_rows(spark, config),
                "events": {raw: n for raw, n in spark.read.format("delta").load(config.table_path(C.BRONZE, C.EVENTS))
                           .groupBy(C.USER_ID).count().collect()}}


def test_forget_leaves_no_trace_of_the_people(spark: SparkSession, config: Config, lakehouse: dict,
                                              tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from jobs.forget import main

    root = Path(config.paths.lakehouse)
    needles = FORGOTTEN + [pseudonym(raw) for raw in FORGOTTEN]
    kept = [raw for raw in RAW_IDS if raw not in FORGOTTEN]
    assert len(FORGOTTEN) == 2 and len(kept) == USERS - 2

    # The search finds every needle before: in data files, in the outputs, and in the log statistics.
    before = traces(root, needles)
    assert set(before) == set(needles)
    assert any("/_delta_log/" in name and "bronze/events" in name for name in before[RAW_IDS[0]])
    assert any("/_delta_log/" in name and "silver/events" in name for name in before[min(needles[2:])])
    for table in ("bronze/quarantine", "recommendations", "evaluation/predictions"):
        assert any(name.startswith(f"synthetic/{table}/part-") for name in before[FORGOTTEN[0]]), table
    assert "synthetic-loop/feedback/cycle-00/feedback.csv" in before[FORGOTTEN[0]]
    for needle in needles[2:]:  # the loop's copies hold their pseudonyms
        assert any(name.startswith("synthetic-loop/synthetic/silver/events/") for name in before[needle])
        assert any(name.startswith("synthetic-loop/synthetic/bronze/identity_map/") for name in before[needle])

    # One person by --user-id, the other from a file; the configuration arguments as every job's.
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(f"\n{FORGOTTEN[1]}\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(privacy.KEY_ENV, SECRET)
        summary = main(["--user-id", FORGOTTEN[0], "--ids-file", str(ids_file),
                        "--set", "dataset.name=synthetic", "--set", f"paths.lakehouse={root}"])
    printed = capsys.readouterr().out
    assert "WARNING" in printed and "time travel" in printed
    assert not any(needle in printed for needle in needles)

    assert traces(root, needles) == {}
    in_tables = table_traces(spark, root, needles + kept)
    assert not set(in_tables) & set(needles)
    assert set(in_tables) == set(kept)  # ... where everyone else still is

    # Exactly their rows went; everyone else's stayed.
    after = user_rows(spark, config)
    forgotten_events = sum(lakehouse["events"][raw] for raw in FORGOTTEN)
    assert after[f"{C.BRONZE}/{C.EVENTS}"] == lakehouse["before"][f"{C.BRONZE}/{C.EVENTS}"] - forgotten_events
    for name in (f"{C.BRONZE}/{C.USERS}", f"{C.BRONZE}/{C.QUARANTINE}", f"{C.BRONZE}/{IDENTITY_MAP}",
                 f"{C.SILVER}/{C.USERS}", f"{C.GOLD}/{SEQUENCES}", f"{C.GOLD}/{C.SERVING_HISTORIES}"):
        assert after[name] == lakehouse["before"][name] - 2, name
    recommended = {row[C.USER_ID] for row in spark.read.format("delta").load(config.recommendations_path).collect()}
    assert recommended == set(kept)

    # The audit row: counts, never an id.
    audit = spark.read.format("delta").load(audit_path(config)).collect()
    assert len(audit) == 1
    row = audit[0]
    assert (row["ids_requested"], row["ids_found"], row["retention_hours"], row["log_truncated"]) == (2, 2, 0.0, True)
    assert row["rows_deleted"]["synthetic/bronze/events"] == forgotten_events
    assert row["rows_deleted"]["synthetic/recommendations"] == 2 * 2
    assert summary["ids"].startswith("2 requested, 2 in the identity map")

    # Time travel to a version before the erasure is gone.
    with pytest.raises(Exception, match="(?i)version"):
        spark.read.format("delta").option("versionAsOf", 0).load(config.table_path(C.BRONZE, C.EVENTS)).collect()

    # The identity map still opens for everyone else.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(privacy.KEY_ENV, SECRET)
        identity = spark.read.format("delta").load(config.table_path(C.BRONZE, IDENTITY_MAP))
        opened = identity.select(privacy.decrypt_id(RAW_USER_ID, C.USER_ID, identity_map_key()).alias("raw"))
        assert sorted(row["raw"] for row in opened.collect()) == kept


def test_forget_with_another_key_deletes_nothing(spark: SparkSession, config: Config, lakehouse: dict) -> None:
    """A wrong key would pseudonymise to nobody: bronze would lose the person, silver and gold not."""
    from recspark.pipeline.forget import forget

    events = config.table_path(C.BRONZE, C.EVENTS)
    before = spark.read.format("delta").load(events).count()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(privacy.KEY_ENV, "not-the-key-of-this-lakehouse")
        with pytest.raises(RuntimeError, match="nothing was deleted"):
            forget(spark, config, [RAW_IDS[-1]])
    assert spark.read.format("delta").load(events).count() == before
