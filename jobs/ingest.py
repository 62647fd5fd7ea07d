"""Ingest: the configured raw sources -> bronze Delta tables (events, items, users, quarantine).

    spark-submit jobs/ingest.py --conf-file conf/local.yaml [--set dataset.name=ml-1m]
"""
from __future__ import annotations

from pyspark.sql import SparkSession

from recspark import constants as C
from recspark.config import Config
from recspark.datasets import load_sources
from recspark.pipeline.ingest import ingest
from recspark.utils.jobs import new_run_id, run_job


def body(spark: SparkSession, config: Config) -> dict:
    log = ingest(spark, load_sources(spark, config), config, new_run_id(config))
    summary = {}
    for row in log:
        name = row["source_file"].rsplit("/", 1)[-1]
        summary[f"{row['entity']} <- {name}"] = (
            f"read {row['rows_read']:,} = accepted {row['rows_accepted']:,} + quarantined {row['rows_quarantined']:,}"
            f" (table: {row['table_rows_inserted']:,} new rows)"
        )
    summary["bronze"] = config.table_path(C.BRONZE, "")
    return summary


def main() -> None:
    run_job("ingest", body)


if __name__ == "__main__":
    main()
