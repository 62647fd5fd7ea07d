"""The reader for the user's own files: formats, faults that become quarantine rows, row numbers.

Each ingest is slow here, so the fixtures run few of them (module-scoped) and the tests only look:
one ingest holds every fault (CSV events, JSON-lines items, CSV users), and one ingest per other
format (JSON lines, Parquet with a corrupt file, Delta) holds the same good events.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from recspark import constants as C
from recspark.config import ConfigError, DatasetConfig, load_config
from recspark.datasets import files
from recspark.pipeline.ingest import READ_ERROR, RejectedFileError, ingest

HEADER = "user_id,item_id,event_type,event_ts,quantity,price,session_id"
# The good events, as (user, item, type, time, quantity, price, session); one item id holds a comma.
EVENTS = [
    ("u1", "milk, 1l", "view", "2025-03-01 10:00:00", 1, 2.5, "s1"),
    ("u3", "eggs", "purchase", "2025-03-02 09:00:00", 3, 4.0, "s3"),
    ("u4", "milk, 1l", "cart", "2025-03-03 08:00:00", 1, 2.5, "s4"),
    ("u4", "bread", "purchase", "2025-03-03 08:10:00", 2, 1.25, "s4"),
]
OTHER_CSV = "b [2]+.csv"  # glob characters, a space and a plus: the name must survive as it is

# events/a.csv, line by line after the header (data row = line number - 1): good, missing fields,
# extra field, blank, invalid UTF-8 (Latin-1 "e-acute"), good.
A_CSV = (
    f"{HEADER}\n"
    'u1,"milk, 1l",view,2025-03-01 10:00:00,1,2.5,s1\n'
    "u1,bread,cart,2025-03-01 10:05:00\n"
    "u2,eggs,view,2025-03-01 11:00:00,1,4.0,s2,surplus\n"
    "\n"
).encode() + b"u2,b\xe9er,view,2025-03-01 11:05:00,1,1.5,s2\n" + b"u3,eggs,purchase,2025-03-02 09:00:00,3,4.0,s3\n"
B_CSV = (f'{HEADER}\r\nu4,"milk, 1l",cart,2025-03-03 08:00:00,1,2.5,s4\r\n'
         "u4,bread,purchase,2025-03-03 08:10:00,2,1.25,s4\r\n")  # CRLF line ends
ITEMS_JSONL = (
    '{"item_id": "milk, 1l", "category": "DAIRY/MILK", "price": 2.5, "color": "white", "attributes": {"fat": "3.5%"}}\n'
    '{"item_id": "bread", "category": "BAKERY", oops\n'
    '{"item_id": "eggs", "brand": "Hen", "stock": 12, "organic": true}\n'
)
USERS_CSV = "user_id,age,gender,region,loyalty_tier,newsletter\nu1,34,f,north,gold,yes\nu2,45-54,m,south,,no\n"

# (entity, file, source_row) -> reason, for every fault of the fault run.
FAULTS = {
    ("events", "a.csv", 2): "expected 7 columns, found 4",
    ("events", "a.csv", 3): "expected 7 columns, found 8",
    ("events", "a.csv", 5): "invalid UTF-8",
    ("items", "items.jsonl", 2): "malformed JSON",
    ("items", "more.json", 1): "invalid UTF-8",
}
UNREADABLE = {("events", "c.csv"), ("items", "binary.jsonl")}


def _bronze(spark: SparkSession, config, table: str) -> list[dict]:
    return [row.asDict() for row in spark.read.format("delta").load(config.table_path(C.BRONZE, table)).collect()]


def _name(path: str | None) -> str | None:
    return path.rsplit("/", 1)[-1] if path else path


def _counts(log: dict) -> dict:
    return {key: (row["rows_read"], row["rows_accepted"], row["rows_quarantined"]) for key, row in log.items()}


def _run(spark: SparkSession, root: Path, *overrides: str, **paths: str) -> dict:
    """Reads the files as data set ``files`` and ingests them into a lakehouse under ``root``."""
    config = load_config(None, [f"paths.lakehouse={root}/lake", "dataset.name=files",
                                *[f"dataset.{key}={value}" for key, value in paths.items()], *overrides])
    sources = files.read_sources(spark, config.dataset)
    log = ingest(spark, sources, config, "run-1")
    return {
        "sources": sources,
        "log": {(row["entity"], _name(row[C.SOURCE_FILE])): row for row in log},
        "quarantine": {(row["entity"], _name(row[C.SOURCE_FILE]), row[C.SOURCE_ROW]): row
                       for row in _bronze(spark, config, C.QUARANTINE)},
        **{table: _bronze(spark, config, table) for table in ("events", "items", "users") if f"{table}_path" in paths},
    }


@pytest.fixture(scope="module")
def faults(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One ingest of every fault: CSV events, JSON-lines items, CSV users with free attributes."""
    root = tmp_path_factory.mktemp("faults")
    events, items = root / "events", root / "items"
    events.mkdir()
    items.mkdir()
    (events / "a.csv").write_bytes(A_CSV)
    (events / OTHER_CSV).write_text(B_CSV, newline="")
    (events / "c.csv").write_bytes(f"{HEADER}\nu9,i9,view,2025-03-01,1,1,s9\n".encode("utf-16"))  # not UTF-8
    (items / "items.jsonl").write_text(ITEMS_JSONL)
    (items / "more.json").write_bytes(b'{"item_id": "b\xe9er"}\n{"item_id": "butter", "price": 1.2}\n')
    (items / "binary.jsonl").write_bytes(b"\x00\x01\xff\xfe\n\x00\x02\n")
    (root / "users.csv").write_text(USERS_CSV)
    return _run(spark, root, events_path=str(events), items_path=str(items / "*.json*"),
                users_path=str(root / "users.csv"))


