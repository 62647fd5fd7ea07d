"""MovieLens-1M reader: checked against the real files, read separately with plain Python."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.datasets import movielens as ml

EVENT_COLUMNS = [C.EVENT_ID, C.USER_ID, C.ITEM_ID, C.EVENT_TYPE, C.EVENT_TS, C.QUANTITY, C.PRICE,
                 C.SESSION_ID, C.SOURCE_FILE, C.SOURCE_ROW]
ITEM_COLUMNS = [C.ITEM_ID, C.CATEGORY, C.BRAND, C.PRICE, C.STOCK, C.ATTRIBUTES, C.SOURCE_FILE, C.SOURCE_ROW]
USER_COLUMNS = [C.USER_ID, C.AGE, C.GENDER, C.REGION, C.ATTRIBUTES, C.SOURCE_FILE, C.SOURCE_ROW]


def python_rows(path: Path) -> list[list[str]]:
    """The data rows of an atomic file, split by plain Python (header dropped)."""
    with open(path, encoding="utf-8", newline="") as handle:
        lines = handle.read().splitlines()
    return [line.split("\t") for line in lines[1:]]


@contextmanager
def small_splits(spark, max_bytes: int):
    """Forces many input splits, so that line numbering must work across split boundaries."""
    key = "spark.sql.files.maxPartitionBytes"
    old = spark.conf.get(key)
    spark.conf.set(key, str(max_bytes))
    try:
        yield
    finally:
        spark.conf.set(key, old)


@pytest.fixture(scope="module")
def files() -> dict[str, list[list[str]]]:
    folder = ml.data_dir()
    return {name: python_rows(folder / name) for name in (ml.INTER_FILE, ml.ITEM_FILE, ml.USER_FILE)}


@pytest.fixture(scope="module")
def events(spark):
    """The events, read once with ~11 splits of the 45 MB file (so that numbering crosses splits) and cached."""
    with small_splits(spark, 4 * 1024 * 1024):
        df = ml.read_sources(spark).events
        assert df.rdd.getNumPartitions() > 5
        df = df.cache()
        df.count()
    yield df
    df.unpersist()


def test_numbered_lines_across_many_splits(spark, tmp_path):
    lines = [f"row {i}\twith, a comma and 'quote\t{i}" for i in range(200)]
    path = tmp_path / "lines.tsv"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))  # CRLF, as in the ML-1M files
    with small_splits(spark, 400):  # ~15 splits, each boundary inside a line
        df = ml.numbered_lines(spark, str(path))
        assert df.rdd.getNumPartitions() > 10
        got = sorted((r["_line_no"], r["_line"]) for r in df.collect())
    assert got == list(enumerate(lines))


def test_read_atomic_keeps_short_rows_and_numbers_data_rows(spark, tmp_path):
    path = tmp_path / "x.inter"
    path.write_text("user_id:token\titem_id:token\trating:float\n"
                    "u1\tA, The (1999)\t5\nu2\tshort row\nu3\tC\t1\n", encoding="utf-8")
    rows = ml.read_atomic(spark, path).orderBy(C.SOURCE_ROW).collect()
    assert [(r.user_id, r.item_id, r.rating, r.source_row) for r in rows] == [
        ("u1", "A, The (1999)", "5", 1), ("u2", "short row", None, 2), ("u3", "C", "1", 3)]
    assert rows[0][C.SOURCE_FILE] == str(path)


def test_events_match_the_file(events, files):
    expected = files[ml.INTER_FILE]
    assert events.columns == EVENT_COLUMNS
    stats = events.agg(
        F.count("*").alias("n"),
        F.min(C.SOURCE_ROW).alias("first"), F.max(C.SOURCE_ROW).alias("last"),
        F.countDistinct(C.SOURCE_ROW).alias("rows"),
        F.countDistinct(C.USER_ID).alias("users"), F.countDistinct(C.ITEM_ID).alias("items"),
        F.min(F.col(C.EVENT_TS).cast("long")).alias("ts_min"),
        F.max(F.col(C.EVENT_TS).cast("long")).alias("ts_max"),
        F.count(F.when(F.col(C.EVENT_TYPE) != ml.RATE, 1)).alias("not_rate"),
        F.count(F.when(F.col(C.QUANTITY).isin("1", "2", "3", "4", "5"), 1)).alias("stars"),
        F.count(F.when(F.col(C.EVENT_TS).endswith("\r"), 1)).alias("cr"),
    ).first()
    assert len(expected) == 1_000_209
    assert stats.n == stats.rows == stats.last == len(expected) and stats.first == 1
    assert stats.users == len({r[0] for r in expected}) == 6_040
    assert stats.items == len({r[1] for r in expected}) == 3_706
    timestamps = [int(r[3]) for r in expected]
    assert (stats.ts_min, stats.ts_max) == (min(timestamps), max(timestamps)) == (956_703_932, 1_046_454_590)
    assert stats.not_rate == 0 and stats.stars == len(expected) and stats.cr == 0

    first = events.where(F.col(C.SOURCE_ROW) == 1).first()
    user, title, rating, ts = expected[0]
    assert (first.user_id, first.item_id, first.quantity, first.event_ts) == (user, title, rating, ts)
    assert (user, title) == ("1m_1", "One Flew Over the Cuckoo's Nest (1975)")
    assert first.source_file.endswith("ml-1m.inter")


def test_event_source_row_is_the_line_number(spark, events, files):
    """A sample spread over the whole file: source_row is the data-row number, across split boundaries."""
    expected = files[ml.INTER_FILE]
    picks = sorted({1, 2, len(expected)} | set(range(1, len(expected) + 1, 9_973)))
    sample = spark.createDataFrame(
        [(n, *expected[n - 1]) for n in picks],
        f"{C.SOURCE_ROW} long, {C.USER_ID} string, {C.ITEM_ID} string, {C.QUANTITY} string, {C.EVENT_TS} string",
    )
    got = events.join(F.broadcast(sample.select(C.SOURCE_ROW)), C.SOURCE_ROW).select(*sample.columns)
    assert got.count() == len(picks)
    assert got.exceptAll(sample).count() == 0


def test_items_match_the_file(spark, events, files):
    expected = files[ml.ITEM_FILE]
    items = ml.read_sources(spark).items
    assert items.columns == ITEM_COLUMNS
    assert items.count() == len(expected) == 3_883
    toy = items.where(F.col(C.SOURCE_ROW) == 1).first()
    assert expected[0] == ["Toy Story (1995)", "Toy Story", "1995", "Animation Children's Comedy"]
    assert toy.item_id == "Toy Story (1995)"
    assert toy.category == "Animation|Children's|Comedy"
    assert toy.attributes == {"release_year": "1995"}
    assert (toy.brand, toy.price, toy.stock) == (None, None, None)
    # UTF-8 titles survive, and every rated film is in the catalogue.
    assert items.where(F.col(C.ITEM_ID) == "Misérables, Les (1995)").count() == 1
    assert events.select(C.ITEM_ID).distinct().join(items, C.ITEM_ID, "left_anti").count() == 0


def test_users_match_the_file(spark, files):
    expected = files[ml.USER_FILE]
    users = ml.read_sources(spark).users
    assert users.columns == USER_COLUMNS
    assert users.count() == len(expected) == 6_040
    rows = {r.source_row: r for r in users.where(F.col(C.SOURCE_ROW).isin(1, 161, 6040)).collect()}
    for n, row in rows.items():
        user_id, age, gender, occupation, zip_code = expected[n - 1]
        assert (row.user_id, row.age, row.gender, row.region) == (user_id, ml.AGE_BRACKETS[age], gender, zip_code)
        assert row.attributes == {"occupation": occupation}
    assert rows[161].region == "98107-2117"  # the full zip code, not coarsened
