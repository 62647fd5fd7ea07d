"""Feedback on served lists: impressions and responses in, joined to the run that served them, out as
the next run's events and exclusions.

- **bronze** ``feedback`` (the shop's own user ids, as bronze events): feedback files or the replay
  (:mod:`recspark.loop`) go through the path events take (:mod:`recspark.pipeline.ingest`): every row
  validated, a bad one quarantined with all of its reasons, rows read = accepted + quarantined per
  file in ``run_log``, and a MERGE on a deterministic ``feedback_id`` (from the source, else a hash of
  the content and its occurrence), so a re-run inserts nothing. A row whose ``run_id`` is no run of the
  ``recommendations`` table is quarantined (``run_id not in recommendations``): it cannot be joined.
- **silver** ``feedback``: each row joined to the ``recommendations`` partition of its run on (user,
  item): ``rank`` is the rank the run served the item at (null: the item was not in the user's list,
  e.g. found by search; ``served`` false), with the served score and model version; user ids are then
  pseudonymised exactly as prepare does (:func:`recspark.pipeline.privacy.pseudonymise`), before the
  rows meet silver events. MERGEd on ``feedback_id``, so rows keep their join after their run is pruned.
- **into the next run**: responses become silver events (:func:`response_events`: click -> view,
  cart, purchase, rate; ``event_id`` = ``feedback_id``, so a response the shop also logged as an event
  under the same id is counted once), and dismissed items are kept out of that user's lists for
  ``feedback.dismiss_days`` (:func:`dismissed_items`, read by the score stage).
"""
from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import FEEDBACK_RESPONSES, Config
from recspark.pipeline.ingest import (
    NUMBERED_ROWS, RUN_LOG_SCHEMA, Validated, _blank, _numeric_checks, _parse_timestamp, _split,
    check_some_rows_accepted, first_per_key, reconcile, with_canonical_columns, with_conflicting_ids,
    with_quarantine_key,
)
from recspark.pipeline.privacy import broadcast_key, pseudonym_key, pseudonymise
from recspark.recommendations import GENERATED_AT, MODEL_VERSION
from recspark.schemas import FEEDBACK_SCHEMA
from recspark.utils.delta import append_table, merge_into, read_table, table_exists

IMPRESSION = "impression"
DISMISS = "dismiss"
# What each response is as an event of the next features run (dismissals are no event).
RESPONSE_EVENT_TYPES = {"click": "view", "cart": "cart", "purchase": "purchase", "rate": "rate"}
# Responses that count as a conversion (MovieLens: a rating of a shown film).
CONVERSIONS = ("purchase", "rate")
SERVED = "served"
UNKNOWN_RUN = "run_id not in recommendations"
DUPLICATE_FEEDBACK = "duplicate feedback_id with different content"
# The silver feedback columns, in order.
SILVER_COLUMNS = (C.FEEDBACK_ID, C.USER_ID, C.ITEM_ID, C.RUN_ID, C.RESPONSE, C.EVENT_TS, C.RANK, SERVED, C.SCORE,
                  MODEL_VERSION, GENERATED_AT, C.QUANTITY, C.PRICE, C.SESSION_ID, C.SOURCE_FILE, C.SOURCE_ROW)