@pytest.mark.parametrize("key", list(FAULTS), ids=[f"{k[1]}:{k[2]}" for k in FAULTS])
def test_each_faulty_line_is_quarantined_with_its_row_and_reason(faults: dict, key: tuple) -> None:
    row = faults["quarantine"][key]
    assert row[C.REASON] == FAULTS[key]


def test_a_faulty_line_keeps_its_raw_text(faults: dict) -> None:
    quarantine = faults["quarantine"]
    assert quarantine[("events", "a.csv", 2)][C.RAW_RECORD] == "u1,bread,cart,2025-03-01 10:05:00"
    assert quarantine[("events", "a.csv", 5)][C.RAW_RECORD] == "u2,b\ufffder,view,2025-03-01 11:05:00,1,1.5,s2"
    assert quarantine[("items", "items.jsonl", 2)][C.RAW_RECORD] == '{"item_id": "bread", "category": "BAKERY", oops'


@pytest.mark.parametrize("key", sorted(UNREADABLE), ids=[k[1] for k in sorted(UNREADABLE)])
def test_an_undecodable_file_is_one_quarantine_row(faults: dict, key: tuple) -> None:
    rows = [row for (entity, name, _), row in faults["quarantine"].items() if (entity, name) == key]
    assert len(rows) == 1
    assert rows[0][C.SOURCE_ROW] is None
    assert rows[0][C.REASON].startswith("unreadable file: ")


def test_good_rows_of_the_same_and_other_files_reach_bronze(faults: dict) -> None:
    events = {(_name(e[C.SOURCE_FILE]), e[C.SOURCE_ROW]): (e[C.USER_ID], e[C.ITEM_ID]) for e in faults["events"]}
    assert events == {("a.csv", 1): ("u1", "milk, 1l"), ("a.csv", 6): ("u3", "eggs"),
                      (OTHER_CSV, 1): ("u4", "milk, 1l"), (OTHER_CSV, 2): ("u4", "bread")}
    items = {(_name(i[C.SOURCE_FILE]), i[C.SOURCE_ROW]): i[C.ITEM_ID] for i in faults["items"]}
    assert items == {("items.jsonl", 1): "milk, 1l", ("items.jsonl", 3): "eggs", ("more.json", 2): "butter"}


def test_rows_read_are_accepted_plus_quarantined_per_file(faults: dict) -> None:
    expected = {  # (read, accepted, quarantined); blank lines are no rows
        ("events", "a.csv"): (5, 2, 3), ("events", OTHER_CSV): (2, 2, 0), ("events", "c.csv"): (1, 0, 1),
        ("items", "items.jsonl"): (3, 2, 1), ("items", "more.json"): (2, 1, 1), ("items", "binary.jsonl"): (1, 0, 1),
        ("users", "users.csv"): (2, 2, 0),
    }
    assert _counts(faults["log"]) == expected


