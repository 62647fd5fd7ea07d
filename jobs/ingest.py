"""Ingest: the configured raw sources -> bronze Delta tables (events, items, users, quarantine).

    spark-submit jobs/ingest.py --conf-file conf/local.yaml [--set dataset.name=ml-1m]
"""
from recspark.stages import ingest_stage
from recspark.utils.jobs import run_job


def main() -> None:
    run_job("ingest", ingest_stage)


if __name__ == "__main__":
    main()