def validate_feedback(df: DataFrame, now: dt.datetime) -> Validated:
    """Types the canonical feedback columns and routes each malformed row to quarantine (the events'
    checks, plus: run_id and response required, response one of impression and ``FEEDBACK_RESPONSES``,
    rank a whole number >= 1 when given)."""
    df = with_canonical_columns(df, FEEDBACK_SCHEMA)
    ts = _parse_timestamp(df, C.EVENT_TS)
    response = F.lower(F.trim(F.col(C.RESPONSE).cast("string")))
    rank = F.col(C.RANK).cast("string").try_cast("double")
    text = lambda column: F.nullif(F.trim(F.col(column).cast("string")), F.lit(""))
    typed = {
        C.FEEDBACK_ID: text(C.FEEDBACK_ID),
        C.USER_ID: F.trim(F.col(C.USER_ID).cast("string")),
        C.ITEM_ID: F.trim(F.col(C.ITEM_ID).cast("string")),
        C.RUN_ID: F.trim(F.col(C.RUN_ID).cast("string")),
        C.RESPONSE: response,
        C.EVENT_TS: ts,
        C.RANK: rank.try_cast("int"),
        C.QUANTITY: F.col(C.QUANTITY).cast("string").try_cast("double"),
        C.PRICE: F.col(C.PRICE).cast("string").try_cast("double"),
        C.SESSION_ID: text(C.SESSION_ID),
    }
    allowed = (IMPRESSION, *FEEDBACK_RESPONSES)
    checks = [
        (_blank(C.USER_ID), "missing user_id"),
        (_blank(C.ITEM_ID), "missing item_id"),
        (_blank(C.RUN_ID), "missing run_id"),
        (_blank(C.EVENT_TS), "missing event_ts"),
        (~_blank(C.EVENT_TS) & ts.isNull(), "unparsable event_ts"),
        (ts > F.lit(now), "event_ts in the future"),
        (_blank(C.RESPONSE), "missing response"),
        (~_blank(C.RESPONSE) & ~response.isin(*allowed),
         F.concat(F.lit("unknown response '"), F.col(C.RESPONSE).cast("string"), F.lit("'"))),
        (~_blank(C.RANK) & (rank.isNull() | (rank < 1) | (rank != F.floor(rank))), "rank not a whole number >= 1"),
        *_numeric_checks(df, C.QUANTITY),
        *_numeric_checks(df, C.PRICE),
    ]
    return _split(df, C.FEEDBACK, list(FEEDBACK_SCHEMA), typed, checks)


def _content() -> Column:
    """A hash of every feedback field but the id and the lineage: what "the same row" means."""
    return F.sha2(F.concat_ws("\u001f", *[F.coalesce(F.col(c).cast("string"), F.lit("\u0000"))
                                          for c in FEEDBACK_SCHEMA if c != C.FEEDBACK_ID]), 256)


def check_feedback(validated: Validated, runs: DataFrame | None, bronze: DataFrame | None = None) -> Validated:
    """Keys the accepted rows (``feedback_id`` from the source, else content + occurrence, as events),
    then quarantines a row whose run is not among ``runs`` (one ``run_id`` column: the recommendations
    table's runs; None: there is no such table) and an id delivered before (bronze, else the first
    accepted copy of this input) with other content. Joins and windows only, no collect."""
    columns = validated.checked.columns
    ok = F.col(C.REASON).isNull()
    occurrence = F.row_number().over(Window.partitionBy("_ok", "_content").orderBy(C.SOURCE_FILE, C.SOURCE_ROW))
    df = (validated.checked.withColumn("_content", _content()).withColumn("_ok", ok)
          .withColumn("_occurrence", occurrence)
          .withColumn(C.FEEDBACK_ID, F.when(F.col("_ok"), F.coalesce(
              F.col(C.FEEDBACK_ID), F.sha2(F.concat_ws("#", "_content", "_occurrence"), 256))).otherwise(F.col(C.FEEDBACK_ID))))
    if runs is None:
        df = df.withColumn(C.REASON, F.when(ok, F.lit(UNKNOWN_RUN)).otherwise(F.col(C.REASON)))
    else:
        known = runs.select(F.col(C.RUN_ID).alias("_known_run")).distinct()
        df = (df.join(F.broadcast(known), F.col(C.RUN_ID) == F.col("_known_run"), "left")
              .withColumn(C.REASON, F.when(ok & F.col("_known_run").isNull(), F.lit(UNKNOWN_RUN))
                          .otherwise(F.col(C.REASON))))
    # After the run check: a copy quarantined there cannot be the reference copy.
    df = with_conflicting_ids(df.drop("_content"), C.FEEDBACK_ID, _content, bronze, DUPLICATE_FEEDBACK)
    return Validated(validated.entity, df.select(*columns))