def test_a_quoted_field_with_a_comma_parses(faults: dict) -> None:
    milk = [e for e in faults["events"] if e[C.ITEM_ID] == "milk, 1l" and e[C.USER_ID] == "u1"]
    assert [(m[C.EVENT_TYPE], m[C.PRICE], m[C.SESSION_ID]) for m in milk] == [("view", 2.5, "s1")]


def test_extra_columns_become_attributes(faults: dict) -> None:
    items = {i[C.ITEM_ID]: i for i in faults["items"]}
    # JSON: other keys as text, merged with the item's own "attributes" object.
    assert items["milk, 1l"][C.ATTRIBUTES] == {"color": "white", "fat": "3.5%"}
    assert items["eggs"][C.ATTRIBUTES] == {"organic": "true"}
    assert (items["eggs"][C.BRAND], items["eggs"][C.STOCK]) == ("Hen", 12)
    users = {u[C.USER_ID]: u for u in faults["users"]}
    # CSV: other columns, an empty field left out.
    assert users["u1"][C.ATTRIBUTES] == {"loyalty_tier": "gold", "newsletter": "yes"}
    assert users["u2"][C.ATTRIBUTES] == {"newsletter": "no"}
    assert (users["u2"][C.AGE], users["u2"][C.REGION]) == ("45-54", "south")


# --- The same events in other formats ----------------------------------------------------------------

def _write_jsonl(folder: Path) -> str:
    keys = ("user_id", "item_id", "event_type", "event_ts", "quantity", "price", "session_id")
    path = folder / "events.jsonl"
    path.write_text("".join(json.dumps(dict(zip(keys, event))) + "\n" for event in EVENTS))
    return str(path)


def _write_parquet(folder: Path) -> str:
    """A directory with the events as typed Parquet and a corrupt Parquet file beside it."""
    path = folder / "parquet"
    path.mkdir()
    columns = list(zip(*EVENTS))
    table = pa.table({
        "user_id": columns[0], "item_id": columns[1], "event_type": columns[2],
        "event_ts": pa.array([dt.datetime.fromisoformat(t) for t in columns[3]], pa.timestamp("us", tz="UTC")),
        "quantity": pa.array(columns[4], pa.int64()), "price": columns[5], "session_id": columns[6],
    })
    pq.write_table(table, path / "events.parquet")
    (path / "broken.parquet").write_bytes(b"PAR1 this is no footer")
    return str(path)


def _write_delta(spark: SparkSession, folder: Path) -> str:
    path = str(folder / "delta")
    schema = ("user_id string, item_id string, event_type string, event_ts string, quantity long, price double, "
              "session_id string")
    spark.createDataFrame(EVENTS, schema).coalesce(1).write.format("delta").save(path)
    return path


