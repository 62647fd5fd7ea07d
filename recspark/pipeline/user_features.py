"""Gold ``user_features``: demographics, RFM, event-type counts and time-decayed interest tags.

Everything is computed from the training period only (``split = 'train'`` from ``with_split``), so
no validation or test event leaks into a feature; times are measured back from the end of the
training period (its latest event). Spark built-ins only: no Python UDF, no collect.

- recency_days: days from the user's last training event to the end of the training period.
- n_events, n_sessions: training events and distinct sessions (an event without one is its own).
- monetary: sum of quantity * price over training purchases with a known price (0.0 if none).
- event_type_counts: map event type -> training events.
- interest_tags: the ``top_n`` categories by weight = sum over the user's training events of
  exp(-age_days / half_life_days * ln 2) (an event loses half its weight every half-life), the
  kept weights normalised to sum 1; array<struct<category, weight>>, heaviest first.
- user_vector (added in ``build_features``, see ``recspark.pipeline.normalisation``): array<float>
  of recency_days, n_events, n_sessions, monetary, each log1p-standardised with statistics fitted
  on these training-period rows and stored in gold ``feature_stats``.

The same four values at any other moment (:func:`rfm_before`) come from the gold sequences' steps:
each training example of the feature models sees its user as of the start of its target's basket,
a query as of the end of the periods it conditions on, a serving row as of the end of the data.
"""
from __future__ import annotations

import math

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.pipeline.prepare import UNKNOWN

USER_FEATURES = "user_features"
PURCHASE = "purchase"
TRAINING_END = "_training_end"
SECONDS_PER_DAY = 86_400.0


def filter_train(events: DataFrame) -> DataFrame:
    """The training period's events: the only ones features may see."""
    return events.filter(F.col(C.SPLIT) == C.TRAIN)


def with_training_end(train: DataFrame) -> DataFrame:
    """Adds the end of the training period (its latest event time) to every row: one aggregate,
    broadcast, never a global sort."""
    end = train.agg(F.max(C.EVENT_TS).alias(TRAINING_END))
    return train.crossJoin(F.broadcast(end))


def age_days(ts: str = C.EVENT_TS) -> Column:
    """Days from ``ts`` to the end of the training period (fractional)."""
    return (F.col(TRAINING_END).cast("double") - F.col(ts).cast("double")) / F.lit(SECONDS_PER_DAY)


def purchase_value() -> Column:
    """An event's money: quantity x price of a purchase with a known price (null otherwise, and
    when the quantity is unknown: a sum skips it)."""
    return F.when((F.col(C.EVENT_TYPE) == PURCHASE) & F.col(C.PRICE).isNotNull(), F.col(C.QUANTITY) * F.col(C.PRICE))


def rfm_before(steps: Column, at_us: Column) -> dict[str, Column]:
    """recency_days, n_events, n_sessions and monetary of a user's ``steps`` (array<struct> with
    ``us``: event time in microseconds, ``b``: basket, ``v``: :func:`purchase_value`; the events
    before a moment) as of ``at_us``: what :func:`rfm` computes at the end of the training period,
    at any moment. No steps: 0 events, 0 sessions, 0.0 money and a null recency (normalised to 0,
    the mean)."""
    return rfm_of(latest_us=F.array_max(F.transform(steps, lambda step: step["us"])),
                  n_events=F.size(steps),
                  n_sessions=F.size(F.array_distinct(F.transform(steps, lambda step: step["b"]))),
                  monetary=F.aggregate(steps, F.lit(0.0), lambda total, step: total + F.coalesce(step["v"], F.lit(0.0))),
                  at_us=at_us)


def rfm_of(latest_us: Column, n_events: Column, n_sessions: Column, monetary: Column, at_us: Column) -> dict[str, Column]:
    """The columns :func:`rfm_before` returns, from the aggregates of the steps before a moment
    (however they were computed) and the moment itself."""
    return {"recency_days": (at_us - latest_us).cast("double") / F.lit(C.DAY_MICROS),
            "n_events": n_events.cast("long"),
            "n_sessions": n_sessions.cast("long"),
            "monetary": monetary}


