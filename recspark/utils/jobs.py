"""Plumbing shared by the thin job entry points: config, session, run id, a closing summary."""
from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Callable

from pyspark.sql import SparkSession

from recspark.config import Config, config_from_args
from recspark.session import get_spark


def new_run_id(config: Config) -> str:
    return f"{config.run_name}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"


def run_job(stage: str, body: Callable[[SparkSession, Config], dict], argv: list[str] | None = None) -> dict:
    """Parses arguments (failing before Spark starts on a bad key), runs ``body`` and prints its
    summary: what was written, how many rows, where, and how long it took."""
    config = config_from_args(argv, description=f"recspark {stage}")
    started = time.perf_counter()
    spark = get_spark(config.spark)
    summary = body(spark, config)
    seconds = time.perf_counter() - started
    print(f"\n== recspark {stage} ({config.run_name}) done in {seconds:.1f} s on {spark.sparkContext.master}")
    width = max((len(str(key)) for key in summary), default=0)
    for key, value in summary.items():
        print(f"   {str(key) + ':':<{width + 1}} {value}")
    return summary


def write_json(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return path