def recommendation_runs(spark: SparkSession, path: str) -> DataFrame | None:
    """The run ids of the recommendations table at ``path`` (None without one). From the partition
    column, so Delta answers it from its log."""
    return read_table(spark, path).select(C.RUN_ID).distinct() if table_exists(spark, path) else None


def ingest_feedback(spark: SparkSession, config: Config, raw: DataFrame, run_id: str) -> list[dict]:
    """Validates ``raw`` (canonical feedback columns with lineage) and MERGEs it into bronze
    ``feedback``; quarantined rows go to bronze ``quarantine``. Returns, and appends to ``run_log``,
    one reconciliation row per source file (read = accepted + quarantined). A file none of whose rows
    is accepted stops it before anything is written (``RejectedFileError``)."""
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    path = config.table_path(C.BRONZE, C.FEEDBACK)
    bronze = read_table(spark, path) if table_exists(spark, path) else None
    validated = check_feedback(validate_feedback(raw, now), recommendation_runs(spark, config.recommendations_path),
                               bronze).persist()
    try:
        counts = [row.asDict() for row in reconcile(validated).collect()]  # one row per source file
        check_some_rows_accepted(validated, counts)
        # Conflicting copies are quarantined by now; the rest of one id are identical: keep one.
        metrics = merge_into(spark, first_per_key(validated.accepted, C.FEEDBACK_ID), path, [C.FEEDBACK_ID])
        merge_into(spark, with_quarantine_key(validated.quarantined), config.table_path(C.BRONZE, C.QUARANTINE),
                   ["quarantine_id"])
    finally:
        validated.unpersist()
    stamp = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    rows = [{**{k: v for k, v in row.items() if k != NUMBERED_ROWS}, "table_rows_inserted": metrics["numTargetRowsInserted"],
             C.RUN_ID: run_id, "stage": "ingest", "logged_at": stamp} for row in counts]
    append_table(spark.createDataFrame(rows, schema=RUN_LOG_SCHEMA), config.table_path(C.BRONZE, C.RUN_LOG))
    return rows


def joined_to_runs(feedback: DataFrame, recommendations: DataFrame) -> DataFrame:
    """``feedback`` (bronze rows, shop user ids) with the served ``rank``, ``served``, ``score``,
    ``model_version`` and ``generated_at`` of the same (run, user, item) in ``recommendations``; a row
    whose item the run did not serve that user keeps its own rank and gets ``served`` false."""
    served = recommendations.select(C.RUN_ID, C.USER_ID, C.ITEM_ID, F.col(C.RANK).alias("_served_rank"), C.SCORE,
                                    MODEL_VERSION, GENERATED_AT)
    return (feedback.join(served, [C.RUN_ID, C.USER_ID, C.ITEM_ID], "left")
            .withColumn(SERVED, F.col("_served_rank").isNotNull())
            .withColumn(C.RANK, F.coalesce(F.col("_served_rank"), F.col(C.RANK)))
            .select(*SILVER_COLUMNS))


def refresh_silver_feedback(spark: SparkSession, config: Config) -> dict:
    """Bronze feedback not yet in silver, joined to its run (:func:`joined_to_runs`) and pseudonymised,
    MERGEd into silver ``feedback``. Returns the rows inserted."""
    bronze = read_table(spark, config.table_path(C.BRONZE, C.FEEDBACK))
    silver_path = config.table_path(C.SILVER, C.FEEDBACK)
    if table_exists(spark, silver_path):
        bronze = bronze.join(read_table(spark, silver_path).select(C.FEEDBACK_ID), C.FEEDBACK_ID, "left_anti")
    key = broadcast_key(pseudonym_key(config.privacy.secret_scope))
    recommendations = read_table(spark, config.recommendations_path)
    rows = joined_to_runs(bronze, recommendations).withColumn(C.USER_ID, pseudonymise(C.USER_ID, key))
    return merge_into(spark, rows, silver_path, [C.FEEDBACK_ID])


