"""Ingest faults: conflicting duplicate event ids, unknown items, numbers that are no finite numbers,
a file none of whose rows passes, and a SIGKILL in the bronze MERGE."""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from delta.tables import DeltaTable
from pyspark.sql import SparkSession

from recspark import constants as C
from recspark.config import ConfigError, load_config
from recspark.datasets import RawSources
from recspark.pipeline.ingest import (
    DUPLICATE_EVENT, UNKNOWN_ITEM, RejectedFileError, check_events, ingest, validate_events, validate_items,
)

EVENT_COLUMNS = ("event_id string, user_id string, item_id string, event_type string, event_ts string, "
                 "quantity string, price string, session_id string, source_file string, source_row long")
ITEM_COLUMNS = "item_id string, category string, source_file string, source_row long"
T1, T2, T3 = "2025-03-01 10:00:00", "2025-03-02 10:00:00", "2025-03-03 10:00:00"

# Run 1, with the items i1 and i2. Comments: the expected outcome, worked out by hand.
RUN_1 = [
    ("d1", "u1", "i1", "view", T1, "1", "2.5", "s1", "a.csv", 1),      # kept
    ("d1", "u1", "i1", "view", T1, "1", "2.5", "s1", "a.csv", 2),      # exact duplicate: accepted, not stored
    ("d1", "u1", "i2", "view", T1, "1", "2.5", "s1", "a.csv", 3),      # other item: conflict
    ("d2", "u2", "i2", "cart", T2, "1", "3.0", "s2", "a.csv", 4),      # first delivered d2 (a.csv < b.csv): kept
    ("d3", "u1", "i9", "view", T1, "1", "2.5", "s1", "a.csv", 5),      # i9 unknown
    ("d5", "u3", "i1", "view", T3, "2", "2.5", "s3", "a.csv", 6),      # kept; re-delivered in run 2
    ("d2", "u2", "i2", "purchase", T2, "1", "3.0", "s2", "b.csv", 1),  # conflicts with a.csv row 4
    ("d4", "u1", "i9", "view", T1, "1", "2.5", "s1", "b.csv", 2),      # i9 unknown (so not the reference copy)
    ("d4", "u1", "i1", "view", T1, "1", "2.5", "s1", "b.csv", 3),      # first accepted d4: kept
]
# Run 2, no items in the input: the catalogue is bronze's i1 and i2.
RUN_2 = [
    ("d5", "u3", "i1", "view", T3, "2", "2.5", "s3", "c.csv", 1),      # same content as bronze: no-op
    ("d1", "u1", "i1", "cart", T1, "1", "2.5", "s1", "c.csv", 2),      # differs from bronze d1: conflict
    ("d6", "u2", "i2", "view", T2, "1", "3.0", "s2", "c.csv", 3),      # i2 known from bronze: inserted
    ("d7", "u2", "i7", "view", T2, "1", "3.0", "s2", "c.csv", 4),      # i7 unknown
]


