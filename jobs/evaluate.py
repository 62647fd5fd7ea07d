"""Evaluate: the trained model and the popularity baseline on the test split -> reports/<dataset>/.

    spark-submit jobs/evaluate.py --conf-file conf/local.yaml
"""
from recspark.stages import evaluate_stage
from recspark.utils.jobs import run_job


def main() -> None:
    run_job("evaluate", evaluate_stage)


if __name__ == "__main__":
    main()
