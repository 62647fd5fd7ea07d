"""Prepare: bronze -> silver (deduplicated, typed, missing values filled, user ids pseudonymised).

    spark-submit jobs/prepare.py --conf-file conf/local.yaml
"""
from __future__ import annotations

from recspark.pipeline.prepare import prepare
from recspark.utils.jobs import run_job


def main() -> None:
    run_job("prepare", prepare)


if __name__ == "__main__":
    main()
