"""The `recommendations` table: one partition per scoring run, a reason per row, bounded retention,
and the items nobody is recommended (out of stock, the configured category rules).

Every scoring run writes its rows under its own ``run_id`` (the table is partitioned by it): a
re-run of the same run replaces only that partition (Delta ``replaceWhere``, one atomic commit), and
earlier runs stay, so that what users did afterwards can be joined to what they were shown. The
latest ``score.keep_runs`` runs (by ``generated_at``) are kept; older ones are deleted.

Reasons are built from the user's own data and item aggregates only, never from another user's
history: a re-buy names the user's own repeat profile ("bought 6 times, last 9 days before your
latest visit": baskets with the item and days from the latest of them to the user's latest event,
as gold ``repeat_features`` holds them); a discovery is "often bought with <item>" when that item is
one of the user's own (their repeat profile) and the two were bought in one basket by at least
:data:`BOUGHT_WITH_MIN_USERS` households (an aggregate over all users' baskets, never one other
person's), the partner bought together most often winning; else "popular in <category>" when it is
among the most bought of its category in training (an aggregate over all users), else a plain reason.
"""
from __future__ import annotations

import datetime as dt
from typing import Sequence

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.pipeline.user_features import PURCHASE
from recspark.utils.delta import delta_table, overwrite_table, read_table, replace_rows, table_exists

MODEL_VERSION = "model_version"
GENERATED_AT = "generated_at"
# The table's columns, in order; partitioned by run_id.
COLUMNS = (C.USER_ID, C.RANK, C.ITEM_ID, C.SCORE, C.CONFIDENCE, C.REASON, C.RUN_ID, C.MODEL_NAME, MODEL_VERSION,
           GENERATED_AT)
# An item is "popular in <category>" when it is among this many of its category with the most training events.
POPULAR_IN_CATEGORY = 10
PLAIN_REASON = "picked for you from your recent activity"
# "often bought with" needs this many distinct households that bought the two items in one basket: a
# pair from fewer would describe a handful of other people's baskets rather than a pattern.
BOUGHT_WITH_MIN_USERS = 5
_BASKET, _WITH, _WITH_ID = "_basket", "_with", "_bought_with"
# Where the two numbers a reason quotes sit among an item's REPEAT_FEATURE_COUNT repeat features
# (recspark.pipeline.repeat_profiles.with_repeat_profile): log(1 + baskets with it), log(1 + days from the
# latest of them to the user's latest event).
_BASKETS, _DAYS_BEFORE_LATEST = 0, 3


def repeat_reason(item_idx: Column, repeat_items: Column, repeat_features: Column) -> Column:
    """"bought 6 times, last 9 days before your latest visit" when ``item_idx`` is in the row's own
    repeat profile, else null."""
    position = F.array_position(repeat_items, item_idx)  # 1-based; 0 when absent

    def feature(offset: int) -> Column:
        value = F.element_at(repeat_features, ((position - 1) * C.REPEAT_FEATURE_COUNT + offset + 1).cast("int"))
        return F.round(F.expm1(value)).cast("long")  # the features are log(1 + count)

    times, days = feature(_BASKETS), feature(_DAYS_BEFORE_LATEST)
    times_text = F.when(times == 1, F.lit("once")).otherwise(F.concat(times.cast("string"), F.lit(" times")))
    when_text = (F.when(days == 0, F.lit("on your latest visit"))
                 .when(days == 1, F.lit("1 day before your latest visit"))
                 .otherwise(F.concat(days.cast("string"), F.lit(" days before your latest visit"))))
    text = F.concat(F.lit("bought "), times_text, F.when(times == 1, F.lit(", ")).otherwise(F.lit(", last ")), when_text)
    return F.when(position > 0, text)


def popular_items(item_features: DataFrame, first_item: int, top: int = POPULAR_IN_CATEGORY) -> DataFrame:
    """(item_idx, _popular_in): the category of each item that is among the ``top`` of its known
    category by training events (gold item_features ``events_all``): one row per catalogue item in,
    an aggregate over all users, nobody's own history."""
    best_first = Window.partitionBy(C.CATEGORY).orderBy(F.col("events_all").desc(), C.ITEM_IDX)
    return (item_features.filter((F.col(C.ITEM_IDX) >= first_item) & (F.col("events_all") > 0)
                                 & F.col(C.CATEGORY).isNotNull() & (F.col(C.CATEGORY) != "unknown"))
            .select(C.ITEM_IDX, C.CATEGORY, "events_all")
            .dropDuplicates([C.ITEM_IDX])
            .withColumn("_rank", F.row_number().over(best_first))
            .filter(F.col("_rank") <= top)
            .select(C.ITEM_IDX, F.col(C.CATEGORY).alias("_popular_in")))


