"""Exact percentiles from Spark built-ins, the same for any layout of the rows.

``percentile_approx`` merges per-partition sketches in partition order, so the same rows laid out in
other files (a re-ingest, a compaction) can give another answer; ``percentile`` interpolates between
values, and ``percentile_disc`` ranks differently from ``percentile_approx``. What the pipeline
documents is the value ``percentile_approx`` approximates (and returns exactly on small inputs):
the nearest rank, the smallest value v with at least a share p of the values <= v. This computes
that exactly: one row per distinct value with its count, a running count in value order, the first
value whose running count reaches p x n. The window runs in one partition over the distinct values
(one per user or catalogue price), never over events.
"""
from __future__ import annotations

from typing import Sequence

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

PERCENTILES = "_percentiles"


def exact_percentiles(df: DataFrame, column: str, fractions: Sequence[float]) -> DataFrame:
    """One row with ``PERCENTILES``: for each fraction p in order, the smallest non-null value v of
    ``column`` with count(values <= v) >= p x count(values) (nearest rank); nulls are ignored, and an
    input without values gives nulls."""
    counts = (df.select(F.col(column).alias("_v")).where(F.col("_v").isNotNull())
              .groupBy("_v").agg(F.count(F.lit(1)).alias("_n")))
    up_to = Window.orderBy("_v").rowsBetween(Window.unboundedPreceding, Window.currentRow)
    ranked = counts.select("_v", F.sum("_n").over(up_to).alias("_at_most"),
                           F.sum("_n").over(Window.partitionBy()).alias("_total"))
    # p x n in double precision, as percentile_approx computes its target rank.
    reached = lambda p: F.min(F.when(F.col("_at_most") >= F.lit(float(p)) * F.col("_total"), F.col("_v")))
    return ranked.agg(F.array(*[reached(p) for p in fractions]).alias(PERCENTILES))
