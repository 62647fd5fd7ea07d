"""One session-scoped local SparkSession for every test: local[2], few shuffle partitions, UI off."""
from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def spark():
    from recspark.config import SparkConfig
    from recspark.session import get_spark

    session = get_spark(
        SparkConfig(
            master="local[2]",
            app_name="recspark-tests",
            shuffle_partitions=2,
            driver_memory="4g",
            extra={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
                   "spark.sql.adaptive.coalescePartitions.enabled": "false"},
        )
    )
    yield session
    session.stop()
