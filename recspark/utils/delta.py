"""Delta Lake writes that make every job re-runnable: MERGE on a key, or overwrite whole tables; and
purging a table's history (VACUUM, log truncation) so that deleted rows are gone for good.

Every table is named by one string, its *reference* (``Config.table_path``): a path (a Delta folder,
locally and by default) or a catalog table ``catalog.schema.table`` (Unity Catalog with
``paths.catalog``). This module is the one place that tells them apart: paths are read with
``load`` / ``DeltaTable.forPath`` and written with ``save``, names with ``spark.table`` /
``DeltaTable.forName`` and ``saveAsTable`` (a managed table, created in its schema on first write).
"""
from __future__ import annotations

import json
import re
from typing import Sequence

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, DataFrameWriter, SparkSession

# catalog.schema.table, as Config.table_path makes them (plain identifiers, no quoting needed).
TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z0-9_]+")


def is_table_name(ref: str) -> bool:
    """True for a catalog table name ``catalog.schema.table``, False for a path."""
    return TABLE_NAME.fullmatch(ref) is not None


def delta_table(spark: SparkSession, ref: str) -> DeltaTable:
    """The DeltaTable of a reference (name or path)."""
    return DeltaTable.forName(spark, ref) if is_table_name(ref) else DeltaTable.forPath(spark, ref)


def table_exists(spark: SparkSession, ref: str) -> bool:
    if is_table_name(ref):
        return spark.catalog.tableExists(ref)
    return DeltaTable.isDeltaTable(spark, ref)


def read_table(spark: SparkSession, ref: str) -> DataFrame:
    if not table_exists(spark, ref):
        raise FileNotFoundError(f"no Delta table {'named' if is_table_name(ref) else 'at'} {ref}: "
                                "run the stage that writes it first")
    return spark.table(ref) if is_table_name(ref) else spark.read.format("delta").load(ref)


def save(writer: DataFrameWriter, ref: str) -> None:
    """``writer`` (format, mode and options set) to the table ``ref``: ``saveAsTable`` for a name
    (its schema created first if missing), ``save`` for a path."""
    if is_table_name(ref):
        writer.saveAsTable(ref)
    else:
        writer.save(ref)


def _ensure_schema(spark: SparkSession, ref: str) -> None:
    """Creates the name's ``catalog.schema`` if it does not exist (no-op for a path): a fresh schema
    in Unity Catalog needs no step outside the pipeline, given the CREATE SCHEMA privilege."""
    if is_table_name(ref):
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {ref.rsplit('.', 1)[0]}")


def overwrite_table(df: DataFrame, ref: str, partition_by: Sequence[str] = ()) -> None:
    """Replaces the table's content (and schema, and partitioning: ``partition_by``) in one atomic
    commit; readers see old or new."""
    _ensure_schema(df.sparkSession, ref)
    writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    save(writer.partitionBy(*partition_by) if partition_by else writer, ref)


def append_table(df: DataFrame, ref: str) -> None:
    """Appends ``df`` to the table (created by the first append)."""
    _ensure_schema(df.sparkSession, ref)
    save(df.write.format("delta").mode("append"), ref)


def replace_rows(df: DataFrame, ref: str, column: str, value: str) -> None:
    """Replaces the rows of the table whose ``column`` equals ``value`` (one run's) by ``df``, every
    other row kept, in one atomic commit (Delta ``replaceWhere``: it checks that every row of ``df``
    matches); creates the table when missing. A re-run of one run's stage thus replaces only its rows."""
    if not table_exists(df.sparkSession, ref):
        overwrite_table(df, ref)
        return
    literal = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    save(df.write.format("delta").mode("overwrite").option("replaceWhere", f"`{column}` = {literal}"), ref)


def merge_into(spark: SparkSession, df: DataFrame, ref: str, keys: Sequence[str], update: bool = False) -> dict:
    """Inserts the rows of ``df`` whose ``keys`` are not yet in the table (and updates the others
    when ``update``). ``df`` must be unique on ``keys``. Returns Delta's operation metrics, so a
    re-run can show that it inserted nothing."""
    if not table_exists(spark, ref):
        # An empty table first, so the first run takes the same MERGE path as every later one.
        _ensure_schema(spark, ref)
        save(df.limit(0).write.format("delta"), ref)
    condition = " AND ".join(f"t.`{key}` <=> s.`{key}`" for key in keys)
    table = delta_table(spark, ref)
    before = table_version(spark, ref)
    merge = table.alias("t").merge(df.alias("s"), condition)
    if update:
        merge = merge.whenMatchedUpdateAll()
    merge.whenNotMatchedInsertAll().execute()
    last = table.history(1).collect()[0]
    names = ("numTargetRowsInserted", "numTargetRowsUpdated")
    # A MERGE that changes nothing commits nothing: the last commit is then an older one.
    if int(last["version"]) == before:
        return dict.fromkeys(names, 0)
    metrics = dict(last["operationMetrics"] or {})
    return {name: int(metrics.get(name, 0)) for name in names}


