"""Feedback: the files of ``feedback.path`` into bronze feedback, then silver feedback (joined to the
recommendations run of each row, pseudonymised), its responses into silver events, gold served_metrics.

    spark-submit jobs/feedback.py --conf-file conf/local.yaml --set feedback.path=/data/feedback/
"""
from recspark.stages import feedback_stage
from recspark.utils.jobs import run_job


def main() -> None:
    run_job("feedback", feedback_stage)


if __name__ == "__main__":
    main()
