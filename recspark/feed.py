"""Petastorm feed: a Spark DataFrame materialised once as Parquet, read back as sharded tf.data.

The driver calls :func:`make_converter`; the converter (a small picklable object holding Parquet
file URLs) travels to the Horovod workers, where :func:`open_training_dataset` opens that worker's
shard. Petastorm shards by Parquet row group, so the DataFrame is written as at least one file per
shard: a shard with no row group would make Petastorm refuse to start.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from pyspark.sql import DataFrame, SparkSession

from recspark.constants import HISTORY, TARGET


def make_converter(spark: SparkSession, df: DataFrame, cache_url: str, *, num_files: Optional[int] = None):
    """Materialises ``df`` under ``cache_url`` (a ``file://`` URL) and returns a SparkDatasetConverter.

    ``num_files`` (e.g. the number of Horovod processes) repartitions ``df`` first so that every shard
    gets at least one Parquet file (hence one row group). Call ``converter.delete()`` when done.
    """
    from petastorm.spark import SparkDatasetConverter, make_spark_converter

    if not cache_url.startswith("file:"):
        raise ValueError(f"cache_url must be a file:// URL, got {cache_url!r}")
    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, cache_url)
    if num_files is not None:
        df = df.repartition(num_files)
    return make_spark_converter(df)