def rfm(train: DataFrame) -> DataFrame:
    """Per user: last event, recency, frequency (events, sessions) and monetary value."""
    return (train.transform(with_training_end)
            .groupBy(C.USER_ID)
            .agg(F.max(C.EVENT_TS).alias("last_event_ts"),
                 F.first(TRAINING_END).alias(TRAINING_END),
                 F.count(F.lit(1)).alias("n_events"),
                 F.countDistinct(F.coalesce(F.col(C.SESSION_ID), F.col(C.EVENT_ID))).alias("n_sessions"),
                 F.coalesce(F.sum(purchase_value()), F.lit(0.0)).alias("monetary"))
            .withColumn("recency_days", age_days("last_event_ts"))
            .drop(TRAINING_END))


def event_type_counts(train: DataFrame) -> DataFrame:
    """Per user: map event type -> number of training events."""
    return (train.groupBy(C.USER_ID, C.EVENT_TYPE).agg(F.count(F.lit(1)).alias("_n"))
            .groupBy(C.USER_ID)
            .agg(F.map_from_entries(F.collect_list(F.struct(C.EVENT_TYPE, "_n"))).alias("event_type_counts")))


def interest_tags(train: DataFrame, items: DataFrame, top_n: int, half_life_days: float) -> DataFrame:
    """Per user: the ``top_n`` categories with time-decayed weights normalised to sum 1."""
    decay = F.exp(-age_days() / F.lit(half_life_days) * F.lit(math.log(2)))
    categories = items.select(C.ITEM_ID, C.CATEGORY)
    per_category = (train.transform(with_training_end)
                    .join(categories, C.ITEM_ID, "left")
                    .withColumn(C.CATEGORY, F.coalesce(F.col(C.CATEGORY), F.lit(UNKNOWN)))
                    .groupBy(C.USER_ID, C.CATEGORY).agg(F.sum(decay).alias("_w")))
    heaviest = Window.partitionBy(C.USER_ID).orderBy(F.col("_w").desc(), F.col(C.CATEGORY))
    top = per_category.withColumn("_rank", F.row_number().over(heaviest)).filter(F.col("_rank") <= top_n)
    tag = lambda t: F.struct(t[C.CATEGORY].alias(C.CATEGORY), (t["_w"] / F.col("_total")).alias("weight"))
    return (top.groupBy(C.USER_ID)
            .agg(F.sort_array(F.collect_list(F.struct("_rank", C.CATEGORY, "_w"))).alias("_tags"),
                 F.sum("_w").alias("_total"))
            .select(C.USER_ID, F.transform("_tags", tag).alias("interest_tags")))


def with_demographics(features: DataFrame, users: DataFrame | None) -> DataFrame:
    """Adds age, gender and region from silver users; "unknown" when the user or value is absent."""
    columns = (C.AGE, C.GENDER, C.REGION)
    if users is not None:
        features = features.join(users.select(C.USER_ID, *columns), C.USER_ID, "left")
    else:
        features = features.select("*", *[F.lit(None).cast("string").alias(c) for c in columns])
    return features.select("*", *[F.coalesce(F.col(c), F.lit(UNKNOWN)).alias(f"_{c}") for c in columns]) \
        .drop(*columns).withColumnsRenamed({f"_{c}": c for c in columns})


def build_user_features(split_events: DataFrame, users: DataFrame | None, items: DataFrame,
                        top_n: int, half_life_days: float) -> DataFrame:
    """One row per user with training events; see the module docstring for every column."""
    train = split_events.transform(filter_train)
    return (rfm(train)
            .join(event_type_counts(train), C.USER_ID)
            .join(interest_tags(train, items, top_n, half_life_days), C.USER_ID, "left")
            .transform(lambda df: with_demographics(df, users))
            .select(C.USER_ID, C.AGE, C.GENDER, C.REGION, "recency_days", "last_event_ts", "n_events",
                    "n_sessions", "monetary", "event_type_counts", "interest_tags"))
