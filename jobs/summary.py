"""Summary of a whole run: every table's row count, the metrics, and where the outputs are.

    python jobs/summary.py --conf-file conf/local.yaml
"""
from recspark.stages import summary_stage
from recspark.utils.jobs import run_job


def main() -> None:
    run_job("summary", summary_stage)


if __name__ == "__main__":
    main()