def response_events(feedback: DataFrame, items: DataFrame | None = None) -> DataFrame:
    """Silver feedback's responses as silver events (the columns prepare writes): event type by
    ``RESPONSE_EVENT_TYPES``, ``event_id`` = ``feedback_id``, quantity 1 when absent, price the
    catalogue's (``items``) when absent."""
    types = F.create_map(*[F.lit(x) for pair in RESPONSE_EVENT_TYPES.items() for x in pair])
    events = feedback.filter(F.col(C.RESPONSE).isin(*RESPONSE_EVENT_TYPES)).select(
        F.col(C.FEEDBACK_ID).alias(C.EVENT_ID), C.USER_ID, C.ITEM_ID, types[F.col(C.RESPONSE)].alias(C.EVENT_TYPE),
        C.EVENT_TS, C.SESSION_ID, F.coalesce(C.QUANTITY, F.lit(1.0)).alias(C.QUANTITY), C.PRICE,
        C.SOURCE_FILE, C.SOURCE_ROW)
    if items is not None:
        prices = items.select(C.ITEM_ID, F.col(C.PRICE).alias("_catalogue_price"))
        events = (events.join(prices, C.ITEM_ID, "left").withColumn(C.PRICE, F.coalesce(C.PRICE, "_catalogue_price"))
                  .drop("_catalogue_price"))
    return events.select(C.EVENT_ID, C.USER_ID, C.ITEM_ID, C.EVENT_TYPE, C.EVENT_TS, C.SESSION_ID, C.QUANTITY,
                         C.PRICE, C.SOURCE_FILE, C.SOURCE_ROW)


def merge_response_events(spark: SparkSession, config: Config) -> int:
    """Silver feedback's responses MERGEd into silver events on ``event_id`` (a response already
    there, e.g. logged as an event under the same id, is not added twice). Returns the rows inserted."""
    items_path = config.table_path(C.SILVER, C.ITEMS)
    items = read_table(spark, items_path) if table_exists(spark, items_path) else None
    events = response_events(read_table(spark, config.table_path(C.SILVER, C.FEEDBACK)), items)
    return merge_into(spark, events, config.table_path(C.SILVER, C.EVENTS), [C.EVENT_ID])["numTargetRowsInserted"]


def dismissed_items(feedback: DataFrame, as_of: dt.datetime, days: float) -> DataFrame:
    """(user_id, item_id) of the items each user dismissed in the ``days`` before ``as_of`` (0 days:
    none): kept out of their next lists."""
    since = as_of - dt.timedelta(days=days)
    return (feedback.filter((F.col(C.RESPONSE) == DISMISS) & (F.col(C.EVENT_TS) > F.lit(since))
                            & (F.col(C.EVENT_TS) <= F.lit(as_of)) & F.lit(days > 0))
            .select(C.USER_ID, C.ITEM_ID).distinct())


# ignored_lists' columns: when the list was shown (microseconds since the epoch, as a step's "us").
SHOWN_US = "_shown_us"


def ignored_lists(feedback: DataFrame, vocab: DataFrame, k: int) -> DataFrame:
    """(user_id, ``_shown_us``, ``ignored``): per user and recommendations run, when its list was first
    shown and the items of its top ``k`` that drew no response of any kind in that run (no click,
    cart, purchase, rating or dismissal), as indices of ``vocab`` in served rank order (items outside
    it dropped). A training basket takes the latest such list shown before it
    (:func:`recspark.pipeline.features.with_ignored`). Runs whose items all drew a response are kept
    (an empty list): the latest list then replaces an older one's negatives."""
    impressions = feedback.filter((F.col(C.RESPONSE) == IMPRESSION) & F.col(SERVED) & (F.col(C.RANK) <= k))
    answered = (feedback.filter(F.col(C.RESPONSE) != IMPRESSION)
                .select(C.USER_ID, C.RUN_ID, C.ITEM_ID).distinct())
    shown = impressions.groupBy(C.USER_ID, C.RUN_ID).agg(
        F.unix_micros(F.min(C.EVENT_TS)).alias(SHOWN_US))
    ignored = (impressions.join(answered, [C.USER_ID, C.RUN_ID, C.ITEM_ID], "left_anti")
               .join(F.broadcast(vocab.select(C.ITEM_ID, C.ITEM_IDX)), C.ITEM_ID)
               .groupBy(C.USER_ID, C.RUN_ID)
               .agg(F.array_sort(F.collect_set(F.struct(C.RANK, C.ITEM_IDX))).alias("_ranked")))
    items = F.coalesce(F.transform("_ranked", lambda x: x[C.ITEM_IDX]), F.array().cast("array<int>"))
    return (shown.join(ignored, [C.USER_ID, C.RUN_ID], "left")
            .select(C.USER_ID, SHOWN_US, items.alias(C.IGNORED)))


