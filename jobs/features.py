"""Features: silver -> gold (vocabulary, behaviour sequences, split, training examples).

    spark-submit jobs/features.py --conf-file conf/local.yaml
"""
from recspark.stages import features_stage
from recspark.utils.jobs import run_job


def main() -> None:
    run_job("features", features_stage)


if __name__ == "__main__":
    main()