def table_version(spark: SparkSession, ref: str) -> int:
    return int(delta_table(spark, ref).history(1).collect()[0]["version"])


def row_count(spark: SparkSession, ref: str) -> int:
    """Rows in a Delta table. Delta answers an unfiltered count from the per-file statistics in its
    log (optimizeMetadataOnlyQueries), so this reads no data file."""
    return read_table(spark, ref).count()


def table_location(spark: SparkSession, ref: str) -> str:
    """The folder holding the table's files: the path itself, or a catalog table's location."""
    return delta_table(spark, ref).detail().first()["location"] if is_table_name(ref) else ref


RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"
LISTING_PARALLELISM = "spark.sql.sources.parallelPartitionDiscovery.parallelism"


def vacuum(spark: SparkSession, ref: str, retention_hours: float) -> None:
    """VACUUM with any retention: Delta refuses less than a week unless its safety check is off, so
    the check is turned off for this call only (and restored after).

    VACUUM lists files in as many tasks as the listing parallelism, 10,000 unless set: on a small
    cluster that is a minute of empty tasks per table (50-80 s per tiny table on 2 local cores, 6-12 s
    with 4). Unless the session sets it, it is the cluster's default parallelism for this call."""
    saved = {name: spark.conf.get(name, None) for name in (RETENTION_CHECK, LISTING_PARALLELISM)}
    spark.conf.set(RETENTION_CHECK, "false")
    if saved[LISTING_PARALLELISM] is None:
        spark.conf.set(LISTING_PARALLELISM, str(max(1, spark.sparkContext.defaultParallelism)))
    try:
        delta_table(spark, ref).vacuum(retention_hours)
    finally:
        for name, value in saved.items():
            if value is None:
                spark.conf.unset(name)
            else:
                spark.conf.set(name, value)


def _log_version(name: str) -> int | None:
    """The version a _delta_log file belongs to (00..07.json, 00..07.checkpoint[.n.m].parquet,
    00..07.crc, 00..05.00..07.compacted.json -> the last version it covers); None for others."""
    head = name.lstrip(".").split(".")
    numbers = [part for part in head if part.isdigit() and len(part) == 20]
    return int(numbers[-1]) if numbers else None


def truncate_log(spark: SparkSession, ref: str) -> int:
    """Checkpoints the table at its latest version and deletes every log file of an earlier version
    (commits, checksums, older checkpoints). Returns the number of files deleted.

    Why: each commit's JSON keeps the per-file column statistics (min and max of the first 32
    columns, user ids among them) of the files it added, and the ``.crc`` beside it lists them again;
    VACUUM removes data files, never log files. Delta's own log cleanup does the same as this, but
    only for logs older than ``delta.logRetentionDuration`` (30 days) rounded down to whole days.
    Afterwards the table reads from the checkpoint; its history starts there. A catalog table's log
    is under its location (which Unity Catalog may not let a job write to directly)."""
    jvm = spark._jvm
    latest = table_version(spark, ref)
    path = table_location(spark, ref)
    jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, path).checkpoint()
    log_dir = jvm.org.apache.hadoop.fs.Path(f"{path.rstrip('/')}/_delta_log")
    fs = log_dir.getFileSystem(spark._jsc.hadoopConfiguration())
    # Only below the checkpoint Delta now reads from (never below one it did not write).
    stream = fs.open(jvm.org.apache.hadoop.fs.Path(log_dir, "_last_checkpoint"))
    try:
        checkpointed = int(json.loads(jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8"))["version"])
    finally:
        stream.close()
    if checkpointed != latest:
        raise RuntimeError(f"{path}: checkpoint at version {checkpointed}, latest is {latest}: log not truncated")
    deleted = 0
    for status in fs.listStatus(log_dir):
        file = status.getPath()
        version = _log_version(file.getName())
        if status.isFile() and version is not None and version < checkpointed:
            deleted += int(fs.delete(file, False))
    return deleted


def purge_history(spark: SparkSession, ref: str, retention_hours: float) -> int:
    """Makes deleted rows unrecoverable: VACUUM with ``retention_hours``, and with 0 hours also the
    log truncated to the latest version (``truncate_log``). Time travel to older versions is lost.

    A table with deletion vectors keeps deleted rows in its data files until they are rewritten, so
    those are purged (REORG ... APPLY (PURGE)) first. Returns the log files deleted."""
    properties = delta_table(spark, ref).detail().first()["properties"] or {}
    if properties.get("delta.enableDeletionVectors", "false").lower() == "true":
        spark.sql(f"REORG TABLE {ref if is_table_name(ref) else f'delta.`{ref}`'} APPLY (PURGE)")
    vacuum(spark, ref, retention_hours)
    return truncate_log(spark, ref) if retention_hours == 0 else 0