def as_of_time(config: Config) -> dt.datetime:
    """``feedback.as_of`` (naive UTC, as Spark's timestamps here), else now."""
    if config.feedback.as_of:
        return dt.datetime.fromisoformat(config.feedback.as_of).replace(tzinfo=None)
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)


def with_dismissed_excluded(histories: DataFrame, dismissed: DataFrame, vocab: DataFrame,
                            exclude_seen: bool) -> DataFrame:
    """Serving ``histories`` whose ``seen_idx`` (what the scorer excludes when told to) holds each
    user's dismissed items (``dismissed``: user_id, item_id; as indices of ``vocab``), plus what they
    saw when ``exclude_seen``: the scorer is then run with exclusion on, and leaves exactly these out."""
    indices = (dismissed.join(F.broadcast(vocab.select(C.ITEM_ID, C.ITEM_IDX)), C.ITEM_ID)
               .groupBy(C.USER_ID).agg(F.collect_set(C.ITEM_IDX).alias("_dismissed")))
    own = F.col(C.SEEN_IDX) if exclude_seen else F.array().cast("array<int>")
    return (histories.join(indices, C.USER_ID, "left")
            .withColumn(C.SEEN_IDX, F.array_union(own, F.coalesce("_dismissed", F.array().cast("array<int>"))))
            .drop("_dismissed"))


def feedback_used(spark: SparkSession, config: Config) -> dict | None:
    """What feedback a training run reads through its gold tables: silver feedback's Delta version and,
    per recommendations run, its impressions and responses (one small aggregate: a row per run). None
    without silver feedback. Responses reach training as silver events (:func:`merge_response_events`)."""
    from recspark.utils.delta import table_version

    path = config.table_path(C.SILVER, C.FEEDBACK)
    if not table_exists(spark, path):
        return None
    per_run = (read_table(spark, path).groupBy(C.RUN_ID)
               .agg(F.sum((F.col(C.RESPONSE) == IMPRESSION).cast("long")).alias("impressions"),
                    F.sum((F.col(C.RESPONSE) != IMPRESSION).cast("long")).alias("responses"),
                    F.max(C.EVENT_TS).alias("latest"))
               .orderBy(C.RUN_ID).collect())
    return {"table": path, "version": table_version(spark, path),
            "runs": {row[C.RUN_ID]: {"impressions": int(row["impressions"]), "responses": int(row["responses"]),
                                     "latest": str(row["latest"])} for row in per_run}}


# MLflow refuses tag values beyond a few thousand characters: the run list is cut with a marker.
MAX_TAG_CHARS = 4000


def feedback_tags(feedback: dict | None) -> dict[str, str]:
    """MLflow tags of :func:`feedback_used`: the runs whose feedback was used, their responses, the version."""
    if not feedback:
        return {"feedback_runs": "none"}
    runs = ",".join(feedback["runs"])
    return {"feedback_runs": runs if len(runs) <= MAX_TAG_CHARS else runs[:MAX_TAG_CHARS] + "...",
            "feedback_responses": str(sum(run["responses"] for run in feedback["runs"].values())),
            "feedback_impressions": str(sum(run["impressions"] for run in feedback["runs"].values())),
            "feedback_version": str(feedback["version"])}
