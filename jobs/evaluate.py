"""Evaluate: the trained model and the popularity baseline on the test split -> reports/<dataset>/.

    spark-submit jobs/evaluate.py --conf-file conf/local.yaml
"""
from __future__ import annotations

from pyspark.sql import SparkSession

from recspark.config import Config
from recspark.evaluation.evaluate import evaluate
from recspark.utils.jobs import run_job


def body(spark: SparkSession, config: Config) -> dict:
    report = evaluate(spark, config)
    summary = {"test users": f"{report['users']:,}", "protocol": report["protocol"]}
    for model, metrics in report["models"].items():
        summary[model] = ", ".join(f"{name.replace('_at_k', '@' + str(report['k']))}={value:.4f}"
                                   for name, value in metrics.items())
    summary["report"] = str(config.reports_dir / report["run_id"])
    summary["predictions"] = report["predictions_table"]
    return summary


def main() -> None:
    run_job("evaluate", body)


if __name__ == "__main__":
    main()
