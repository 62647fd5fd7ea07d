"""Ingest: schema enforcement, quarantine with reasons, reconciliation, idempotent re-runs."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import load_config
from recspark.datasets import RawSources
from recspark.pipeline.ingest import ingest, validate_events

EVENT_COLUMNS = "event_id string, user_id string, item_id string, event_type string, event_ts string, quantity string, price string, session_id string, source_file string, source_row long"
NOW = dt.datetime(2026, 1, 1)
FLOOR = dt.datetime(1990, 1, 1)

GOOD = ("e1", "u1", "i1", "view", "2025-03-01 10:00:00", "1", "2.5", "s1", "a.csv", 1)
BAD_ROWS = [
    (("e2", None, "i1", "view", "2025-03-01 10:00:00", "1", "2.5", "s1", "a.csv", 2), "missing user_id"),
    (("e3", "u1", " ", "view", "2025-03-01 10:00:00", "1", "2.5", "s1", "a.csv", 3), "missing item_id"),
    (("e4", "u1", "i1", "view", "yesterday", "1", "2.5", "s1", "a.csv", 4), "unparsable event_ts"),
    (("e5", "u1", "i1", "view", "2031-01-01 00:00:00", "1", "2.5", "s1", "a.csv", 5), "event_ts in the future"),
    (("e6", "u1", "i1", "view", "1970-01-02 00:00:00", "1", "2.5", "s1", "a.csv", 6), "event_ts before 1990-01-01"),
    (("e7", "u1", "i1", "wishlist", "2025-03-01 10:00:00", "1", "2.5", "s1", "a.csv", 7), "unknown event_type 'wishlist'"),
    (("e8", "u1", "i1", "view", "2025-03-01 10:00:00", "-2", "2.5", "s1", "a.csv", 8), "negative quantity"),
    (("e9", "u1", "i1", "view", "2025-03-01 10:00:00", "two", "2.5", "s1", "a.csv", 9), "non-numeric quantity"),
    (("e10", "u1", "i1", "view", "2025-03-01 10:00:00", "1", "-1", "s1", "a.csv", 10), "negative price"),
    (("e11", "u1", "i1", "view", None, "1", "2.5", "s1", "a.csv", 11), "missing event_ts"),
]


@pytest.fixture(scope="module")
def validated_bad_rows(spark: SparkSession) -> tuple[dict, list]:
    """All bad rows validated in one Spark job; each test below checks one reason."""
    df = spark.createDataFrame([GOOD, *[row for row, _ in BAD_ROWS]], EVENT_COLUMNS)
    validated = validate_events(df, ["view", "cart", "purchase"], FLOOR, NOW)
    quarantined = {row[C.SOURCE_ROW]: row for row in validated.quarantined.collect()}
    return quarantined, [row[C.EVENT_ID] for row in validated.accepted.collect()]


@pytest.mark.parametrize(("row", "reason"), BAD_ROWS, ids=[reason for _, reason in BAD_ROWS])
def test_each_malformed_row_is_quarantined_with_its_reason(validated_bad_rows: tuple, row: tuple, reason: str) -> None:
    quarantined, accepted = validated_bad_rows
    entry = quarantined[row[-1]]
    assert (entry[C.SOURCE_FILE], entry[C.REASON]) == ("a.csv", reason)
    assert f'"{C.EVENT_ID}":"{row[0]}"' in entry[C.RAW_RECORD]
    assert accepted == ["e1"]


def test_a_row_with_several_faults_lists_them_all(spark: SparkSession) -> None:
    row = ("e1", None, None, "view", "2025-03-01", "1", "1", None, "b.csv", 3)
    validated = validate_events(spark.createDataFrame([row], EVENT_COLUMNS), ["view"], FLOOR, NOW)
    assert validated.quarantined.first()[C.REASON] == "missing user_id; missing item_id"


def test_accepted_rows_are_typed(spark: SparkSession) -> None:
    validated = validate_events(spark.createDataFrame([GOOD], EVENT_COLUMNS), ["view"], FLOOR, NOW)
    row = validated.accepted.first()
    assert row[C.EVENT_TS] == dt.datetime(2025, 3, 1, 10, 0)
    assert (row[C.QUANTITY], row[C.PRICE]) == (1.0, 2.5)


def test_epoch_seconds_are_timestamps(spark: SparkSession) -> None:
    df = spark.createDataFrame([("u1", "i1", "view", 978300760, "x", 1)],
                               "user_id string, item_id string, event_type string, event_ts long, source_file string, source_row long")
    validated = validate_events(df, ["view"], FLOOR, NOW)
    assert validated.accepted.first()[C.EVENT_TS] == dt.datetime(2000, 12, 31, 22, 12, 40)


def _sources(spark: SparkSession, rows: list[tuple]) -> RawSources:
    items = spark.createDataFrame([("i1", "a/b", "x", 2.0, 3, "items.csv", 1), (None, "a", "y", 1.0, 1, "items.csv", 2)],
                                  "item_id string, category string, brand string, price double, stock long, source_file string, source_row long")
    users = spark.createDataFrame([("u1", "34", "f", "90210", "users.csv", 1)],
                                  "user_id string, age string, gender string, region string, source_file string, source_row long")
    return RawSources(spark.createDataFrame(rows, EVENT_COLUMNS), items, users)


def test_counts_reconcile_and_rerun_adds_nothing(spark: SparkSession, tmp_path: Path) -> None:
    config = load_config(None, [f"paths.lakehouse={tmp_path}"])
    twice = ("", "u1", "i1", "view", "2025-03-01 10:00:00", "1", "2.5", "s1", "b.csv", 1)
    rows = [GOOD, *[row for row, _ in BAD_ROWS], twice, twice[:-1] + (2,)]
    log = ingest(spark, _sources(spark, rows), config, "run-1")
    by_file = {(r["entity"], r[C.SOURCE_FILE]): r for r in log}
    assert (by_file[("events", "a.csv")]["rows_read"], by_file[("events", "a.csv")]["rows_accepted"],
            by_file[("events", "a.csv")]["rows_quarantined"]) == (11, 1, 10)
    assert (by_file[("events", "b.csv")]["rows_read"], by_file[("events", "b.csv")]["rows_accepted"]) == (2, 2)
    assert by_file[("items", "items.csv")]["rows_quarantined"] == 1
    for row in log:
        assert row["rows_read"] == row["rows_accepted"] + row["rows_quarantined"]

    events_path = config.table_path(C.BRONZE, C.EVENTS)
    first = spark.read.format("delta").load(events_path)
    # Two identical lines without an event id are two events (two scans), each with its own key.
    assert first.count() == 3
    assert first.select(C.EVENT_ID).distinct().count() == 3

    log_again = ingest(spark, _sources(spark, rows), config, "run-2")
    assert {r["table_rows_inserted"] for r in log_again} == {0}
    second = spark.read.format("delta").load(events_path)
    assert sorted(map(tuple, second.collect())) == sorted(map(tuple, first.collect()))
    quarantine = spark.read.format("delta").load(config.table_path(C.BRONZE, C.QUARANTINE))
    assert quarantine.count() == 11  # 10 events + 1 item, not doubled by the re-run
    run_log = spark.read.format("delta").load(config.table_path(C.BRONZE, C.RUN_LOG))
    assert run_log.filter(F.col(C.RUN_ID) == "run-2").count() == len(log_again)
