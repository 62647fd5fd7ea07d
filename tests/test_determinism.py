"""Re-runs are deterministic: the same rows in another file layout give the same silver and gold.

The quantiles behind the bot threshold and the price buckets used to come from ``percentile_approx``,
whose answer depends on the order partitions merge in once there are more than a few thousand values:
20,000 prices are enough for price buckets computed that way to differ between layouts, so the tests
below use that many. Expectations for the exact percentiles are computed here in Python (nearest rank).
"""
from __future__ import annotations

import datetime as dt
import math
import random
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from recspark import constants as C
from recspark.config import Config, load_config
from recspark.datasets import synthetic
from recspark.pipeline.features import build_features
from recspark.pipeline.ingest import validate_events, validate_items, validate_users
from recspark.pipeline.item_features import with_price_bucket
from recspark.pipeline.prepare import BOTS, prepare
from recspark.pipeline.quantiles import PERCENTILES, exact_percentiles
from recspark.pipeline.sessions import find_bots
from recspark.utils.delta import overwrite_table

EXTRA_ITEMS = 20_000
FRACTIONS = (0.01, 0.2, 0.5, 0.9, 0.99, 1.0)


def nearest_rank(values: list[float], p: float) -> float:
    """The smallest value with at least a share p of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p * len(ordered))) - 1]


def layouts(df: DataFrame, *order: str) -> list[DataFrame]:
    """The same rows as read in, in one partition sorted, and in 5 partitions reversed."""
    return [df, df.orderBy(*order).coalesce(1), df.repartition(5).sortWithinPartitions(*[F.desc(c) for c in order])]


def test_exact_percentiles_are_the_nearest_rank_in_every_layout(spark: SparkSession) -> None:
    rng = random.Random(3)
    values = [round(rng.lognormvariate(2, 1), 3) for _ in range(EXTRA_ITEMS)] + [None] * 10
    df = spark.createDataFrame([(i, v) for i, v in enumerate(values)], "i long, v double")
    expected = [nearest_rank([v for v in values if v is not None], p) for p in FRACTIONS]
    for layout in layouts(df, "i"):
        assert exact_percentiles(layout, "v", FRACTIONS).first()[PERCENTILES] == expected


def test_exact_percentiles_of_no_values_are_null(spark: SparkSession) -> None:
    df = spark.createDataFrame([(None,)], "v double")
    assert exact_percentiles(df, "v", [0.5]).first()[PERCENTILES] == [None]


def test_the_bot_threshold_is_the_nearest_rank_not_an_interpolation(spark: SparkSession) -> None:
    # One active day each, so the rates are the event counts 1, 2, 3, 4. The 0.6 percentile by nearest
    # rank is the 3rd value (ceil(0.6 x 4) = 3), 3: with multiple 1 only rate 4 is above it. An
    # interpolated percentile (2.8) would also flag rate 3.
    events = spark.createDataFrame(
        [(f"u{n}", f"2024-01-01 {k:02d}:00:00") for n in range(1, 5) for k in range(n)],
        "user_id string, event_ts string").withColumn(C.EVENT_TS, F.to_timestamp(C.EVENT_TS))
    bots = find_bots(events, rate_multiple=1.0, percentile=0.6, max_events_per_day=None)
    assert [(r[C.USER_ID], r["events_per_day"]) for r in bots.collect()] == [("u4", 4.0)]


def test_price_buckets_are_the_same_in_every_layout(spark: SparkSession) -> None:
    rng = random.Random(4)
    prices = [round(rng.uniform(0.5, 80.0), 2) for _ in range(EXTRA_ITEMS)]
    items = spark.createDataFrame([(f"i{n}", p) for n, p in enumerate(prices)], "item_id string, price double")
    cuts = [nearest_rank(prices, k / 5) for k in range(1, 5)]
    expected = {f"i{n}": sum(cut < p for cut in cuts) for n, p in enumerate(prices)}
    for layout in layouts(items, "item_id"):
        got = {r[C.ITEM_ID]: r["price_bucket"] for r in with_price_bucket(layout, 5).collect()}
        assert got == expected


# --- prepare and features on the same rows in another layout -----------------------------------------

def _rewrite(spark: SparkSession, path: str, *order: str) -> None:
    """The table's rows again, in 5 files, each in reverse order (a different layout, the same rows)."""
    df = spark.read.format("delta").load(path).localCheckpoint()  # read before the overwrite replaces it
    (df.repartition(5).sortWithinPartitions(*[F.desc(c) for c in order])
     .write.format("delta").mode("overwrite").save(path))


