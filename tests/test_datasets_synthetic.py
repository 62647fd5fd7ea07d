"""Synthetic shop generator: determinism, shape, and the properties its generative model promises."""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta

import pytest
from pyspark.sql import functions as F
from pyspark.sql.window import Window
from pyspark.testing import assertDataFrameEqual

from recspark import constants as C
from recspark.datasets import synthetic as syn

# assertDataFrameEqual imports pyspark.pandas, which warns unless this is set.
os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")

N_EVENTS, SEED = 20_000, 11
EVENT_COLUMNS = [C.EVENT_ID, C.USER_ID, C.ITEM_ID, C.EVENT_TYPE, C.EVENT_TS, C.QUANTITY, C.PRICE,
                 C.SESSION_ID, C.SOURCE_FILE, C.SOURCE_ROW]


@contextmanager
def confs(spark, **values: str):
    """Temporarily sets Spark SQL settings (keys with "_" for ".")."""
    keys = {key.replace("_", "."): value for key, value in values.items()}
    old = {key: spark.conf.get(key, None) for key in keys}
    for key, value in keys.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in old.items():
            spark.conf.unset(key) if value is None else spark.conf.set(key, value)


@pytest.fixture(scope="module")
def shop(spark):
    sources = syn.read_sources(spark, N_EVENTS, SEED)
    events, items, users = (df.cache() for df in sources)
    yield events, items, users
    for df in (events, items, users):
        df.unpersist()


def test_same_seed_and_size_give_identical_data_whatever_the_partitioning(spark, monkeypatch):
    first = syn.read_sources(spark, 10_000, 5)
    # Other partition counts for spark.range and for shuffles (draws are hashes, not F.rand streams),
    # and ~35 blocks of 64 sessions instead of one for the row offsets: the same rows and numbers.
    monkeypatch.setattr(syn, "_BLOCK_BITS", 6)
    with confs(spark, spark_sql_leafNodeDefaultParallelism="5", spark_sql_shuffle_partitions="3"):
        second = syn.read_sources(spark, 10_000, 5)
        for a, b in zip(first, second):
            assertDataFrameEqual(a, b)
    other_seed = syn.read_sources(spark, 10_000, 6).events
    assert other_seed.select(C.USER_ID, C.ITEM_ID, C.EVENT_TS).exceptAll(
        first.events.select(C.USER_ID, C.ITEM_ID, C.EVENT_TS)).count() > 5_000


def test_schema_labels_and_dense_source_rows(shop):
    events, items, users = shop
    assert events.columns == EVENT_COLUMNS
    assert dict(events.dtypes)[C.EVENT_TS] == "timestamp"
    for df, id_column in ((events, C.EVENT_ID), (items, C.ITEM_ID), (users, C.USER_ID)):
        stats = df.agg(
            F.count("*").alias("n"), F.min(C.SOURCE_ROW).alias("first"), F.max(C.SOURCE_ROW).alias("last"),
            F.countDistinct(C.SOURCE_ROW).alias("rows"), F.countDistinct(id_column).alias("ids"),
            F.count(F.when(~F.col(id_column).startswith(syn.PREFIX), 1)).alias("unlabelled"),
            F.count(F.when(F.col(C.SOURCE_FILE) != f"synthetic://seed={SEED}", 1)).alias("bad_file"),
        ).first()
        assert stats.first == 1 and stats.n == stats.last == stats.rows == stats.ids
        assert stats.unlabelled == 0 and stats.bad_file == 0
    sizes = syn.ShopSizes.for_events(N_EVENTS, syn.ShopParams())
    assert (items.count(), users.count()) == (sizes.n_items, sizes.n_users) == (200, 400)
    assert items.where(~F.col(C.CATEGORY).rlike(r"^dept-\d+/cat-\d+$") | (F.col(C.PRICE) <= 0)
                       | (F.col(C.STOCK) < 0) | F.col(C.BRAND).isNull()).count() == 0
    # Every event's user and item is in the catalogue, at the catalogue's price.
    assert events.join(users, C.USER_ID, "left_anti").count() == 0
    priced = events.join(items.select(C.ITEM_ID, F.col(C.PRICE).alias("list_price")), C.ITEM_ID)
    assert priced.where(F.col(C.PRICE) != F.col("list_price")).count() == 0


def test_size_scales_with_n_events(spark, shop):
    """Total events within 5% of the request (the count is random; its mean is the request)."""
    counts = {N_EVENTS: shop[0].count()}
    for n in (10_000, 50_000):
        counts[n] = syn.read_sources(spark, n, SEED).events.count()
    for n, got in counts.items():
        assert abs(got - n) <= 0.05 * n, (n, got)
    big = syn.ShopSizes.for_events(100_000_000, syn.ShopParams())
    assert (big.n_users, big.n_items, big.n_categories) == (2_000_000, 500_000, 400)


