"""Readers that turn each data source into the canonical raw schema that ingest validates.

Every reader returns :class:`RawSources`: three DataFrames with the canonical column names (types may
still be raw strings: ingest casts and quarantines), each with ``source_file`` and ``source_row`` so
that a bad row can be traced to where it came from.

The canonical raw columns and :class:`RawSources` are in :mod:`recspark.schemas`; helpers the
readers share are in :mod:`recspark.datasets.packaged`.
"""
from __future__ import annotations

from pyspark.sql import SparkSession

from recspark.config import Config
from recspark.schemas import RawSources

__all__ = ["RawSources", "load_sources"]


def load_sources(spark: SparkSession, config: Config) -> RawSources:
    """Reads the configured data set in the canonical raw schema."""
    name = config.dataset.name
    if name == "completejourney":
        from recspark.datasets import completejourney
        return completejourney.read_sources(spark)
    if name == "ml-1m":
        from recspark.datasets import movielens
        return movielens.read_sources(spark)
    if name == "synthetic":
        from recspark.datasets import synthetic
        return synthetic.read_sources(spark, config.dataset.synthetic_events, config.dataset.synthetic_seed)
    if name == "files":
        from recspark.datasets import files
        return files.read_sources(spark, config.dataset)
    raise ValueError(f"dataset.name: unknown data set {name!r}")
