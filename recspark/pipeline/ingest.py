"""Ingest: raw sources -> bronze Delta tables, with the schema enforced.

A row that breaks the schema is not dropped and does not stop the job: it goes to the ``quarantine``
table with its source file, row number, the raw record as JSON and the reason. Every accepted
event gets a deterministic key, and bronze is written by MERGE on it, so re-running ingest on the
same input adds nothing. An event id delivered again with other content (in the same input or
against bronze) is quarantined rather than silently dropped; with ``ingest.unknown_items:
quarantine``, so is an event whose item no catalogue knows.

Crash safety comes from Delta: every table write is one atomic commit, so a job killed mid-MERGE
leaves each table at its previous version, and a re-run MERGEs what is missing.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import reduce
from typing import Callable, Sequence

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recspark import constants as C
from recspark.config import Config
from recspark.schemas import EVENT_SCHEMA, ITEM_SCHEMA, LINEAGE, READ_ERROR, REQUIRED_COLUMNS, USER_SCHEMA, RawSources
from recspark.utils.delta import append_table, merge_into, read_table, table_exists

DUPLICATE_EVENT = "duplicate event_id with different content"
UNKNOWN_ITEM = "item_id not in catalogue"
QUARANTINE_COLUMNS = ("entity", C.SOURCE_FILE, C.SOURCE_ROW, C.RAW_RECORD, C.REASON)


class RejectedFileError(ValueError):
    """A source file none of whose rows passed validation: ingest stops before writing anything,
    since such a file is almost always a mismatch (a renamed column, another format), not bad rows."""


@dataclass(frozen=True)
class Validated:
    """One source after validation: typed columns, lineage, the raw record and a reason (null if ok)."""

    entity: str
    checked: DataFrame

    @property
    def accepted(self) -> DataFrame:
        return self.checked.filter(F.col(C.REASON).isNull()).drop(C.RAW_RECORD, C.REASON)

    @property
    def quarantined(self) -> DataFrame:
        return self.checked.filter(F.col(C.REASON).isNotNull()).select(
            F.lit(self.entity).alias("entity"), *LINEAGE, C.RAW_RECORD, C.REASON
        )

    def persist(self) -> "Validated":
        # The source is read once, not once per output (accepted, quarantined, counts).
        return Validated(self.entity, self.checked.persist())

    def unpersist(self) -> None:
        self.checked.unpersist()


def with_canonical_columns(df: DataFrame, schema: dict[str, str]) -> DataFrame:
    """Adds every absent canonical column as null, so that sources may omit optional ones."""
    missing = [F.lit(None).cast(data_type).alias(name) for name, data_type in schema.items() if name not in df.columns]
    return df.select("*", *missing) if missing else df


def _blank(column: str) -> Column:
    return F.col(column).isNull() | (F.trim(F.col(column).cast("string")) == "")


def _parse_timestamp(df: DataFrame, column: str) -> Column:
    """Timestamps arrive as timestamps, ISO strings or epoch seconds; all become UTC timestamps."""
    data_type = df.schema[column].dataType
    if isinstance(data_type, (T.TimestampType, T.TimestampNTZType)):
        return F.col(column).cast("timestamp")
    if isinstance(data_type, T.NumericType):
        return F.timestamp_seconds(F.col(column))
    text = F.trim(F.col(column).cast("string"))
    as_number = text.try_cast("double")
    return F.when(as_number.isNotNull(), F.timestamp_seconds(as_number)).otherwise(F.try_to_timestamp(text))


def _reasons(checks: Sequence[tuple[Column, Column | str]]) -> Column:
    """All failed checks of a row joined by '; ', or null for a good row."""
    messages = [F.when(failed, message if isinstance(message, Column) else F.lit(message)) for failed, message in checks]
    joined = F.concat_ws("; ", *messages)
    return F.when(joined != "", joined)


def _split(df: DataFrame, entity: str, raw_columns: Sequence[str], typed: dict[str, Column],
           checks: Sequence[tuple[Column, Column | str]]) -> Validated:
    raw_record = F.to_json(F.struct(*[F.col(c).cast("string").alias(c) for c in raw_columns]))
    if READ_ERROR in df.columns:
        # The reader's verdict replaces the field checks: a misparsed row's fields mean nothing.
        read_error = F.col(READ_ERROR).isNotNull()
        checks = [(read_error, F.col(READ_ERROR))] + [(~read_error & failed, message) for failed, message in checks]
        if C.RAW_RECORD in df.columns:
            raw_record = F.coalesce(F.col(C.RAW_RECORD), raw_record)
    checked = df.select(
        *[expr.alias(name) for name, expr in typed.items()],
        *LINEAGE,
        raw_record.alias(C.RAW_RECORD),
        _reasons(checks).alias(C.REASON),
    )
    return Validated(entity, checked)


def _number(column: str) -> Column:
    """The field as a double (null when it is no number); NaN and infinities stay as they are."""
    return F.col(column).cast("string").try_cast("double")


def _finite(value: Column) -> Column:
    return ~F.isnan(value) & (F.abs(value) != F.lit(float("inf")))


def _numeric_checks(df: DataFrame, column: str) -> list[tuple[Column, str]]:
    """Not a number; NaN or +-infinity (which would poison every sum they enter); negative."""
    value = _number(column)
    return [
        (F.col(column).isNotNull() & value.isNull(), f"non-numeric {column}"),
        (value.isNotNull() & ~_finite(value), f"non-finite {column}"),
        (_finite(value) & (value < 0), f"negative {column}"),
    ]


def validate_events(df: DataFrame, event_types: Sequence[str], floor: dt.datetime,
                    now: dt.datetime) -> Validated:
    """Types the canonical event columns and routes each malformed row to quarantine."""
    df = with_canonical_columns(df, EVENT_SCHEMA)
    ts = _parse_timestamp(df, C.EVENT_TS)
    event_type = F.lower(F.trim(F.col(C.EVENT_TYPE).cast("string")))
    typed = {
        C.EVENT_ID: F.nullif(F.trim(F.col(C.EVENT_ID).cast("string")), F.lit("")),
        C.USER_ID: F.trim(F.col(C.USER_ID).cast("string")),
        C.ITEM_ID: F.trim(F.col(C.ITEM_ID).cast("string")),
        C.EVENT_TYPE: event_type,
        C.EVENT_TS: ts,
        C.QUANTITY: _number(C.QUANTITY),
        C.PRICE: _number(C.PRICE),
        C.SESSION_ID: F.nullif(F.trim(F.col(C.SESSION_ID).cast("string")), F.lit("")),
    }
    checks = [
        (_blank(C.USER_ID), "missing user_id"),
        (_blank(C.ITEM_ID), "missing item_id"),
        (_blank(C.EVENT_TS), "missing event_ts"),
        (~_blank(C.EVENT_TS) & ts.isNull(), "unparsable event_ts"),
        (ts > F.lit(now), "event_ts in the future"),
        (ts < F.lit(floor), f"event_ts before {floor.date().isoformat()}"),
        (_blank(C.EVENT_TYPE), "missing event_type"),
        (~_blank(C.EVENT_TYPE) & ~event_type.isin(*event_types),
         F.concat(F.lit("unknown event_type '"), F.col(C.EVENT_TYPE).cast("string"), F.lit("'"))),
        *_numeric_checks(df, C.QUANTITY),
        *_numeric_checks(df, C.PRICE),
    ]
    return _split(df, C.EVENTS, list(EVENT_SCHEMA), typed, checks)


def validate_items(df: DataFrame) -> Validated:
    df = with_canonical_columns(df, ITEM_SCHEMA)
    typed = {
        C.ITEM_ID: F.trim(F.col(C.ITEM_ID).cast("string")),
        C.CATEGORY: F.col(C.CATEGORY).cast("string"),
        C.BRAND: F.col(C.BRAND).cast("string"),
        C.PRICE: _number(C.PRICE),
        # try_cast: a NaN or out-of-range stock (quarantined below) must not fail the cast of the whole job.
        C.STOCK: _number(C.STOCK).try_cast("long"),
        C.ATTRIBUTES: F.col(C.ATTRIBUTES).cast("map<string,string>"),
    }
    stock = _number(C.STOCK)
    checks = [(_blank(C.ITEM_ID), "missing item_id"), *_numeric_checks(df, C.PRICE), *_numeric_checks(df, C.STOCK),
              (_finite(stock) & stock.try_cast("long").isNull(), "stock out of range")]
    return _split(df, C.ITEMS, [c for c in ITEM_SCHEMA if c != C.ATTRIBUTES], typed, checks)


def validate_users(df: DataFrame) -> Validated:
    df = with_canonical_columns(df, USER_SCHEMA)
    typed = {
        C.USER_ID: F.trim(F.col(C.USER_ID).cast("string")),
        C.AGE: F.trim(F.col(C.AGE).cast("string")),
        C.GENDER: F.col(C.GENDER).cast("string"),
        C.REGION: F.col(C.REGION).cast("string"),
        C.ATTRIBUTES: F.col(C.ATTRIBUTES).cast("map<string,string>"),
    }
    return _split(df, C.USERS, [c for c in USER_SCHEMA if c != C.ATTRIBUTES], typed, [(_blank(C.USER_ID), "missing user_id")])


def _event_content() -> Column:
    """A hash of every event field but the id and the lineage: what "the same event" means."""
    return F.sha2(F.concat_ws("\u001f", *[F.coalesce(F.col(c).cast("string"), F.lit("\u0000"))
                                          for c in EVENT_SCHEMA if c != C.EVENT_ID]), 256)


def with_event_key(events: DataFrame, eligible: Column | None = None) -> DataFrame:
    """Gives every event a deterministic ``event_id`` where the source has none.

    The key hashes the event's content plus its occurrence number among identical rows of this
    input, so re-ingesting the same file yields the same keys (and MERGE inserts nothing), while two
    genuinely repeated lines of one file (two scans of the same product) both survive. With
    ``eligible``, only those rows get a key and only they are numbered, so that quarantined rows in
    the same frame do not shift the keys of accepted ones.
    """
    eligible = F.lit(True) if eligible is None else eligible
    occurrence = F.row_number().over(Window.partitionBy("_eligible", "_content").orderBy(C.SOURCE_FILE, C.SOURCE_ROW))
    key = F.coalesce(F.col(C.EVENT_ID), F.sha2(F.concat_ws("#", "_content", "_occurrence"), 256))
    return (
        events.withColumn("_content", _event_content())
        .withColumn("_eligible", eligible)
        .withColumn("_occurrence", occurrence)
        .withColumn(C.EVENT_ID, F.when(F.col("_eligible"), key).otherwise(F.col(C.EVENT_ID)))
        .drop("_content", "_eligible", "_occurrence")
    )


def check_events(validated: Validated, catalogue: DataFrame | None = None,
                 bronze_events: DataFrame | None = None) -> Validated:
    """Keys the accepted events, then quarantines what only other rows can reveal.

    - ``item_id not in catalogue``: the item is not among ``catalogue``'s ``item_id`` values (only
      when a catalogue is given and is not empty: without items there is nothing to check against);
    - ``duplicate event_id with different content``: the event's id was delivered before with other
      fields. "Before" is bronze if the id is there, else the first accepted copy of this input by
      (source_file, source_row). Identical copies stay accepted; ingest keeps one of them.

    All of it is joins and windows, computed with the rest of the plan (no collect).
    """
    columns = validated.checked.columns
    df = with_event_key(validated.checked, F.col(C.REASON).isNull())
    if catalogue is not None:
        known = catalogue.select(F.col(C.ITEM_ID).alias("_known_item")).where("_known_item IS NOT NULL").distinct()
        # The size as a one-row join, not a collect: an empty catalogue must not quarantine everything.
        size = catalogue.agg(F.count(F.lit(1)).alias("_catalogue_size"))
        unknown = F.col(C.REASON).isNull() & (F.col("_catalogue_size") > 0) & F.col("_known_item").isNull()
        df = (
            df.join(known, F.col(C.ITEM_ID) == F.col("_known_item"), "left").crossJoin(size)
            .withColumn(C.REASON, F.when(unknown, F.lit(UNKNOWN_ITEM)).otherwise(F.col(C.REASON)))
        )
    # After the catalogue check: a copy quarantined there cannot be the reference copy.
    df = with_conflicting_ids(df, C.EVENT_ID, _event_content, bronze_events, DUPLICATE_EVENT)
    return Validated(validated.entity, df.select(*columns))


def with_conflicting_ids(df: DataFrame, key: str, content: Callable[[], Column], stored: DataFrame | None,
                         reason: str) -> DataFrame:
    """Quarantines (``reason``) each accepted row whose ``key`` was delivered before with other
    ``content()`` (a hash of the row's fields): "before" is ``stored`` (bronze) if the key is there,
    else the first accepted copy of this input by (source_file, source_row). Identical copies stay
    accepted. A window and a join, no collect."""
    ok = F.col(C.REASON).isNull()
    by_id = (Window.partitionBy(key).orderBy(C.SOURCE_FILE, C.SOURCE_ROW)
             .rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing))
    df = (df.withColumn("_content", content())
          .withColumn("_first", F.first(F.when(ok, F.col("_content")), ignorenulls=True).over(by_id)))
    reference = F.col("_first")
    if stored is not None:
        stored = stored.select(F.col(key).alias("_stored_id"), content().alias("_stored"))
        df = df.join(stored, F.col(key) == F.col("_stored_id"), "left")
        reference = F.coalesce(F.col("_stored"), reference)
    conflict = ok & (F.col("_content") != reference)
    return df.withColumn(C.REASON, F.when(conflict, F.lit(reason)).otherwise(F.col(C.REASON)))


def first_per_key(df: DataFrame, key: str) -> DataFrame:
    """Keeps one row per key: the first one delivered (by file, then row)."""
    first = Window.partitionBy(key).orderBy(C.SOURCE_FILE, C.SOURCE_ROW)
    return df.withColumn("_n", F.row_number().over(first)).filter("_n = 1").drop("_n")


def latest_per_key(df: DataFrame, key: str) -> DataFrame:
    """Keeps one row per key: the last one delivered (by file, then row), as an upsert would."""
    last = Window.partitionBy(key).orderBy(F.col(C.SOURCE_FILE).desc(), F.col(C.SOURCE_ROW).desc())
    return df.withColumn("_n", F.row_number().over(last)).filter("_n = 1").drop("_n")


def with_quarantine_key(quarantined: DataFrame) -> DataFrame:
    key = F.sha2(F.concat_ws("\u001f", "entity", C.SOURCE_FILE, F.col(C.SOURCE_ROW).cast("string"), C.RAW_RECORD), 256)
    return quarantined.withColumn("quarantine_id", key)


NUMBERED_ROWS = "_numbered_rows"


def reconcile(validated: Validated) -> DataFrame:
    """Rows read, accepted and quarantined per source file, from one aggregation; ``NUMBERED_ROWS``
    counts the rows with a row number (all but a reader's one row for a file it could not read)."""
    bad = F.col(C.REASON).isNotNull().cast("long")
    return (
        validated.checked.groupBy(C.SOURCE_FILE)
        .agg(F.count(F.lit(1)).alias("rows_read"), F.sum(1 - bad).alias("rows_accepted"),
             F.sum(bad).alias("rows_quarantined"), F.count(C.SOURCE_ROW).alias(NUMBERED_ROWS))
        .withColumn("entity", F.lit(validated.entity))
    )


def check_some_rows_accepted(validated: Validated, counts: Sequence[dict]) -> None:
    """Raises ``RejectedFileError`` for the source files (of ``reconcile``'s ``counts``) with rows of
    which not one was accepted, naming each file and its most frequent reasons.

    A file the reader could not read at all (one row without a row number, ``unreadable file: ...``)
    is not such a file: it stays one quarantine row and the other files load."""
    rejected = sorted(row[C.SOURCE_FILE] for row in counts
                      if row["rows_accepted"] == 0 and row[NUMBERED_ROWS] > 0)
    if not rejected:
        return
    # Only on the way to the error: the reasons of the rejected files' rows (a few groups).
    reasons = (validated.checked.where(F.col(C.SOURCE_FILE).isin(*rejected))
               .groupBy(C.SOURCE_FILE, C.REASON).agg(F.count(F.lit(1)).alias("n")).collect())
    read = {row[C.SOURCE_FILE]: row["rows_read"] for row in counts}
    lines = []
    for file in rejected:
        mine = sorted(((-r["n"], r[C.REASON]) for r in reasons if r[C.SOURCE_FILE] == file))  # most frequent first
        shown = "; ".join(f"{reason} ({-n:,})" for n, reason in mine[:3]) + ("; ..." if len(mine) > 3 else "")
        lines.append(f"{validated.entity} file {file}: none of its {read[file]:,} rows was accepted ({shown})")
    raise RejectedFileError(
        "\n".join(lines) + "\ningest stopped before writing anything: when every row fails, the file usually "
        "does not match the expected columns or format (with dataset.name=files, a column named otherwise "
        f"can be mapped with dataset.columns.{validated.entity}.<canonical name>: <your name>)")


def ingest(spark: SparkSession, sources: RawSources, config: Config, run_id: str) -> list[dict]:
    """Validates every source and MERGEs it into bronze.

    Returns one reconciliation row per (entity, source file); the same rows are appended to the
    ``run_log`` table. The only actions are the MERGEs and one small aggregation per entity. Every
    source is validated and counted before the first MERGE, so a file none of whose rows is accepted
    stops ingest (``RejectedFileError``) with nothing written.
    """
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    floor = dt.datetime.fromisoformat(config.ingest.min_event_ts)
    # Items are validated first: the events check reads their accepted ids as the catalogue, and
    # the cached result is then merged as it is, so the items source is read once.
    validated_items = validate_items(sources.items).persist() if sources.items is not None else None
    events_path = config.table_path(C.BRONZE, C.EVENTS)

    def validate_and_check_events(df: DataFrame) -> Validated:
        catalogue = _catalogue(spark, config, validated_items) if config.ingest.unknown_items == "quarantine" else None
        bronze = read_table(spark, events_path) if table_exists(spark, events_path) else None
        return check_events(validate_events(df, config.ingest.event_types, floor, now), catalogue, bronze).persist()

    plan = [
        (C.EVENTS, sources.events, validate_and_check_events, C.EVENT_ID),
        (C.ITEMS, sources.items, lambda df: validated_items, C.ITEM_ID),
        (C.USERS, sources.users, lambda df: validate_users(df).persist(), C.USER_ID),
    ]
    checked = []
    for entity, raw, validate, key in plan:
        if raw is None:
            continue
        validated = validate(raw)
        counts = [row.asDict() for row in reconcile(validated).collect()]  # one row per source file
        try:
            check_some_rows_accepted(validated, counts)
        except RejectedFileError:
            for earlier, *_ in checked:
                earlier.unpersist()
            validated.unpersist()
            raise
        checked.append((validated, entity, key, counts))
    log_rows: list[dict] = []
    for validated, entity, key, counts in checked:
        accepted = validated.accepted
        if entity == C.EVENTS:
            # Conflicting copies are quarantined by now; the rest of one id are identical: keep one.
            metrics = merge_into(spark, first_per_key(accepted, key), config.table_path(C.BRONZE, entity), [key])
        else:
            metrics = merge_into(spark, latest_per_key(accepted, key), config.table_path(C.BRONZE, entity), [key],
                                 update=True)
        merge_into(spark, with_quarantine_key(validated.quarantined),
                   config.table_path(C.BRONZE, C.QUARANTINE), ["quarantine_id"])
        # One row per source file; MERGE reports its inserts per table, not per file.
        for row in counts:
            row = {name: value for name, value in row.items() if name != NUMBERED_ROWS}
            log_rows.append({**row, "table_rows_inserted": metrics["numTargetRowsInserted"]})
        validated.unpersist()
    if log_rows:
        stamp = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        log = spark.createDataFrame([{**row, C.RUN_ID: run_id, "stage": "ingest", "logged_at": stamp}
                                     for row in log_rows], schema=RUN_LOG_SCHEMA)
        append_table(log, config.table_path(C.BRONZE, C.RUN_LOG))
    return log_rows


def _catalogue(spark: SparkSession, config: Config, items: Validated | None) -> DataFrame | None:
    """The known item ids: this input's accepted items plus bronze items; None if there are neither."""
    parts = [items.accepted.select(C.ITEM_ID)] if items is not None else []
    items_path = config.table_path(C.BRONZE, C.ITEMS)
    if table_exists(spark, items_path):
        parts.append(read_table(spark, items_path).select(C.ITEM_ID))
    return reduce(DataFrame.unionByName, parts) if parts else None


RUN_LOG_SCHEMA = (
    "run_id string, stage string, entity string, source_file string, rows_read long, rows_accepted long, "
    "rows_quarantined long, table_rows_inserted long, logged_at timestamp"
)
