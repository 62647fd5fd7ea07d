"""Prepare: bronze -> silver (deduplicated, typed, missing values filled, user ids pseudonymised).

    spark-submit jobs/prepare.py --conf-file conf/local.yaml
"""
from recspark.stages import prepare_stage
from recspark.utils.jobs import run_job


def main() -> None:
    run_job("prepare", prepare_stage)


if __name__ == "__main__":
    main()
