"""Silver sessions and bot filtering, as Spark built-ins (no Python UDF, no collect of data).

Sessions: an event without a ``session_id`` gets one from its user's inactivity gaps: ordered by
time (ties by source position), an event starts a new session when it comes more than
``gap_minutes`` after the user's previous session-less event. The n-th such session of a user is
``<user_id>#g<n>`` (deterministic, so a re-run gives the same ids). Events that carry a
``session_id`` from the source (baskets, shop sessions) keep it.

Bots: per user, events per active day (events / distinct calendar days with an event). A user is
a bot when that rate is above ``rate_multiple`` times the ``percentile`` of every user's rate
(exact, by nearest rank: the smallest rate that at least that share of users do not exceed; see
``recspark.pipeline.quantiles``, so a re-run on the same events in other files flags the same
users), or above the absolute cap ``max_events_per_day``; either rule is off when its setting is
None. Bots' events are removed from silver events.
"""
from __future__ import annotations

from typing import Optional

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.pipeline.quantiles import PERCENTILES, exact_percentiles

EVENTS_PER_DAY = "events_per_day"
ACTIVE_DAYS = "active_days"
N_EVENTS = "n_events"


def with_gap_sessions(events: DataFrame, gap_minutes: int) -> DataFrame:
    """Fills missing ``session_id``s from inactivity gaps of more than ``gap_minutes`` per user
    (lag over event_ts, running sum of new-session flags); ``gap_minutes`` <= 0 leaves them null."""
    if gap_minutes <= 0:
        return events
    missing = F.col(C.SESSION_ID).isNull()
    # Session-less events form their own partition per user, so a source session does not split a gap.
    by_user = Window.partitionBy(F.col(C.USER_ID), missing).orderBy(C.EVENT_TS, C.SOURCE_FILE, C.SOURCE_ROW)
    gap_seconds = F.col(C.EVENT_TS).cast("long") - F.lag(F.col(C.EVENT_TS).cast("long")).over(by_user)
    new_session = F.when(gap_seconds.isNull() | (gap_seconds > gap_minutes * 60), 1).otherwise(0)
    return (events.withColumn("_new", new_session)
            .withColumn("_n", F.sum("_new").over(by_user.rowsBetween(Window.unboundedPreceding, Window.currentRow)))
            .withColumn(C.SESSION_ID, F.coalesce(
                F.col(C.SESSION_ID), F.concat(F.col(C.USER_ID), F.lit("#g"), F.col("_n").cast("string"))))
            .drop("_new", "_n"))


def user_event_rates(events: DataFrame) -> DataFrame:
    """Per user: events, active days and events per active day."""
    return (events.groupBy(C.USER_ID)
            .agg(F.count(F.lit(1)).alias(N_EVENTS), F.countDistinct(F.to_date(C.EVENT_TS)).alias(ACTIVE_DAYS))
            .withColumn(EVENTS_PER_DAY, F.col(N_EVENTS) / F.col(ACTIVE_DAYS)))


def find_bots(events: DataFrame, rate_multiple: Optional[float], percentile: float,
              max_events_per_day: Optional[float]) -> DataFrame:
    """Users (with their rates) whose events per active day are far above the rest; see the module."""
    rates = user_event_rates(events)
    is_bot = F.lit(False)
    if rate_multiple is not None:
        threshold = exact_percentiles(rates, EVENTS_PER_DAY, [percentile]).select(
            (F.col(PERCENTILES)[0] * F.lit(rate_multiple)).alias("_threshold"))
        rates = rates.crossJoin(F.broadcast(threshold))  # one row
        is_bot = is_bot | (F.col(EVENTS_PER_DAY) > F.col("_threshold"))
    if max_events_per_day is not None:
        is_bot = is_bot | (F.col(EVENTS_PER_DAY) > F.lit(float(max_events_per_day)))
    return rates.filter(is_bot).select(C.USER_ID, N_EVENTS, ACTIVE_DAYS, EVENTS_PER_DAY)


def filter_bots(events: DataFrame, bots: DataFrame) -> DataFrame:
    """Events of every user not in ``bots``."""
    return events.join(bots.select(C.USER_ID), C.USER_ID, "left_anti")