def test_funnel(shop):
    events, _, _ = shop
    by_type = dict(events.groupBy(C.EVENT_TYPE).count().collect())
    views, carts, purchases = by_type[syn.VIEW], by_type[syn.CART], by_type[syn.PURCHASE]
    assert set(by_type) == {syn.VIEW, syn.CART, syn.PURCHASE}
    assert purchases <= carts <= views
    assert 0.08 <= carts / views <= 0.12 and 0.24 <= purchases / carts <= 0.36

    # Every purchase follows a cart, and every cart a view, of the same item in the same session.
    def stage(event_type: str, ts: str):
        return (events.where(F.col(C.EVENT_TYPE) == event_type)
                .select(C.SESSION_ID, C.USER_ID, C.ITEM_ID, F.col(C.EVENT_TS).alias(ts)))
    keys = [C.SESSION_ID, C.USER_ID, C.ITEM_ID]
    for later, earlier in ((syn.PURCHASE, syn.CART), (syn.CART, syn.VIEW)):
        preceded = stage(later, "t").join(stage(earlier, "t0"), keys).where(F.col("t0") < F.col("t"))
        assert stage(later, "t").join(preceded.select(*keys).distinct(), keys, "left_anti").count() == 0
    quantities = events.groupBy(F.col(C.EVENT_TYPE) == syn.VIEW).agg(
        F.count(C.QUANTITY).alias("with_quantity"), F.min(C.QUANTITY).alias("least")).collect()
    for is_view, with_quantity, least in quantities:
        assert with_quantity == 0 if is_view else least >= 1


def test_sessions_and_time(shop):
    events, _, _ = shop
    params = syn.ShopParams()
    per_session = events.groupBy(C.SESSION_ID).agg(F.countDistinct(C.USER_ID).alias("users"))
    assert per_session.where("users != 1").count() == 0
    n_sessions = per_session.count()
    expected = syn.ShopSizes.for_events(N_EVENTS, params).n_sessions
    assert n_sessions == expected  # every session has at least one view
    span = events.agg(F.min(C.EVENT_TS), F.max(C.EVENT_TS)).first()
    end = params.end.replace(tzinfo=None)  # the session time zone is UTC (see session.py)
    assert end - timedelta(days=params.period_days) <= span[0] and span[1] < end
    # source_row follows time within each session, so it can break timestamp ties.
    w = Window.partitionBy(C.SESSION_ID).orderBy(C.SOURCE_ROW)
    previous = events.withColumn("previous_ts", F.lag(C.EVENT_TS).over(w))
    assert previous.where(F.col("previous_ts") >= F.col(C.EVENT_TS)).count() == 0


def test_popularity_skew(shop):
    """Zipf popularity: the top 10% of items get far more than the 10% of views a uniform shop gives."""
    events, items, _ = shop
    views = events.where(F.col(C.EVENT_TYPE) == syn.VIEW)
    counts = views.groupBy(C.ITEM_ID).count()
    top = items.count() // 10
    top_views = counts.orderBy(F.desc("count"), C.ITEM_ID).limit(top).agg(F.sum("count")).first()[0]
    share = top_views / views.count()
    assert share >= 0.3, share


def test_category_affinity(shop):
    """Users with 20+ views spend most of them in one category: far above 1 / n_categories."""
    events, items, _ = shop
    n_categories = items.select(C.CATEGORY).distinct().count()
    per = (events.where(F.col(C.EVENT_TYPE) == syn.VIEW).join(items.select(C.ITEM_ID, C.CATEGORY), C.ITEM_ID)
           .groupBy(C.USER_ID, C.CATEGORY).count()
           .groupBy(C.USER_ID).agg(F.max("count").alias("top"), F.sum("count").alias("total"))
           .where("total >= 20"))
    users, mean_share = per.agg(F.count("*"), F.avg(F.col("top") / F.col("total"))).first()
    assert users >= 100
    assert n_categories == 10 and mean_share >= 0.5, mean_share


def test_repeat_purchases(shop):
    """Staples are bought again: many buyers buy the same item in two or more sessions."""
    events, _, _ = shop
    bought = (events.where(F.col(C.EVENT_TYPE) == syn.PURCHASE).groupBy(C.USER_ID, C.ITEM_ID)
              .agg(F.countDistinct(C.SESSION_ID).alias("sessions")))
    buyers, repeaters = bought.agg(
        F.countDistinct(C.USER_ID), F.countDistinct(F.when(F.col("sessions") >= 2, F.col(C.USER_ID)))).first()
    assert repeaters >= 0.15 * buyers, (repeaters, buyers)