def basket_items(sequences: DataFrame, first_item: int) -> DataFrame:
    """(user_id, _basket, item_idx): each purchase basket's distinct vocabulary items, from gold
    ``sequences`` (the session is the basket)."""
    steps = sequences.select(C.USER_ID, F.explode(F.arrays_zip(
        F.col(C.ITEM_IDX).alias("i"), F.col(C.EVENT_TYPE).alias("t"), F.col(C.SESSION_ID).alias("b"))).alias("_st"))
    return (steps.filter((F.col("_st.t") == PURCHASE) & (F.col("_st.i") >= first_item) & F.col("_st.b").isNotNull())
            .select(C.USER_ID, F.col("_st.b").alias(_BASKET), F.col("_st.i").alias(C.ITEM_IDX)).distinct())


def bought_with(top: DataFrame, baskets: DataFrame, vocab: DataFrame, first_item: int,
                min_users: int = BOUGHT_WITH_MIN_USERS) -> DataFrame:
    """(user_id, item_idx, _bought_with): for each discovery of ``top`` (an item not in the row's own
    ``repeat_items``), the item_id of the user's own item it was bought with in the most baskets, over
    pairs bought together by at least ``min_users`` households (``baskets``: :func:`basket_items`).
    Only baskets holding a recommended item are paired, so the work follows the lists, not the catalogue."""
    discoveries = top.filter(~F.array_contains(C.REPEAT_ITEMS, F.col(C.ITEM_IDX)))
    own = (discoveries.select(C.USER_ID, C.ITEM_IDX, F.explode(C.REPEAT_ITEMS).alias(_WITH))
           .filter(F.col(_WITH) >= first_item))
    with_recommended = baskets.join(discoveries.select(C.ITEM_IDX).distinct(), C.ITEM_IDX, "left_semi")
    partners = baskets.select(C.USER_ID, _BASKET, F.col(C.ITEM_IDX).alias(_WITH))
    together = (with_recommended.join(partners, [C.USER_ID, _BASKET]).filter(F.col(C.ITEM_IDX) != F.col(_WITH))
                .groupBy(C.ITEM_IDX, _WITH)
                .agg(F.count_distinct(C.USER_ID).alias("_users"), F.count(F.lit(1)).alias("_baskets"))
                .filter(F.col("_users") >= min_users))
    best_first = Window.partitionBy(C.USER_ID, C.ITEM_IDX).orderBy(F.col("_baskets").desc(), _WITH)
    best = (own.join(together, [C.ITEM_IDX, _WITH]).withColumn("_n", F.row_number().over(best_first))
            .filter(F.col("_n") == 1))
    ids = vocab.select(F.col(C.ITEM_IDX).alias(_WITH), F.col(C.ITEM_ID).alias(_WITH_ID))
    return best.join(ids, _WITH).select(C.USER_ID, C.ITEM_IDX, _WITH_ID)


def with_reasons(top: DataFrame, popular: DataFrame | None = None, together: DataFrame | None = None) -> DataFrame:
    """Adds ``reason`` to ``top`` (rows with user_id, item_idx and the user's own ``repeat_items`` /
    ``repeat_features``, which it drops): the re-buy reason, else "often bought with <item>"
    (``together``: :func:`bought_with`), else "popular in <category>" (``popular``:
    :func:`popular_items`), else :data:`PLAIN_REASON`."""
    fallback: Column = F.lit(PLAIN_REASON)
    if popular is not None:
        top = top.join(popular, C.ITEM_IDX, "left")
        fallback = F.coalesce(F.concat(F.lit("popular in "), F.col("_popular_in")), fallback)
    if together is not None:
        top = top.join(together, [C.USER_ID, C.ITEM_IDX], "left")
        fallback = F.coalesce(F.concat(F.lit("often bought with "), F.col(_WITH_ID)), fallback)
    reason = fallback
    if {C.REPEAT_ITEMS, C.REPEAT_FEATURES} <= set(top.columns):
        reason = F.coalesce(repeat_reason(F.col(C.ITEM_IDX), F.col(C.REPEAT_ITEMS), F.col(C.REPEAT_FEATURES)), fallback)
    return top.withColumn(C.REASON, reason).drop(C.REPEAT_ITEMS, C.REPEAT_FEATURES, "_popular_in", _WITH_ID)


