"""Repeat profiles: for each example row, the items its user bought in the most baskets before the
row's cut, with per-item repeat numbers (repeatnet's repeat head reads them; so do the served
lists' reasons).

A profile looks at a prefix of its user's history, so a household with 40 training rows has 40
prefixes. Built relationally (each row joined with every (basket, item) pair before it, then
aggregated) that is rows x history pairs through a shuffle. Here each user's pairs and rows meet once
in a grouped pandas function (``cogroup``, buckets of users per call) that computes all of a user's
prefixes together with NumPy, cumulatively over the rows' cuts, a few hundred pairs per household:
Complete Journey's train_baskets 77.8 s -> 47.6 s (results/features-profile-20261202/) -> 47.3 s
with the cumulative prefixes (results/profiles-vectorised-20261204/), the same rows bit for bit. The serving module's one-user Python
(``ServingRows.repeat_profile``) computes the same numbers independently; a property test holds the
two equal.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, IntegerType, StructField, StructType

from recspark import constants as C
from recspark.config import FeaturesConfig

# A repeat-profile cut after every basket: queries and serving rows look at all baskets of their splits.
NO_CUT = 2**31 - 1
_ROW_INPUTS = ("_cut", "_splits")  # what a row tells its profile; not kept
# Buckets of users per shuffle partition, each one call of the profiles' grouped function.
USER_BUCKETS_PER_PARTITION = 16


def basket_steps(sequences: DataFrame) -> DataFrame:
    """(user_id, _bo, _i, _us, _s): each user's distinct (basket, vocabulary-or-not item) pairs, with
    ``_bo`` the basket's ordinal in the user's sequence (1, 2, ... in time order), the latest event
    time and the split. The unit the repeat profiles count in: "bought in n baskets"."""
    steps = sequences.select(C.USER_ID, F.posexplode(F.arrays_zip(
        F.col(C.ITEM_IDX).alias("i"), F.transform(C.EVENT_TS, F.unix_micros).alias("us"),
        F.col(C.SPLIT).alias("s"), F.col(C.SESSION_ID).alias("b"))).alias("_pos", "_st"))
    by_pos = Window.partitionBy(C.USER_ID).orderBy("_pos")
    previous = F.lag(F.col("_st")["b"]).over(by_pos)
    new_basket = F.when(previous.isNull() | (previous != F.col("_st")["b"]), 1).otherwise(0)
    return (steps.withColumn("_new", new_basket)
            .withColumn("_bo", F.sum("_new").over(by_pos.rowsBetween(Window.unboundedPreceding, Window.currentRow)))
            .groupBy(C.USER_ID, "_bo", F.col("_st")["i"].alias("_i"))
            .agg(F.max(F.col("_st")["us"]).alias("_us"), F.first(F.col("_st")["s"]).alias("_s")))


def item_repurchase_rates(steps: DataFrame, config: FeaturesConfig) -> DataFrame:
    """(_i, _rate, _gap): two numbers per vocabulary item over the training period, properties of
    the product that a household's own counts cannot tell at its first purchase.

    ``_rate``: the share of its buyers who bought it in two baskets or more, smoothed towards 1/2 by
    one pseudo-buyer of each kind ((repeat buyers + 1) / (buyers + 2)): milk near 1, a barbecue
    near 0, and an item with few buyers near 1/2.
    ``_gap``: its repurchase cycle, the mean over its repeat buyers of log(1 + their mean days
    between purchases) (null without a repeat buyer): milk a week, detergent a month, so that "12
    days since the last one" means due for one item and early for the other (time-aware item
    weighting). Validation NDCG@10 of repeatnet on Complete Journey: 0.4397 with it, 0.4362
    without (one run each, results/completejourney-20261202-itemgap/)."""
    per_user = (steps.filter((F.col("_s") == C.TRAIN) & (F.col("_i") >= config.first_item_idx))
                .groupBy("_i", C.USER_ID).agg(F.count(F.lit(1)).alias("_n"),
                                              ((F.max("_us") - F.min("_us")) / C.DAY_MICROS).alias("_span")))
    return per_user.groupBy("_i").agg(
        ((F.sum(F.when(F.col("_n") > 1, 1).otherwise(0)) + 1) / (F.count(F.lit(1)) + 2)).alias("_rate"),
        F.avg(F.when(F.col("_n") > 1, F.log1p(F.col("_span") / (F.col("_n") - 1)))).alias("_gap"))


def with_repeat_profile(rows: DataFrame, steps: DataFrame, config: FeaturesConfig) -> DataFrame:
    """Adds ``repeat_items`` and ``repeat_features``: for each row (with ``user_id``; ``_cut``: the
    first basket ordinal not to look at; ``_splits``: the splits it may look at), the
    ``repeat_candidates`` vocabulary items the user bought in the most baskets before the cut (ties:
    the latest basket first, then item_idx), each with REPEAT_FEATURE_COUNT numbers: log(1 + baskets
    with the item), the share of the user's baskets with it, log(1 + baskets since the latest one
    with it), log(1 + days from it to the user's latest event before the cut), log(1 + mean days
    between its purchases) (0 when bought once), the item's repurchase rate and its repurchase cycle
    over all buyers (:func:`item_repurchase_rates`; 0.5 and 0 for an item without buyers in
    training). Point-in-time by construction for the user's own numbers: only baskets before the
    row's cut count; the item's two numbers are one per item over the training period (properties of
    the product, like its learned bias). Rows without such an item get PAD and zeros.
    ``steps``: :func:`basket_steps` of the rows' sequences; ``_cut`` and ``_splits`` are dropped.

    The rows pass whole through the grouped function (their other columns untouched): joining the
    profiles back would compute ``rows`` twice, and building them is most of a table's cost. The
    function's groups are buckets of users (about ``USER_BUCKETS_PER_PARTITION`` per shuffle
    partition), not single users: each group costs Spark and pandas a pair of frames, and a
    household has only a few hundred pairs."""
    size, first = config.repeat_candidates, config.first_item_idx
    rates = item_repurchase_rates(steps, config)
    pairs = (steps.join(F.broadcast(rates), "_i", "left")
             # A new name: rows and pairs often come from one table, and a cogroup of two sides with
             # the same user_id attribute is an ambiguous self-join to Spark's analyser.
             .select(F.col(C.USER_ID).alias("_user"), "_bo", "_i", "_us", "_s",
                     F.coalesce("_rate", F.lit(0.5)).alias("_rate"), F.coalesce("_gap", F.lit(0.0)).alias("_gap")))
    schema = StructType([field for field in rows.schema.fields if field.name not in _ROW_INPUTS]
                        + [StructField(C.REPEAT_ITEMS, ArrayType(IntegerType())),
                           StructField(C.REPEAT_FEATURES, ArrayType(FloatType()))])
    buckets = USER_BUCKETS_PER_PARTITION * int(rows.sparkSession.conf.get("spark.sql.shuffle.partitions"))
    bucket = lambda user: F.pmod(F.xxhash64(user), F.lit(buckets))  # noqa: E731

    def profiles(wanted: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
        return repeat_profiles_of_users(wanted.drop(columns=["_bucket"]), history, size, first)

    return (rows.withColumn("_bucket", bucket(C.USER_ID)).groupBy("_bucket")
            .cogroup(pairs.withColumn("_bucket", bucket("_user")).groupBy("_bucket"))
            .applyInPandas(profiles, schema))


def repeat_profiles_of_users(rows: pd.DataFrame, pairs: pd.DataFrame, size: int, first: int) -> pd.DataFrame:
    """Some users' profiles (see :func:`with_repeat_profile`): ``rows`` (user_id, any columns, _cut,
    _splits) and ``pairs`` (_user, _bo, _i, _us, _s, _rate, _gap; one per basket and item) -> the
    rows without _cut and _splits, plus repeat_items and repeat_features.

    All rows of a user with one set of splits at once (:func:`_profiles`): a row's prefix is every
    pair before its cut, so the per-item counts and extremes are cumulative over the row cuts,
    computed once; a NumPy pass per row over its own prefix cost Complete Journey's features stage
    about a minute."""
    count = C.REPEAT_FEATURE_COUNT
    items_out = np.full((len(rows), size), C.PAD_IDX, dtype=np.int32)
    features_out = np.zeros((len(rows), size * count), dtype=np.float32)
    if len(rows) and len(pairs):
        users_pairs = pairs.groupby("_user", sort=False).indices
        bo, item = pairs["_bo"].to_numpy(np.int64), pairs["_i"].to_numpy(np.int64)
        us, split = pairs["_us"].to_numpy(np.int64), pairs["_s"].to_numpy(object)
        rate, gap = pairs["_rate"].to_numpy(np.float64), pairs["_gap"].to_numpy(np.float64)
        cuts = rows["_cut"].to_numpy(np.int64)
        allowed = [tuple(a) for a in rows["_splits"]]
        for user, at_rows in rows.groupby(C.USER_ID, sort=False).indices.items():
            at_pairs = users_pairs.get(user)
            if at_pairs is None:
                continue
            for splits in {allowed[r] for r in at_rows}:  # rows of a user mostly share one set of splits
                these = at_rows[[allowed[r] == splits for r in at_rows]]
                kept = at_pairs[np.isin(split[at_pairs], splits)]
                if len(kept):
                    items_out[these], features_out[these] = _profiles(
                        cuts[these], bo[kept], item[kept], us[kept], rate[kept], gap[kept], size, first)
    out = rows.drop(columns=list(_ROW_INPUTS))
    # Object columns of 1-D arrays, also when empty: Arrow converts those to array<...>.
    out[C.REPEAT_ITEMS] = pd.Series(list(items_out), index=out.index, dtype=object)
    out[C.REPEAT_FEATURES] = pd.Series(list(features_out), index=out.index, dtype=object)
    return out


def _profiles(cuts: np.ndarray, bo: np.ndarray, item: np.ndarray, us: np.ndarray, rate: np.ndarray,
              gap: np.ndarray, size: int, first: int) -> tuple[np.ndarray, np.ndarray]:
    """The profiles of rows with ``cuts`` over one user's pairs (bo, item, us, rate, gap) of their
    splits -> (items [rows, size], flattened features [rows, size x REPEAT_FEATURE_COUNT]).

    The distinct cuts split the pairs into segments (segment t: the pairs that cut t is the first to
    include); per (segment, item) the basket count and the extremes of basket ordinal and time are
    accumulated over the segments, so that row r reads its prefix's numbers at its cut's index. A
    row's prefix counts every pair for its basket count, latest ordinal and reference time, the
    reserved items included; only vocabulary items are candidates."""
    rows, count = len(cuts), C.REPEAT_FEATURE_COUNT
    items_out = np.full((rows, size), C.PAD_IDX, dtype=np.int32)
    values = np.zeros((rows, size, count), dtype=np.float64)
    cut_values, row_at = np.unique(cuts, return_inverse=True)
    segments = len(cut_values)
    seg = np.searchsorted(cut_values, bo, side="right")  # pairs with bo < cut_values[t] have seg <= t
    inside = seg < segments  # pairs after the last cut: in no prefix
    seg, bo, item, us, rate, gap = seg[inside], bo[inside], item[inside], us[inside], rate[inside], gap[inside]
    if not len(seg):
        return items_out, values.astype(np.float32).reshape(rows, -1)
    # Per segment, over every pair: distinct baskets, the latest ordinal and time; then cumulative.
    baskets_in = np.bincount(np.searchsorted(cut_values, np.unique(bo), side="right"), minlength=segments)
    max_bo = np.full(segments, np.iinfo(np.int64).min)
    np.maximum.at(max_bo, seg, bo)
    max_us = np.full(segments, np.iinfo(np.int64).min)
    np.maximum.at(max_us, seg, us)
    baskets, max_bo, ref = (np.cumsum(baskets_in), np.maximum.accumulate(max_bo), np.maximum.accumulate(max_us))
    keep = item >= first
    if keep.any():
        unique, inverse = np.unique(item[keep], return_inverse=True)
        s_k, bo_k, us_k = seg[keep], bo[keep], us[keep]
        shape = (segments, len(unique))
        nb = np.zeros(shape)
        np.add.at(nb, (s_k, inverse), 1.0)
        lb = np.zeros(shape, dtype=np.int64)
        np.maximum.at(lb, (s_k, inverse), bo_k)
        lu = np.full(shape, np.iinfo(np.int64).min)
        np.maximum.at(lu, (s_k, inverse), us_k)
        fu = np.full(shape, np.iinfo(np.int64).max)
        np.minimum.at(fu, (s_k, inverse), us_k)
        nb, lb = np.cumsum(nb, axis=0)[row_at], np.maximum.accumulate(lb, axis=0)[row_at]
        lu, fu = np.maximum.accumulate(lu, axis=0)[row_at], np.minimum.accumulate(fu, axis=0)[row_at]
        item_rate, item_gap = np.zeros(len(unique)), np.zeros(len(unique))
        item_rate[inverse], item_gap[inverse] = rate[keep], gap[keep]  # one value per item
        # Most baskets first, then the latest basket, then item_idx (columns are in item order);
        # items not in the prefix (nb 0) sort last and are cut below.
        column = np.broadcast_to(np.arange(len(unique)), nb.shape)
        best = np.lexsort((column, -lb, -nb), axis=1)[:, :size]
        take = lambda a: np.take_along_axis(a, best, axis=1)  # noqa: E731
        nb, lb, lu, fu = take(nb), take(lb), take(lu), take(fu)
        listed = nb > 0
        day = float(C.DAY_MICROS)
        row_baskets = baskets[row_at][:, None].astype(np.float64)
        interval = np.zeros(nb.shape)
        repeat = nb > 1
        interval[repeat] = np.log1p((lu[repeat] - fu[repeat]) / day / (nb[repeat] - 1))
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # the unlisted places, zeroed below
            columns = [np.log1p(nb), nb / row_baskets, np.log1p(max_bo[row_at][:, None] + 1 - lb),
                       np.log1p((ref[row_at][:, None] - lu) / day), interval, item_rate[best], item_gap[best]]
        width = best.shape[1]
        values[:, :width] = np.where(listed[..., None], np.stack(columns, axis=-1), 0.0)
        items_out[:, :width] = np.where(listed, unique[best], C.PAD_IDX)
    return items_out, values.astype(np.float32).reshape(rows, -1)
