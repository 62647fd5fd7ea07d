"""Delta Lake writes that make every job re-runnable: MERGE on a key, or overwrite whole tables; and
purging a table's history (VACUUM, log truncation) so that deleted rows are gone for good."""
from __future__ import annotations

import json
from typing import Sequence

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession


def table_exists(spark: SparkSession, path: str) -> bool:
    return DeltaTable.isDeltaTable(spark, path)


def read_table(spark: SparkSession, path: str) -> DataFrame:
    if not DeltaTable.isDeltaTable(spark, path):
        raise FileNotFoundError(f"no Delta table at {path}: run the stage that writes it first")
    return spark.read.format("delta").load(path)


def overwrite_table(df: DataFrame, path: str) -> None:
    """Replaces the table's content (and schema) in one atomic commit; readers see old or new."""
    df.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path)


def merge_into(spark: SparkSession, df: DataFrame, path: str, keys: Sequence[str], update: bool = False) -> dict:
    """Inserts the rows of ``df`` whose ``keys`` are not yet in the table (and updates the others
    when ``update``). ``df`` must be unique on ``keys``. Returns Delta's operation metrics, so a
    re-run can show that it inserted nothing."""
    if not DeltaTable.isDeltaTable(spark, path):
        # An empty table first, so the first run takes the same MERGE path as every later one.
        df.limit(0).write.format("delta").save(path)
    condition = " AND ".join(f"t.`{key}` <=> s.`{key}`" for key in keys)
    table = DeltaTable.forPath(spark, path)
    before = table_version(spark, path)
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


def table_version(spark: SparkSession, path: str) -> int:
    return int(DeltaTable.forPath(spark, path).history(1).collect()[0]["version"])


def row_count(spark: SparkSession, path: str) -> int:
    """Rows in a Delta table. Delta answers an unfiltered count from the per-file statistics in its
    log (optimizeMetadataOnlyQueries), so this reads no data file."""
    return spark.read.format("delta").load(path).count()


RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"
LISTING_PARALLELISM = "spark.sql.sources.parallelPartitionDiscovery.parallelism"


def vacuum(spark: SparkSession, path: str, retention_hours: float) -> None:
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
        DeltaTable.forPath(spark, path).vacuum(retention_hours)
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


def truncate_log(spark: SparkSession, path: str) -> int:
    """Checkpoints the table at its latest version and deletes every log file of an earlier version
    (commits, checksums, older checkpoints). Returns the number of files deleted.

    Why: each commit's JSON keeps the per-file column statistics (min and max of the first 32
    columns, user ids among them) of the files it added, and the ``.crc`` beside it lists them again;
    VACUUM removes data files, never log files. Delta's own log cleanup does the same as this, but
    only for logs older than ``delta.logRetentionDuration`` (30 days) rounded down to whole days.
    Afterwards the table reads from the checkpoint; its history starts there."""
    jvm = spark._jvm
    latest = table_version(spark, path)
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


def purge_history(spark: SparkSession, path: str, retention_hours: float) -> int:
    """Makes deleted rows unrecoverable: VACUUM with ``retention_hours``, and with 0 hours also the
    log truncated to the latest version (``truncate_log``). Time travel to older versions is lost.

    A table with deletion vectors keeps deleted rows in its data files until they are rewritten, so
    those are purged (REORG ... APPLY (PURGE)) first. Returns the log files deleted."""
    properties = DeltaTable.forPath(spark, path).detail().first()["properties"] or {}
    if properties.get("delta.enableDeletionVectors", "false").lower() == "true":
        spark.sql(f"REORG TABLE delta.`{path}` APPLY (PURGE)")
    vacuum(spark, path, retention_hours)
    return truncate_log(spark, path) if retention_hours == 0 else 0
