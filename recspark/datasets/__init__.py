"""Readers that turn each data source into the canonical raw schema that ingest validates.

Every reader returns :class:`RawSources`: three DataFrames with the canonical column names (types may
still be raw strings: ingest casts and quarantines), each with ``source_file`` and ``source_row`` so
that a bad row can be traced to where it came from.

Canonical raw columns (optional ones may be absent; ingest adds them as nulls):

- events: ``event_id``? ``user_id`` ``item_id`` ``event_type`` ``event_ts`` (timestamp, ISO string or
  epoch seconds) ``quantity``? ``price``? ``session_id``?
- items: ``item_id`` ``category``? (a path like ``"GROCERY/FRZN ICE/ICE - CRUSHED"``) ``brand``?
  ``price``? ``stock``? ``attributes``? (map<string,string>)
- users: ``user_id`` ``age``? (a number or a range like ``"45-54"``) ``gender``? ``region``?
  ``attributes``? (map<string,string>)
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import NamedTuple, Optional

from pyspark.sql import DataFrame, SparkSession

from recspark.config import Config


class RawSources(NamedTuple):
    events: DataFrame
    items: Optional[DataFrame]
    users: Optional[DataFrame]


def package_data_dir(package: str, *parts: str) -> Path:
    """The folder of data files shipped inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; run `make setup`")
    folder = Path(list(spec.submodule_search_locations)[0], *parts)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist in the installed {package!r}")
    return folder


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
