"""What users did with the lists they were shown: one row of metrics per recommendations run, gold
``served_metrics``, and the same as a Markdown table in ``reports/<dataset>/served_metrics.md``.

From silver feedback (pseudonymised, each row joined to its run: :mod:`recspark.feedback`), over the
impressions at rank <= K (``feedback.k``) of each run:

- ``impressions``, ``users``: shown (user, item) pairs and the users they were shown to;
- ``ctr_at_k``: impressions with any response but a dismissal (click, cart, purchase, rate) / impressions;
- ``conversion_at_k``: impressions converted (purchase, or a rating on MovieLens) / impressions;
  ``user_conversion_at_k``: users with at least one converted impression / users;
- ``revenue``: quantity x price of the purchases of shown items (null when no purchase has a price);
- ``coverage``: distinct items shown / items in the catalogue (silver items; else the items shown);
- ``rebuy_share`` / ``discovery_share`` among conversions: the user had bought (or rated) the item
  before it was shown (silver events before the impression), or had not.
"""
from __future__ import annotations

from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import Config
from recspark.feedback import CONVERSIONS, DISMISS, IMPRESSION, SERVED
from recspark.utils.delta import merge_into, read_table, table_exists

METRICS = ("impressions", "users", "ctr_at_k", "conversion_at_k", "user_conversion_at_k", "revenue", "coverage",
           "conversions", "rebuy_share", "discovery_share")
SHOWN_AT = "shown_at"


def served_metrics(feedback: DataFrame, events: DataFrame, k: int, catalogue_size: int | None) -> DataFrame:
    """One row per run of ``feedback`` (silver) with :data:`METRICS` and ``k``; ``events`` (silver)
    tell re-buys from discoveries. Runs without impressions at rank <= k get no row."""
    pair = [C.RUN_ID, C.USER_ID, C.ITEM_ID]
    shown = (feedback.filter((F.col(C.RESPONSE) == IMPRESSION) & F.col(SERVED) & (F.col(C.RANK) <= k))
             .groupBy(*pair).agg(F.min(C.EVENT_TS).alias(SHOWN_AT)))
    responses = feedback.filter(F.col(C.RESPONSE) != IMPRESSION).groupBy(*pair).agg(
        F.max((F.col(C.RESPONSE) != DISMISS).cast("int")).alias("_responded"),
        F.max(F.col(C.RESPONSE).isin(*CONVERSIONS).cast("int")).alias("_converted"),
        F.sum(F.when(F.col(C.RESPONSE) == "purchase", F.coalesce(C.QUANTITY, F.lit(1.0)) * F.col(C.PRICE)))
        .alias("_revenue"))
    before = (shown.join(events.filter(F.col(C.EVENT_TYPE).isin(*CONVERSIONS))
                         .select(C.USER_ID, C.ITEM_ID, F.col(C.EVENT_TS).alias("_bought_at")), [C.USER_ID, C.ITEM_ID])
              .filter(F.col("_bought_at") < F.col(SHOWN_AT)).select(*pair).distinct().withColumn("_rebuy", F.lit(1)))
    pairs = (shown.join(responses, pair, "left").join(before, pair, "left")
             .fillna(0, subset=["_responded", "_converted", "_rebuy"]))
    users = pairs.groupBy(C.RUN_ID, C.USER_ID).agg(F.max("_converted").alias("_user_converted"))
    per_run = pairs.groupBy(C.RUN_ID).agg(
        F.count(F.lit(1)).alias("impressions"),
        F.avg("_responded").alias("ctr_at_k"),
        F.avg("_converted").alias("conversion_at_k"),
        F.sum("_revenue").alias("revenue"),
        F.count_distinct(C.ITEM_ID).alias("_items"),
        F.sum("_converted").alias("conversions"),
        F.sum(F.col("_converted") * F.col("_rebuy")).alias("_rebuys"))
    per_user = users.groupBy(C.RUN_ID).agg(F.count(F.lit(1)).alias("users"),
                                           F.avg("_user_converted").alias("user_conversion_at_k"))
    rebuy = F.when(F.col("conversions") > 0, F.col("_rebuys") / F.col("conversions"))
    catalogue = F.lit(catalogue_size) if catalogue_size else F.col("_items")
    return (per_run.join(per_user, C.RUN_ID)
            .select(C.RUN_ID, F.lit(k).alias("k"), "impressions", "users", "ctr_at_k", "conversion_at_k",
                    "user_conversion_at_k", "revenue", (F.col("_items") / catalogue).alias("coverage"),
                    F.col("conversions").cast("long").alias("conversions"), rebuy.alias("rebuy_share"),
                    (1 - rebuy).alias("discovery_share")))


def write_served_metrics(spark: SparkSession, config: Config) -> list[dict]:
    """Computes :func:`served_metrics` from silver feedback and events, MERGEs it into gold
    ``served_metrics`` (a run computed again is updated) and writes the Markdown report. Returns the
    rows (one per run: a few, to the driver)."""
    feedback = read_table(spark, config.table_path(C.SILVER, C.FEEDBACK))
    events = read_table(spark, config.table_path(C.SILVER, C.EVENTS))
    items_path = config.table_path(C.SILVER, C.ITEMS)
    catalogue = read_table(spark, items_path).count() if table_exists(spark, items_path) else None
    path = config.table_path(C.GOLD, C.SERVED_METRICS)
    merge_into(spark, served_metrics(feedback, events, config.feedback.k, catalogue), path, [C.RUN_ID], update=True)
    rows = [row.asDict() for row in read_table(spark, path).orderBy(C.RUN_ID).collect()]
    write_report(rows, config.reports_dir / "served_metrics.md")
    return rows


def _shown(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"


def write_report(rows: list[dict], path: Path) -> Path:
    """The served-list metrics of every run as a Markdown table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ["run", "K", *METRICS]
    lines = ["# Served lists: what users did with them", "",
             "From the feedback on each recommendations run (silver feedback joined to the run's partition); "
             "see recspark/served_metrics.py for the definitions.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([row[C.RUN_ID], str(row["k"]), *[_shown(row[m]) for m in METRICS]]) + " |" for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path
