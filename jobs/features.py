"""Features: silver -> gold (vocabulary, behaviour sequences, split, training examples).

    spark-submit jobs/features.py --conf-file conf/local.yaml
"""
from __future__ import annotations

from recspark.pipeline.features import build_features
from recspark.utils.jobs import run_job


def main() -> None:
    run_job("features", build_features)


if __name__ == "__main__":
    main()