@pytest.fixture(scope="module")
def two_runs(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two ingests into one lakehouse with unknown_items=quarantine; everything the tests read, collected once."""
    lakehouse = tmp_path_factory.mktemp("faults")
    config = load_config(None, [f"paths.lakehouse={lakehouse}", "ingest.unknown_items=quarantine"])
    items = spark.createDataFrame([("i1", "a", "items.csv", 1), ("i2", "b", "items.csv", 2)], ITEM_COLUMNS)
    events_path = config.table_path(C.BRONZE, C.EVENTS)
    log_1 = ingest(spark, RawSources(spark.createDataFrame(RUN_1, EVENT_COLUMNS), items, None), config, "run-1")
    bronze_1 = {r[C.EVENT_ID]: r for r in spark.read.format("delta").load(events_path).collect()}
    log_2 = ingest(spark, RawSources(spark.createDataFrame(RUN_2, EVENT_COLUMNS), None, None), config, "run-2")
    bronze_2 = {r[C.EVENT_ID]: r for r in spark.read.format("delta").load(events_path).collect()}
    quarantine = spark.read.format("delta").load(config.table_path(C.BRONZE, C.QUARANTINE)).collect()
    return {
        "log_1": {(r["entity"], r[C.SOURCE_FILE]): r for r in log_1},
        "log_2": {(r["entity"], r[C.SOURCE_FILE]): r for r in log_2},
        "bronze_1": bronze_1,
        "bronze_2": bronze_2,
        "reasons": {(r[C.SOURCE_FILE], r[C.SOURCE_ROW]): r[C.REASON] for r in quarantine if r["entity"] == C.EVENTS},
    }


def _lineage(row) -> tuple:
    return row[C.SOURCE_FILE], row[C.SOURCE_ROW]


def test_exact_duplicates_are_accepted_and_stored_once(two_runs: dict) -> None:
    assert sorted(two_runs["bronze_1"]) == ["d1", "d2", "d4", "d5"]
    assert _lineage(two_runs["bronze_1"]["d1"]) == ("a.csv", 1)
    assert ("a.csv", 2) not in two_runs["reasons"]


def test_conflicting_copies_in_one_input_are_quarantined(two_runs: dict) -> None:
    assert two_runs["reasons"][("a.csv", 3)] == DUPLICATE_EVENT == "duplicate event_id with different content"
    assert two_runs["reasons"][("b.csv", 1)] == DUPLICATE_EVENT


def test_the_first_delivered_copy_by_file_then_row_wins(two_runs: dict) -> None:
    d2 = two_runs["bronze_1"]["d2"]
    assert (d2[C.EVENT_TYPE], *_lineage(d2)) == ("cart", "a.csv", 4)


def test_a_copy_quarantined_for_another_reason_is_not_the_reference(two_runs: dict) -> None:
    assert two_runs["reasons"][("b.csv", 2)] == UNKNOWN_ITEM
    d4 = two_runs["bronze_1"]["d4"]
    assert (d4[C.ITEM_ID], *_lineage(d4)) == ("i1", "b.csv", 3)


def test_a_conflict_with_bronze_is_quarantined_and_bronze_keeps_its_row(two_runs: dict) -> None:
    assert two_runs["reasons"][("c.csv", 2)] == DUPLICATE_EVENT
    d1 = two_runs["bronze_2"]["d1"]
    assert (d1[C.EVENT_TYPE], *_lineage(d1)) == ("view", "a.csv", 1)


def test_an_identical_redelivery_is_a_no_op(two_runs: dict) -> None:
    assert ("c.csv", 1) not in two_runs["reasons"]
    assert _lineage(two_runs["bronze_2"]["d5"]) == ("a.csv", 6)
    assert sorted(two_runs["bronze_2"]) == ["d1", "d2", "d4", "d5", "d6"]
    assert two_runs["log_2"][(C.EVENTS, "c.csv")]["table_rows_inserted"] == 1  # d6 only


def test_unknown_items_are_quarantined_against_input_and_bronze_items(two_runs: dict) -> None:
    assert two_runs["reasons"][("a.csv", 5)] == UNKNOWN_ITEM == "item_id not in catalogue"
    assert two_runs["reasons"][("c.csv", 4)] == UNKNOWN_ITEM
    assert "d6" in two_runs["bronze_2"]  # i2 is known only from bronze items in run 2
    assert len(two_runs["reasons"]) == 6


def test_counts_reconcile_per_file(two_runs: dict) -> None:
    counts = {key: (r["rows_read"], r["rows_accepted"], r["rows_quarantined"])
              for log in ("log_1", "log_2") for key, r in two_runs[log].items() if key[0] == C.EVENTS}
    assert counts == {(C.EVENTS, "a.csv"): (6, 4, 2), (C.EVENTS, "b.csv"): (3, 1, 2), (C.EVENTS, "c.csv"): (4, 2, 2)}
    assert two_runs["log_1"][(C.EVENTS, "a.csv")]["table_rows_inserted"] == 4


def test_unknown_items_are_kept_without_a_catalogue_or_with_an_empty_one(spark: SparkSession) -> None:
    events = spark.createDataFrame([("e1", "u1", "i9", "view", T1, "1", "1", None, "x.csv", 1)], EVENT_COLUMNS)
    validated = validate_events(events, ["view"], dt.datetime(1990, 1, 1), dt.datetime(2026, 1, 1))
    empty = spark.createDataFrame([], "item_id string")
    no_catalogue = check_events(validated).checked
    both = no_catalogue.unionByName(check_events(validated, empty).checked)
    assert [r[C.REASON] for r in both.collect()] == [None, None]


def test_unknown_items_defaults_to_keep_and_rejects_other_values() -> None:
    assert load_config().ingest.unknown_items == "keep"
    assert load_config(None, ["ingest.unknown_items=quarantine"]).ingest.unknown_items == "quarantine"
    with pytest.raises(ConfigError, match="ingest.unknown_items"):
        load_config(None, ["ingest.unknown_items=drop"])


# --- Numbers that are no finite numbers -------------------------------------------------------------

FLOOR, NOW = dt.datetime(1990, 1, 1), dt.datetime(2026, 1, 1)
# (quantity, price) as text -> the expected reasons (null: accepted), worked out by hand.
EVENT_NUMBERS = [
    (("1", "2.5"), None),
    (("NaN", "2.5"), "non-finite quantity"),
    (("1", "nan"), "non-finite price"),
    (("Infinity", "2.5"), "non-finite quantity"),
    (("1", "-Infinity"), "non-finite price"),  # not also "negative price"
    (("inf", "-inf"), "non-finite quantity; non-finite price"),
    (("1", "1e400"), "non-finite price"),  # overflows to infinity
    (("-1", "2.5"), "negative quantity"),
]


def test_non_finite_event_numbers_are_quarantined_with_their_own_reason(spark: SparkSession) -> None:
    rows = [(f"e{n}", "u1", "i1", "view", T1, quantity, price, None, "n.csv", n + 1)
            for n, ((quantity, price), _) in enumerate(EVENT_NUMBERS)]
    validated = validate_events(spark.createDataFrame(rows, EVENT_COLUMNS), ["view"], FLOOR, NOW)
    reasons = {r[C.SOURCE_ROW]: r[C.REASON] for r in validated.checked.collect()}
    assert reasons == {n + 1: reason for n, (_, reason) in enumerate(EVENT_NUMBERS)}
    assert [(r[C.QUANTITY], r[C.PRICE]) for r in validated.accepted.collect()] == [(1.0, 2.5)]


def test_non_finite_typed_doubles_are_quarantined_too(spark: SparkSession) -> None:
    # Parquet or Delta deliver doubles, NaN and infinities included, not text.
    schema = ("event_id string, user_id string, item_id string, event_type string, event_ts string, quantity double, "
              "price double, source_file string, source_row long")
    rows = [("a", "u1", "i1", "view", T1, 1.0, float("nan"), "p", 1),
            ("b", "u1", "i1", "view", T1, float("-inf"), 1.0, "p", 2),
            ("c", "u1", "i1", "view", T1, 2.0, 3.0, "p", 3)]
    validated = validate_events(spark.createDataFrame(rows, schema), ["view"], FLOOR, NOW)
    assert {r[C.SOURCE_ROW]: r[C.REASON] for r in validated.checked.collect()} == {
        1: "non-finite price", 2: "non-finite quantity", 3: None}


def test_non_finite_item_price_and_stock_are_quarantined(spark: SparkSession) -> None:
    # (price, stock) -> reason. Before, a NaN stock failed the whole job in the cast to long.
    cases = [(("2.5", "3"), None), (("NaN", "3"), "non-finite price"), (("2.5", "NaN"), "non-finite stock"),
             (("2.5", "-inf"), "non-finite stock"), (("2.5", "1e30"), "stock out of range"),
             (("2.5", "-2"), "negative stock")]
    rows = [(f"i{n}", price, stock, "items.csv", n + 1) for n, ((price, stock), _) in enumerate(cases)]
    df = spark.createDataFrame(rows, "item_id string, price string, stock string, source_file string, source_row long")
    validated = validate_items(df)
    assert {r[C.SOURCE_ROW]: r[C.REASON] for r in validated.checked.collect()} == {
        n + 1: reason for n, (_, reason) in enumerate(cases)}
    assert [(r[C.PRICE], r[C.STOCK]) for r in validated.accepted.collect()] == [(2.5, 3)]


# --- A file none of whose rows is accepted ------------------------------------------------------------

def test_a_file_without_one_accepted_row_stops_ingest_before_anything_is_written(
        spark: SparkSession, tmp_path: Path) -> None:
    config = load_config(None, [f"paths.lakehouse={tmp_path}"])
    events = spark.createDataFrame([
        ("g1", "u1", "i1", "view", T1, "1", "2.5", None, "good.csv", 1),
        ("b1", "u1", "i1", "view", None, "1", "2.5", None, "export.csv", 1),      # missing event_ts
        ("b2", "u2", "i2", "view", None, "1", "2.5", None, "export.csv", 2),      # missing event_ts
        ("b3", "u2", "i2", "view", "soon", "1", "2.5", None, "export.csv", 3),    # unparsable event_ts
    ], EVENT_COLUMNS)
    with pytest.raises(RejectedFileError) as caught:
        ingest(spark, RawSources(events, None, None), config, "run-1")
    message = str(caught.value)
    assert message.startswith("events file export.csv: none of its 3 rows was accepted "
                              "(missing event_ts (2); unparsable event_ts (1))")
    assert "good.csv" not in message and "dataset.columns.events" in message
    assert list(tmp_path.iterdir()) == []  # no table of any layer was written


def test_a_file_the_reader_could_not_read_does_not_stop_ingest(spark: SparkSession, tmp_path: Path) -> None:
    # Its one row has no row number: a fault of the file, quarantined, while the other files load.
    config = load_config(None, [f"paths.lakehouse={tmp_path}"])
    schema = EVENT_COLUMNS + ", read_error string, raw_record string"
    events = spark.createDataFrame([
        ("g1", "u1", "i1", "view", T1, "1", "2.5", None, "good.csv", 1, None, None),
        (None, None, None, None, None, None, None, None, "broken.parquet", None, "unreadable file: no footer", None),
    ], schema)
    log = ingest(spark, RawSources(events, None, None), config, "run-1")
    assert sorted((r[C.SOURCE_FILE], r["rows_accepted"], r["rows_quarantined"]) for r in log) == [
        ("broken.parquet", 0, 1), ("good.csv", 1, 0)]


# --- Crash safety -------------------------------------------------------------------------------

N_EVENTS = 3000
N_BAD = 30  # every 100th event has a negative quantity

SCRIPT = textwrap.dedent('''
    """Runs ingest of one Parquet events file in its own local Spark session; writes the log as JSON."""
    import json
    import sys

    from recspark.config import SparkConfig, load_config
    from recspark.datasets import load_sources
    from recspark.pipeline.ingest import ingest
    from recspark.session import get_spark

    events_path, lakehouse, local_dir, out = sys.argv[1:5]
    spark = get_spark(SparkConfig(
        master="local[1]", app_name="recspark-crash", shuffle_partitions=2, driver_memory="1g",
        extra={"spark.local.dir": local_dir, "spark.sql.warehouse.dir": f"{local_dir}/warehouse",
               "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"}))
    config = load_config(None, ["dataset.name=files", f"dataset.events_path={events_path}",
                                f"paths.lakehouse={lakehouse}"])
    log = ingest(spark, load_sources(spark, config), config, "crash-test")
    with open(out, "w") as handle:
        json.dump(log, handle, default=str)
    spark.stop()
''')


def _write_events(path: Path) -> None:
    """A few thousand events as Parquet, written with pyarrow (no Spark job in the test process)."""
    rows = range(N_EVENTS)
    pq.write_table(pa.table({
        C.EVENT_ID: [f"e{i}" for i in rows],
        C.USER_ID: [f"u{i % 50}" for i in rows],
        C.ITEM_ID: [f"i{i % 200}" for i in rows],
        C.EVENT_TYPE: [("view", "cart", "purchase")[i % 3] for i in rows],
        C.EVENT_TS: [f"2025-03-{1 + i % 28:02d} {i % 24:02d}:00:00" for i in rows],
        C.QUANTITY: ["-1" if i % 100 == 0 else "1" for i in rows],
        C.PRICE: ["2.5"] * N_EVENTS,
    }), path)


def _start(tmp_path: Path, name: str) -> subprocess.Popen:
    """The ingest script in a new process group, so that the JVM it starts can be killed with it."""
    script = tmp_path / "run_ingest.py"
    script.write_text(SCRIPT)
    local_dir = tmp_path / f"spark-{name}"
    local_dir.mkdir()
    args = [sys.executable, str(script), str(tmp_path / "events.parquet"), str(tmp_path / "lakehouse"),
            str(local_dir), str(tmp_path / f"{name}.json")]
    with open(tmp_path / f"{name}.log", "w") as output:
        return subprocess.Popen(args, cwd=local_dir, env=os.environ.copy(), stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _commit(version: int) -> str:
    return f"{version:020d}.json"


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL to the script and its JVM (one process group), then waits until all of it is gone."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError("the killed ingest's JVM did not exit")


def test_sigkill_during_the_bronze_merge_leaves_consistent_tables_and_a_rerun_completes(
        spark: SparkSession, tmp_path: Path) -> None:
    _write_events(tmp_path / "events.parquet")
    bronze = tmp_path / "lakehouse" / "files" / C.BRONZE
    first_commit = bronze / C.EVENTS / "_delta_log" / _commit(0)
    events_dir = bronze / C.EVENTS
    process = _start(tmp_path, "killed")
    try:
        # merge_into commits an empty table first (version 0), then the MERGE (version 1). Delta
        # writes the MERGE's data files into the table folder before it commits them, so a data file
        # that version 0 did not have means the MERGE is running: kill then (or, had the commit been
        # faster than the polling, as soon as version 1 exists).
        deadline = time.monotonic() + 900
        while not first_commit.exists():
            assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "ingest never committed bronze events"
            time.sleep(0.005)
        empty_table_files = set(events_dir.glob("*.parquet"))
        while not (set(events_dir.glob("*.parquet")) - empty_table_files or (first_commit.parent / _commit(1)).exists()):
            assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the bronze events MERGE never wrote"
            time.sleep(0.005)
        _kill_group(process)
    finally:
        if process.poll() is None:
            _kill_group(process)

    # Killed before the run log was written, i.e. inside ingest.
    assert not DeltaTable.isDeltaTable(spark, str(bronze / C.RUN_LOG))
    accepted, expected = N_EVENTS - N_BAD, {C.EVENTS: N_EVENTS - N_BAD, C.QUARANTINE: N_BAD}
    merge_committed = (first_commit.parent / _commit(1)).exists()  # final: the process group is gone
    counts = {table.name: spark.read.format("delta").load(str(table)).count()
              for table in sorted(bronze.iterdir()) if DeltaTable.isDeltaTable(spark, str(table))}
    for name, count in counts.items():
        assert count in (0, expected.get(name)), (name, count)
    # The files of an uncommitted MERGE are in the folder but not in the table: it still has 0 rows.
    assert counts[C.EVENTS] == (accepted if merge_committed else 0)

    rerun = _start(tmp_path, "rerun")
    assert rerun.wait(timeout=1800) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    log = json.loads((tmp_path / "rerun.json").read_text())
    assert [(r["entity"], r["rows_read"], r["rows_accepted"], r["rows_quarantined"]) for r in log] == [
        (C.EVENTS, N_EVENTS, accepted, N_BAD)]
    assert spark.read.format("delta").load(str(bronze / C.EVENTS)).count() == accepted
    assert spark.read.format("delta").load(str(bronze / C.QUARANTINE)).count() == N_BAD
