"""Delta Lake writes that make every job re-runnable: MERGE on a key, or overwrite whole tables."""
from __future__ import annotations

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
