"""Ingest: raw sources -> bronze Delta tables, with the schema enforced.

A row that breaks the schema is not dropped and does not stop the job: it goes to the ``quarantine``
table with its source file, row number, the raw record as JSON and the reason. Every accepted
event gets a deterministic key, and bronze is written by MERGE on it, so re-running ingest on the
same input adds nothing.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Sequence

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recspark import constants as C
from recspark.config import Config
from recspark.datasets import RawSources
from recspark.utils.delta import merge_into

EVENT_SCHEMA: dict[str, str] = {
    C.EVENT_ID: "string",
    C.USER_ID: "string",
    C.ITEM_ID: "string",
    C.EVENT_TYPE: "string",
    C.EVENT_TS: "timestamp",
    C.QUANTITY: "double",
    C.PRICE: "double",
    C.SESSION_ID: "string",
}
ITEM_SCHEMA: dict[str, str] = {
    C.ITEM_ID: "string",
    C.CATEGORY: "string",
    C.BRAND: "string",
    C.PRICE: "double",
    C.STOCK: "long",
    C.ATTRIBUTES: "map<string,string>",
}
USER_SCHEMA: dict[str, str] = {
    C.USER_ID: "string",
    C.AGE: "string",
    C.GENDER: "string",
    C.REGION: "string",
    C.ATTRIBUTES: "map<string,string>",
}
LINEAGE = (C.SOURCE_FILE, C.SOURCE_ROW)
# A reader may flag rows it could not parse (wrong column count, bad encoding, unreadable file)
# in this column; such rows are quarantined with that reason before any other check.
READ_ERROR = "read_error"
QUARANTINE_COLUMNS = ("entity", C.SOURCE_FILE, C.SOURCE_ROW, C.RAW_RECORD, C.REASON)


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


def _numeric_checks(df: DataFrame, column: str) -> list[tuple[Column, str]]:
    value = F.col(column).cast("string").try_cast("double")
    return [
        (F.col(column).isNotNull() & value.isNull(), f"non-numeric {column}"),
        (value < 0, f"negative {column}"),
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
        C.QUANTITY: F.col(C.QUANTITY).cast("string").try_cast("double"),
        C.PRICE: F.col(C.PRICE).cast("string").try_cast("double"),
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
        C.PRICE: F.col(C.PRICE).cast("string").try_cast("double"),
        C.STOCK: F.col(C.STOCK).cast("string").try_cast("double").cast("long"),
        C.ATTRIBUTES: F.col(C.ATTRIBUTES).cast("map<string,string>"),
    }
    checks = [(_blank(C.ITEM_ID), "missing item_id"), *_numeric_checks(df, C.PRICE), *_numeric_checks(df, C.STOCK)]
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


def with_event_key(events: DataFrame) -> DataFrame:
    """Gives every event a deterministic ``event_id`` where the source has none.

    The key hashes the event's content plus its occurrence number among identical rows of this
    input, so re-ingesting the same file yields the same keys (and MERGE inserts nothing), while two
    genuinely repeated lines of one file (two scans of the same product) both survive.
    """
    content = F.concat_ws("\u001f", *[F.coalesce(F.col(c).cast("string"), F.lit("\u0000"))
                                       for c in EVENT_SCHEMA if c != C.EVENT_ID])
    occurrence = F.row_number().over(Window.partitionBy("_content").orderBy(C.SOURCE_FILE, C.SOURCE_ROW))
    return (
        events.withColumn("_content", F.sha2(content, 256))
        .withColumn("_occurrence", occurrence)
        .withColumn(C.EVENT_ID, F.coalesce(F.col(C.EVENT_ID), F.sha2(F.concat_ws("#", "_content", "_occurrence"), 256)))
        .drop("_content", "_occurrence")
    )


def latest_per_key(df: DataFrame, key: str) -> DataFrame:
    """Keeps one row per key: the last one delivered (by file, then row), as an upsert would."""
    last = Window.partitionBy(key).orderBy(F.col(C.SOURCE_FILE).desc(), F.col(C.SOURCE_ROW).desc())
    return df.withColumn("_n", F.row_number().over(last)).filter("_n = 1").drop("_n")


def with_quarantine_key(quarantined: DataFrame) -> DataFrame:
    key = F.sha2(F.concat_ws("\u001f", "entity", C.SOURCE_FILE, F.col(C.SOURCE_ROW).cast("string"), C.RAW_RECORD), 256)
    return quarantined.withColumn("quarantine_id", key)


def reconcile(validated: Validated) -> DataFrame:
    """Rows read, accepted and quarantined per source file, from one aggregation."""
    bad = F.col(C.REASON).isNotNull().cast("long")
    return (
        validated.checked.groupBy(C.SOURCE_FILE)
        .agg(F.count(F.lit(1)).alias("rows_read"), F.sum(1 - bad).alias("rows_accepted"),
             F.sum(bad).alias("rows_quarantined"))
        .withColumn("entity", F.lit(validated.entity))
    )


def ingest(spark: SparkSession, sources: RawSources, config: Config, run_id: str) -> list[dict]:
    """Validates every source and MERGEs it into bronze.

    Returns one reconciliation row per (entity, source file); the same rows are appended to the
    ``run_log`` table. The only actions are the MERGEs and one small aggregation per entity.
    """
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    floor = dt.datetime.fromisoformat(config.ingest.min_event_ts)
    plan = [
        (C.EVENTS, sources.events, lambda df: validate_events(df, config.ingest.event_types, floor, now), C.EVENT_ID),
        (C.ITEMS, sources.items, validate_items, C.ITEM_ID),
        (C.USERS, sources.users, validate_users, C.USER_ID),
    ]
    log_rows: list[dict] = []
    for entity, raw, validate, key in plan:
        if raw is None:
            continue
        validated = validate(raw).persist()
        accepted = validated.accepted
        if entity == C.EVENTS:
            accepted = with_event_key(accepted).dropDuplicates([C.EVENT_ID])
            metrics = merge_into(spark, accepted, config.table_path(C.BRONZE, entity), [key])
        else:
            metrics = merge_into(spark, latest_per_key(accepted, key), config.table_path(C.BRONZE, entity), [key],
                                 update=True)
        merge_into(spark, with_quarantine_key(validated.quarantined),
                   config.table_path(C.BRONZE, C.QUARANTINE), ["quarantine_id"])
        # One row per source file; MERGE reports its inserts per table, not per file.
        for row in reconcile(validated).collect():
            log_rows.append({**row.asDict(), "table_rows_inserted": metrics["numTargetRowsInserted"]})
        validated.unpersist()
    if log_rows:
        stamp = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        log = spark.createDataFrame([{**row, C.RUN_ID: run_id, "stage": "ingest", "logged_at": stamp}
                                     for row in log_rows], schema=RUN_LOG_SCHEMA)
        log.write.format("delta").mode("append").save(config.table_path(C.BRONZE, C.RUN_LOG))
    return log_rows


RUN_LOG_SCHEMA = (
    "run_id string, stage string, entity string, source_file string, rows_read long, rows_accepted long, "
    "rows_quarantined long, table_rows_inserted long, logged_at timestamp"
)