def blocked_items(item_features: DataFrame, first_item: int, exclude_categories: Sequence[str] = (),
                  include_categories: Sequence[str] = ()) -> dict[str, list[int]]:
    """item_idx of the vocabulary items nobody is recommended, by rule: ``out of stock`` (stock known
    to be 0; a null stock is unknown and allowed) and ``category rules`` (in ``exclude_categories``,
    or, when ``include_categories`` is given, outside it). One int per such item to the driver,
    shipped with the scorer as a bit mask."""
    rules: dict[str, Column] = {}
    if C.STOCK in item_features.columns:
        rules["out of stock"] = F.col(C.STOCK) == 0
    category = F.coalesce(F.col(C.CATEGORY), F.lit(""))
    category_rule = F.lit(False)
    if exclude_categories:
        category_rule = category_rule | category.isin(list(exclude_categories))
    if include_categories:
        category_rule = category_rule | ~category.isin(list(include_categories))
    if exclude_categories or include_categories:
        rules["category rules"] = category_rule
    if not rules:
        return {}
    vocabulary = item_features.filter(F.col(C.ITEM_IDX) >= first_item)
    flags = vocabulary.select(C.ITEM_IDX, *[F.coalesce(rule, F.lit(False)).alias(f"_r{i}")
                                            for i, rule in enumerate(rules.values())])
    hit = flags.filter(F.greatest(*[F.col(f"_r{i}") for i in range(len(rules))]) if len(rules) > 1
                       else F.col("_r0")).collect()
    return {name: sorted({int(row[C.ITEM_IDX]) for row in hit if row[f"_r{i}"]}) for i, name in enumerate(rules)}


def write_run(df: DataFrame, path: str, run_id: str, keep_runs: int) -> dict:
    """Writes ``df`` (the :data:`COLUMNS`, every row of run ``run_id``) as that run's partition of the
    table at ``path``: replaces the run's earlier rows if any, keeps every other run, then deletes
    all but the latest ``keep_runs`` runs (0: none). A table in the older layout (not partitioned by
    run, without reason / model_version / generated_at) is rewritten once in the new one, its rows kept
    with nulls in the new columns. Returns which runs were deleted."""
    spark: SparkSession = df.sparkSession
    df = df.select(*COLUMNS)
    if not table_exists(spark, path):
        overwrite_table(df, path, partition_by=[C.RUN_ID])
    else:
        detail = delta_table(spark, path).detail().collect()[0]
        current = read_table(spark, path)
        if list(detail["partitionColumns"]) == [C.RUN_ID] and set(COLUMNS) <= set(current.columns):
            # Only this run's files are replaced; Delta checks every written row matches the predicate.
            replace_rows(df, path, C.RUN_ID, run_id)
        else:
            kept = current.filter(F.col(C.RUN_ID) != run_id).select(
                *[F.col(name) if name in current.columns else F.lit(None).cast(df.schema[name].dataType).alias(name)
                  for name in COLUMNS])
            # Delta reads the snapshot before this commit, so the table may be overwritten from itself.
            overwrite_table(kept.unionByName(df), path, partition_by=[C.RUN_ID])
    return {"deleted_runs": prune_runs(spark, path, keep_runs)}


def prune_runs(spark: SparkSession, path: str, keep_runs: int) -> list[str]:
    """Deletes every run but the latest ``keep_runs`` (by their latest generated_at; a run without one
    counts as oldest); 0 keeps all. One small aggregate (a row per run) to the driver."""
    if keep_runs <= 0:
        return []
    runs = (read_table(spark, path).groupBy(C.RUN_ID).agg(F.max(GENERATED_AT).alias("_at"))
            .orderBy(F.col("_at").desc_nulls_last(), F.col(C.RUN_ID).desc()).collect())
    old = [row[C.RUN_ID] for row in runs[keep_runs:]]
    if old:
        delta_table(spark, path).delete(F.col(C.RUN_ID).isin(old))
    return old


def recommendation_rows(top: DataFrame, vocab: DataFrame, *, run_id: str, model_name: str,
                        model_version: str | None, generated_at: dt.datetime) -> DataFrame:
    """``top`` (user_id, rank, item_idx, score, confidence, reason) with item_id and the run's columns."""
    return (top.join(F.broadcast(vocab.select(C.ITEM_ID, C.ITEM_IDX)), C.ITEM_IDX)
            .select(C.USER_ID, C.RANK, C.ITEM_ID, C.SCORE, C.CONFIDENCE, C.REASON,
                    F.lit(run_id).alias(C.RUN_ID), F.lit(model_name).alias(C.MODEL_NAME),
                    F.lit(model_version).cast("string").alias(MODEL_VERSION),
                    F.lit(generated_at).cast("timestamp").alias(GENERATED_AT)))
