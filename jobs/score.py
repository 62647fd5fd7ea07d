"""Score: every user's top-K items with score and confidence -> the Delta `recommendations` table.

    spark-submit jobs/score.py --conf-file conf/local.yaml
"""
from recspark.stages import score_stage
from recspark.utils.jobs import run_job


def main() -> None:
    run_job("score", score_stage)


if __name__ == "__main__":
    main()