@pytest.fixture(scope="module")
def formats(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One events-only ingest per format: JSON lines, Parquet (with a corrupt file), Delta."""
    writers = {"json": _write_jsonl, "parquet": _write_parquet, "delta": lambda root: _write_delta(spark, root)}
    runs = {}
    for name, write in writers.items():
        root = tmp_path_factory.mktemp(name)
        runs[name] = _run(spark, root, events_path=write(root))
    return runs


def _content(events: list[dict]) -> list[tuple]:
    """Bronze events without their lineage, which names each format's own files."""
    return sorted(tuple(v for k, v in sorted(e.items()) if k not in (C.SOURCE_FILE, C.SOURCE_ROW)) for e in events)


@pytest.mark.parametrize("fmt", ["json", "parquet", "delta"])
def test_every_format_gives_the_same_bronze_events(faults: dict, formats: dict, fmt: str) -> None:
    assert len(formats[fmt]["events"]) == len(EVENTS)
    assert _content(formats[fmt]["events"]) == _content(faults["events"])


@pytest.mark.parametrize("fmt", ["json", "parquet", "delta"])
def test_row_numbers_are_one_based_rows_of_the_file(formats: dict, fmt: str) -> None:
    rows = sorted((e[C.SOURCE_ROW], e[C.USER_ID], e[C.ITEM_ID]) for e in formats[fmt]["events"])
    assert rows == [(i + 1, e[0], e[1]) for i, e in enumerate(EVENTS)]


def test_a_corrupt_parquet_file_is_one_quarantine_row_and_the_others_load(formats: dict) -> None:
    run = formats["parquet"]
    [row] = [row for key, row in run["quarantine"].items() if key[1] == "broken.parquet"]
    assert row[C.SOURCE_ROW] is None
    assert row[C.REASON].startswith("unreadable file: ") and "footer" in row[C.REASON]
    assert _counts(run["log"]) == {("events", "events.parquet"): (4, 4, 0), ("events", "broken.parquet"): (1, 0, 1)}


def test_parquet_items_keep_types_and_other_columns_go_to_attributes(spark: SparkSession, tmp_path: Path) -> None:
    items = pa.table({
        "Item_ID": ["i1"], "price": [2.5], "colour": ["red"], "dims": [{"w": 1}],
        "attributes": pa.array([[("fat", "3%"), ("colour", "blue")]], pa.map_(pa.string(), pa.string())),
    })
    pq.write_table(items, tmp_path / "items.parquet")
    pq.write_table(pa.table({"user_id": ["u1"], "age": [30]}), tmp_path / "users.parquet")
    [item] = files.read_path(spark, str(tmp_path / "items.parquet"), C.ITEMS).collect()
    [user] = files.read_path(spark, str(tmp_path / "users.parquet"), C.USERS).collect()
    # Other columns win over the table's own attributes entries of the same name.
    assert (item[C.ITEM_ID], item[C.PRICE], item[C.ATTRIBUTES]) == ("i1", 2.5, {"colour": "red", "dims": '{"w":1}',
                                                                              "fat": "3%"})
    assert (user[C.AGE], user[C.ATTRIBUTES], user[C.SOURCE_ROW]) == (30, {}, 1)


def test_unset_items_and_users_are_none(formats: dict) -> None:
    sources = formats["json"]["sources"]
    assert (sources.items, sources.users) == (None, None)


# --- Row numbers across input splits, and bad paths ---------------------------------------------------

def test_row_numbers_are_exact_across_many_input_splits(spark: SparkSession, tmp_path: Path) -> None:
    # ~80 splits of 97 bytes per file, most lines straddling a split boundary; CRLF line ends, blank
    # lines (every 7th) and quoted commas.
    lines = ["user_id,item_id,event_type,event_ts"]
    lines += [f'u{i},"item, {i}",view,2025-03-01 10:00:00' if i % 7 else "" for i in range(1, 201)]
    for name in ("one.csv", "two.csv"):
        (tmp_path / name).write_text("\r\n".join(lines) + "\r\n", newline="")
    key = "spark.sql.files.maxPartitionBytes"
    old = spark.conf.get(key)
    spark.conf.set(key, "97")
    try:
        df = files.read_path(spark, str(tmp_path), C.EVENTS)
        rows = df.collect()
    finally:
        spark.conf.set(key, old)
    assert df.columns == [C.USER_ID, C.ITEM_ID, C.EVENT_TYPE, C.EVENT_TS, C.SOURCE_FILE, C.SOURCE_ROW,
                          READ_ERROR, C.RAW_RECORD]
    expected = sorted((name, i, f"u{i}", f"item, {i}") for name in ("one.csv", "two.csv")
                      for i in range(1, 201) if i % 7)
    got = sorted((_name(r[C.SOURCE_FILE]), r[C.SOURCE_ROW], r[C.USER_ID], r[C.ITEM_ID]) for r in rows)
    assert got == expected
    assert {r[READ_ERROR] for r in rows} == {None}


def _bad_paths(root: Path) -> dict[str, tuple[type, str]]:
    (root / "mixed").mkdir()
    (root / "mixed" / "a.csv").write_text("user_id\nu1\n")
    (root / "mixed" / "b.parquet").write_bytes(b"")
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("hello")
    (root / "empty").mkdir()
    return {
        "missing": (FileNotFoundError, str(root / "missing")),
        "glob matching nothing": (ValueError, str(root / "mixed" / "*.jsonl")),
        "mixed formats": (ValueError, str(root / "mixed")),
        "unknown extension": (ValueError, str(root / "notes")),
        "empty directory": (ValueError, str(root / "empty")),
    }


@pytest.mark.parametrize("case", ["missing", "glob matching nothing", "mixed formats", "unknown extension",
                                  "empty directory"])
def test_a_bad_path_fails_clearly_naming_it(spark: SparkSession, tmp_path: Path, case: str) -> None:
    error, path = _bad_paths(tmp_path)[case]
    with pytest.raises(error, match=re.escape(path)) as caught:
        files.resolve(spark, path)
    assert type(caught.value) is error


def test_format_of_names() -> None:
    names = ("a.CSV", "b.jsonl", "c.json.gz", "d.snappy.parquet", "e.parquet.gz", "f.txt")
    assert [files.format_of(n) for n in names] == ["csv", "json", "json", "parquet", None, None]


# --- Columns named otherwise: a clear stop, or a mapping from the configuration ---------------------------

# The user: a shop export whose time column is "timestamp", with a NaN price on one line.
EXPORT = ("user_id,item_id,event_type,timestamp,quantity,price\n"
          "u1,milk,view,2025-03-01 10:00:00,1,2.5\n"
          "u2,bread,purchase,2025-03-02 09:00:00,1,NaN\n"
          "u3,eggs,cart,2025-03-03 08:00:00,2,4.0\n")


def test_a_file_without_a_required_column_stops_the_read_naming_file_column_and_found(
        spark: SparkSession, tmp_path: Path) -> None:
    (tmp_path / "ev.csv").write_text(EXPORT)
    dataset = DatasetConfig(name="files", events_path=str(tmp_path / "ev.csv"))
    with pytest.raises(files.MissingColumnError) as caught:
        files.read_sources(spark, dataset)
    assert str(caught.value) == (
        f"events file {tmp_path / 'ev.csv'} has no column 'event_ts' (found: user_id, item_id, event_type, "
        "timestamp, quantity, price); map it with dataset.columns.events.event_ts")


def test_a_mapped_column_is_read_as_the_canonical_one_and_nan_is_quarantined(
        spark: SparkSession, tmp_path: Path) -> None:
    (tmp_path / "ev.csv").write_text(EXPORT.replace("timestamp", "TimeStamp"))  # CSV names: any case
    run = _run(spark, tmp_path, "dataset.columns={events: {event_ts: timestamp}}", events_path=str(tmp_path / "ev.csv"))
    events = sorted((e[C.USER_ID], e[C.EVENT_TS], e[C.PRICE]) for e in run["events"])
    assert events == [("u1", dt.datetime(2025, 3, 1, 10), 2.5), ("u3", dt.datetime(2025, 3, 3, 8), 4.0)]
    assert {key[1:]: row[C.REASON] for key, row in run["quarantine"].items()} == {("ev.csv", 2): "non-finite price"}
    assert _counts(run["log"]) == {("events", "ev.csv"): (3, 2, 1)}


def test_mappings_in_json_parquet_and_delta(spark: SparkSession, tmp_path: Path) -> None:
    # JSON keys exactly, Parquet and Delta names in any case; the mapped name is no attribute.
    (tmp_path / "items.jsonl").write_text('{"sku": "i1", "cost": "2.5", "colour": "red"}\n{"sku": "i2"}\n')
    pq.write_table(pa.table({"Customer": ["c1"], "age": ["30"], "tier": ["gold"]}), tmp_path / "users.parquet")
    spark.createDataFrame([("c2", "f")], "CUSTOMER string, gender string").write.format("delta").save(
        str(tmp_path / "users_delta"))
    items = files.read_path(spark, str(tmp_path / "items.jsonl"), C.ITEMS, {"item_id": "sku", "price": "cost"})
    assert sorted((r[C.ITEM_ID], r[C.PRICE], r[C.ATTRIBUTES]) for r in items.collect()) == [
        ("i1", "2.5", {"colour": "red"}), ("i2", None, {})]
    expected = {"users.parquet": [("c1", "30", {"tier": "gold"})], "users_delta": [("c2", None, {})]}
    for path, rows in expected.items():
        users = files.read_path(spark, str(tmp_path / path), C.USERS, {"user_id": "customer"}).collect()
        assert [(r[C.USER_ID], r.asDict().get(C.AGE), r[C.ATTRIBUTES]) for r in users] == rows, path


@pytest.mark.parametrize("case", ["json key missing in every line", "delta column missing", "mapped name missing",
                                  "mapped and canonical both present"])
def test_column_problems_in_every_format_name_the_file(spark: SparkSession, tmp_path: Path, case: str) -> None:
    if case == "json key missing in every line":
        (tmp_path / "items.jsonl").write_text('{"id": "i1", "price": 2}\n{"id": "i2"}\n')
        path, entity, mapping = tmp_path / "items.jsonl", C.ITEMS, None
        expected = (f"items file {path} has no column 'item_id' (found: id, price); "
                    "map it with dataset.columns.items.item_id")
    elif case == "delta column missing":
        path, entity, mapping = tmp_path / "users", C.USERS, None
        spark.createDataFrame([("c1", "30")], "customer string, age string").write.format("delta").save(str(path))
        expected = (f"users file {path} has no column 'user_id' (found: customer, age); "
                    "map it with dataset.columns.users.user_id")
    elif case == "mapped name missing":
        (tmp_path / "ev.csv").write_text(EXPORT)
        path, entity, mapping = tmp_path / "ev.csv", C.EVENTS, {"event_ts": "time"}
        expected = (f"events file {path} has no column 'time', which dataset.columns.events.event_ts names as its "
                    "event_ts (found: user_id, item_id, event_type, timestamp, quantity, price)")
    else:
        (tmp_path / "ev.csv").write_text(EXPORT.replace("price\n", "event_ts\n", 1))  # header: ...,event_ts
        path, entity, mapping = tmp_path / "ev.csv", C.EVENTS, {"event_ts": "timestamp"}
        expected = (f"events file {path} has both 'timestamp', which dataset.columns.events.event_ts reads as "
                    "event_ts, and a column 'event_ts' itself: drop or rename one")
    with pytest.raises(files.MissingColumnError) as caught:
        files.read_path(spark, str(path), entity, mapping)
    assert str(caught.value) == expected


def test_a_file_whose_every_row_fails_stops_ingest(spark: SparkSession, tmp_path: Path) -> None:
    # Day-first dates Spark cannot parse: every row quarantined used to mean a silent exit 0.
    (tmp_path / "ev.csv").write_text("user_id,item_id,event_type,event_ts\nu1,milk,view,31/12/2024 10:00\n"
                                     "u2,eggs,view,30/12/2024 09:00\n")
    with pytest.raises(RejectedFileError, match=re.escape(
            f"events file {tmp_path / 'ev.csv'}: none of its 2 rows was accepted (unparsable event_ts (2))")):
        _run(spark, tmp_path, events_path=str(tmp_path / "ev.csv"))
    assert not (tmp_path / "lake").exists()


BAD_MAPPINGS = {
    "not a mapping": ("events", "dataset.columns: expected a mapping"),
    "unknown entity": ({"orders": {"user_id": "customer"}},
                       "dataset.columns.orders: unknown entity (known: events, items, users, feedback)"),
    "entity not a mapping": ({"events": ["timestamp"]},
                             "dataset.columns.events: expected a mapping of canonical column"),
    "swapped key and value": ({"events": {"timestamp": "event_ts"}},
                              "dataset.columns.events.timestamp: not a canonical events column (known: event_id, "
                              "user_id, item_id, event_type, event_ts, quantity, price, session_id); the key is the "
                              "canonical name, the value your files' name; did you mean "
                              "dataset.columns.events.event_ts: timestamp?"),
    "value not a name": ({"items": {"price": 3}}, "dataset.columns.items.price: expected the name of a column"),
    "one column for two": ({"users": {"age": "years", "region": "Years"}},
                           "dataset.columns.users: age and region both read the column 'Years'"),
    "another canonical name": ({"events": {"user_id": "item_id"}},
                               "dataset.columns.events.user_id: 'item_id' is the canonical column item_id itself"),
}


@pytest.mark.parametrize("case", list(BAD_MAPPINGS))
def test_a_bad_column_mapping_is_a_config_error_naming_the_key(case: str) -> None:
    columns, message = BAD_MAPPINGS[case]
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        files.column_mapping(columns)


def test_the_mapping_is_checked_before_any_file_is_read(spark: SparkSession, tmp_path: Path) -> None:
    dataset = DatasetConfig(name="files", events_path=str(tmp_path / "missing.csv"), columns={"event": {}})
    with pytest.raises(ConfigError, match="dataset.columns.event: unknown entity"):
        files.read_sources(spark, dataset)
    # A swap of two canonical names is fine: each is mapped.
    assert files.column_mapping({"events": {"user_id": "item_id", "item_id": "user_id"}}) == {
        "events": {"user_id": "item_id", "item_id": "user_id"}}