def _snapshot(spark: SparkSession, paths: dict[str, str]) -> dict[str, list]:
    return {name: spark.read.format("delta").load(path).collect() for name, path in paths.items()}


@pytest.fixture(scope="module")
def runs(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small synthetic shop plus 20,000 catalogue items, through prepare and features twice: as
    ingested, and after its bronze and silver tables were written back in another layout."""
    root: Path = tmp_path_factory.mktemp("determinism")
    config: Config = load_config(None, [
        "dataset.name=synthetic", f"paths.lakehouse={root}/lakehouse", "features.min_item_count=1",
        "features.max_seq_len=5",
        # The top tenth of users by events per day are bots, so the threshold decides something.
        "prepare.bot_rate_multiple=1.0", "prepare.bot_percentile=0.9",
    ])
    sources = synthetic.read_sources(spark, 2000, 11)
    rng = random.Random(5)
    extra = spark.createDataFrame(
        [(f"extra-{n:05d}", "dept-01/cat-001", round(rng.uniform(0.5, 80.0), 2), "catalogue.csv", n + 1)
         for n in range(EXTRA_ITEMS)],
        "item_id string, category string, price double, source_file string, source_row long")
    # Bronze as ingest types it, written without ingest's MERGEs (which this test is not about).
    now, floor = dt.datetime(2100, 1, 1), dt.datetime(1990, 1, 1)
    bronze = {C.EVENTS: validate_events(sources.events, config.ingest.event_types, floor, now),
              C.ITEMS: validate_items(sources.items.unionByName(extra, allowMissingColumns=True)),
              C.USERS: validate_users(sources.users)}
    for table, validated in bronze.items():
        overwrite_table(validated.accepted, config.table_path(C.BRONZE, table))

    silver = {table: config.table_path(C.SILVER, table) for table in (C.EVENTS, C.ITEMS, C.USERS, BOTS)}
    prepare(spark, config)
    gold = build_features(spark, config)
    first = {"silver": _snapshot(spark, silver), "gold": _snapshot(spark, gold)}

    for table, order in [(C.EVENTS, (C.SOURCE_FILE, C.SOURCE_ROW)), (C.ITEMS, (C.ITEM_ID,)), (C.USERS, (C.USER_ID,))]:
        _rewrite(spark, config.table_path(C.BRONZE, table), *order)
    prepare(spark, config)
    second = {"silver": _snapshot(spark, silver)}
    for table, order in [(C.EVENTS, (C.EVENT_TS, C.USER_ID)), (C.ITEMS, (C.ITEM_ID,)), (C.USERS, (C.USER_ID,))]:
        _rewrite(spark, silver[table], *order)
    build_features(spark, config)
    second["gold"] = _snapshot(spark, gold)
    return {"first": first, "second": second}


def test_the_shop_exercises_bots_and_price_buckets(runs: dict) -> None:
    assert len(runs["first"]["silver"][BOTS]) > 0
    buckets = {row["price_bucket"] for row in runs["first"]["gold"]["item_features"]}
    assert buckets >= {0, 1, 2, 3, 4}


@pytest.mark.parametrize("layer", ["silver", "gold"])
def test_another_layout_gives_identical_tables(runs: dict, layer: str) -> None:
    first, second = runs["first"][layer], runs["second"][layer]
    assert sorted(first) == sorted(second)
    for table in first:
        assert len(first[table]) > 0, table
        # Sorted comparison (row order is no part of a table). Equal values, floating-point ones up to
        # the last bits: sums and means over doubles (feature_stats, interest weights) add up in
        # partition order, which a layout changes by an ulp or so.
        assertDataFrameEqual(second[table], first[table], rtol=1e-12, atol=1e-12)
