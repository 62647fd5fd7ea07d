"""The one place that builds a SparkSession.

On Databricks or under ``spark-submit`` a session already exists and is reused as it is. Locally a
session is built with Delta Lake configured from jars resolved once by ``make setup`` (so no test or
job run touches the network); without them it falls back to resolving Delta from Maven at start.
"""
from __future__ import annotations

import glob
import importlib.metadata
import logging
import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from recspark.config import SparkConfig

log = logging.getLogger(__name__)

# The jar must match the delta-spark Python package. 4.4.1 is on PyPI but its jar is not on Maven
# Central (checked 2026-11-27: 404), so both are pinned to 4.4.0.
DELTA_PACKAGE = f"io.delta:delta-spark_4.0_2.13:{importlib.metadata.version('delta-spark')}"
JARS_DIR = Path(os.environ.get("RECSPARK_JARS_DIR", Path(__file__).resolve().parent.parent / ".jars"))


def delta_jars(jars_dir: Path = JARS_DIR) -> list[str]:
    return sorted(glob.glob(str(jars_dir / "*.jar")))


def get_spark(config: SparkConfig | None = None) -> SparkSession:
    """Returns the active SparkSession, or builds a local one with Delta Lake configured."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    config = config or SparkConfig()
    # Spark's Python workers must run the same interpreter as the driver (the project's venv).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    # Under spark-submit the JVM is already running with the submitter's --master, memory and
    # jars (pass Delta's with --jars or --packages); setting them here would override or miss.
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    builder = (
        SparkSession.builder.appName(config.app_name)
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.shuffle.partitions", str(config.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.databricks.delta.snapshotPartitions", "2")
        .config("spark.ui.showConsoleProgress", "true")
    )
    if not submitted:
        builder = builder.master(config.master).config("spark.driver.memory", config.driver_memory)
        jars = delta_jars()
        if jars:
            builder = builder.config("spark.jars", ",".join(jars))
        else:
            log.warning("no Delta jars in %s (run `make setup`); resolving %s from Maven", JARS_DIR, DELTA_PACKAGE)
            builder = builder.config("spark.jars.packages", DELTA_PACKAGE)
    for key, value in config.extra.items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def resolve_delta_jars(jars_dir: Path = JARS_DIR) -> list[str]:
    """Downloads Delta Lake and its dependencies once into ``jars_dir`` (used by ``make setup``)."""
    if delta_jars(jars_dir):
        return delta_jars(jars_dir)
    ivy = jars_dir / "ivy"
    spark = (
        SparkSession.builder.master("local[1]")
        .config("spark.jars.packages", DELTA_PACKAGE)
        .config("spark.jars.ivy", str(ivy))
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.stop()
    for jar in glob.glob(str(ivy / "jars" / "*.jar")):
        os.replace(jar, jars_dir / Path(jar).name)
    jars = delta_jars(jars_dir)
    if not any("delta-spark" in Path(jar).name for jar in jars):
        raise RuntimeError(f"resolving {DELTA_PACKAGE} into {jars_dir} gave no delta-spark jar")
    return jars


if __name__ == "__main__":
    for jar in resolve_delta_jars():
        print(jar)
