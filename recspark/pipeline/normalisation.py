"""Numeric feature normalisation fitted on the training period only, with stored statistics.

Every numeric user and item feature is transformed as ``z = (log1p(max(x, 0)) - mean) / std``,
with mean and std (population) of ``log1p(max(x, 0))`` computed over training-period rows only:

- why log1p: counts (events, sessions, popularity), money (monetary, price) and recency are
  non-negative and heavy-tailed (a few very active users, a few blockbuster items, a few luxury
  prices). Standardising the raw values would let those few set the scale and squash everyone
  else into a sliver around the mean; on the log scale the spread is comparable across features.
- which rows: user_features rows are users with training events (all of them are computed from
  ``split = 'train'`` only); item_features rows with training events (``events_all > 0``), so an
  item first sold in validation or test, and its catalogue price, cannot move the statistics.
- a null value (e.g. a ratio whose denominator is 0, an unknown price) becomes 0 after the
  transform: the training mean. A constant feature (std below 1e-6) or one without any value is
  stored and applied with std 1 (and mean 0 when it has no value): the stored statistics are
  exactly the ones applied.

The statistics are the gold table ``feature_stats`` (``table``, ``feature``, ``transform``,
``mean``, ``std``, ``n_rows``, ``fitted_on``); ``with_feature_vector`` applies them from that
table (read back after the write), so what is stored is what was applied.
"""
from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.pipeline.item_features import ITEM_FEATURES
from recspark.pipeline.user_features import USER_FEATURES

TABLE, FEATURE, TRANSFORM, MEAN, STD, N_ROWS, FITTED_ON = "table", "feature", "transform", "mean", "std", "n_rows", "fitted_on"
LOG1P_STANDARDISE = "log1p_standardise"
# A feature whose log1p spread is below this is constant: the std of equal values can come out as
# 1e-16 from rounding, and dividing by it would turn rounding noise into large values.
MIN_STD = 1e-6

# The fixed order of user_vector and item_vector (models rely on it).
USER_VECTOR_FEATURES = ("recency_days", "n_events", "n_sessions", "monetary")
ITEM_VECTOR = "item_vector"
ITEM_VECTOR_FEATURES = ("price", "events_7d", "events_30d", "events_all", "view_to_cart", "cart_to_purchase")


def log1p_clamped(column: str) -> Column:
    """log1p of the value, negatives clamped to 0 (none are expected: counts, money, days)."""
    return F.log1p(F.greatest(F.col(column).cast("double"), F.lit(0.0)))


def fit_feature_stats(rows: DataFrame, table: str, features: Sequence[str], fitted_on: str) -> DataFrame:
    """One row per feature: mean and std of log1p(x) over ``rows`` (one aggregate; std below
    MIN_STD or undefined -> 1, mean undefined -> 0, so the stored values are the applied ones)."""
    aggregates = []
    for k, name in enumerate(features):
        aggregates += [F.avg(log1p_clamped(name)).alias(f"_m{k}"), F.stddev_pop(log1p_clamped(name)).alias(f"_s{k}"),
                       F.count(name).alias(f"_n{k}")]
    per_feature = [F.struct(F.lit(name).alias(FEATURE),
                            F.coalesce(F.col(f"_m{k}"), F.lit(0.0)).alias(MEAN),
                            F.when(F.col(f"_s{k}") > MIN_STD, F.col(f"_s{k}")).otherwise(F.lit(1.0)).alias(STD),
                            F.col(f"_n{k}").alias(N_ROWS))
                   for k, name in enumerate(features)]
    return (rows.agg(*aggregates)
            .select(F.explode(F.array(*per_feature)).alias("_f"))
            .select(F.lit(table).alias(TABLE), F.col("_f")[FEATURE].alias(FEATURE),
                    F.lit(LOG1P_STANDARDISE).alias(TRANSFORM), F.col("_f")[MEAN].alias(MEAN),
                    F.col("_f")[STD].alias(STD), F.col("_f")[N_ROWS].alias(N_ROWS), F.lit(fitted_on).alias(FITTED_ON)))


def with_feature_vector(df: DataFrame, stats: DataFrame, table: str, features: Sequence[str], vector: str) -> DataFrame:
    """Adds ``vector``: array<float> of the normalised ``features`` in the given order, with the
    statistics of ``table`` in ``stats`` (one tiny aggregate into one row, broadcast)."""
    mine = stats.filter(F.col(TABLE) == table)
    wide = mine.agg(*[F.max(F.when(F.col(FEATURE) == name, F.col(column))).alias(f"_{column}{k}")
                      for k, name in enumerate(features) for column in (MEAN, STD)])
    normalised = [F.coalesce((log1p_clamped(name) - F.col(f"_{MEAN}{k}")) / F.col(f"_{STD}{k}"), F.lit(0.0))
                  for k, name in enumerate(features)]
    return (df.crossJoin(F.broadcast(wide))
            .withColumn(vector, F.array(*normalised).cast("array<float>"))
            .drop(*[f"_{column}{k}" for k in range(len(features)) for column in (MEAN, STD)]))


def fit_user_stats(user_features: DataFrame) -> DataFrame:
    """Statistics of the user vector's features over user_features (users with training events)."""
    return fit_feature_stats(user_features, USER_FEATURES, USER_VECTOR_FEATURES,
                             "split=train: user_features rows (users with training events)")


def fit_item_stats(item_features: DataFrame) -> DataFrame:
    """Statistics of the item vector's features over items with training events."""
    return fit_feature_stats(item_features.filter(F.col("events_all") > 0), ITEM_FEATURES, ITEM_VECTOR_FEATURES,
                             "split=train: item_features rows with training events (events_all > 0)")


def with_user_vector(user_features: DataFrame, stats: DataFrame) -> DataFrame:
    return with_feature_vector(user_features, stats, USER_FEATURES, USER_VECTOR_FEATURES, C.USER_VECTOR)


def with_item_vector(item_features: DataFrame, stats: DataFrame) -> DataFrame:
    return with_feature_vector(item_features, stats, ITEM_FEATURES, ITEM_VECTOR_FEATURES, ITEM_VECTOR)
