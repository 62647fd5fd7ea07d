"""Summary of a whole run: every table's row count, the metrics, and where the outputs are.

    python jobs/summary.py --conf-file conf/local.yaml
"""
from __future__ import annotations

import json

from pyspark.sql import SparkSession

from recspark import constants as C
from recspark.config import Config
from recspark.pipeline.features import SEQUENCES
from recspark.pipeline.prepare import IDENTITY_MAP
from recspark.utils.delta import row_count, table_exists
from recspark.utils.jobs import run_job

LAYERS = {
    C.BRONZE: (C.EVENTS, C.ITEMS, C.USERS, C.QUARANTINE, IDENTITY_MAP, C.RUN_LOG),
    C.SILVER: (C.EVENTS, C.ITEMS, C.USERS),
    C.GOLD: (C.ITEM_VOCAB, SEQUENCES, C.TRAIN_EXAMPLES, C.EVAL_QUERIES, C.SERVING_HISTORIES),
}


def body(spark: SparkSession, config: Config) -> dict:
    summary = {}
    for layer, tables in LAYERS.items():
        for table in tables:
            path = config.table_path(layer, table)
            if table_exists(spark, path):
                summary[f"{layer}/{table}"] = f"{row_count(spark, path):>12,} rows  {path}"
    if table_exists(spark, config.recommendations_path):
        summary["recommendations"] = f"{row_count(spark, config.recommendations_path):>12,} rows  {config.recommendations_path}"
    metrics_file = config.reports_dir / "metrics.json"
    if metrics_file.exists():
        report = json.loads(metrics_file.read_text())
        for model, metrics in report["models"].items():
            summary[f"test {model}"] = (f"HR@{report['k']}={metrics['hit_rate_at_k']:.4f} "
                                        f"NDCG@{report['k']}={metrics['ndcg_at_k']:.4f}")
        summary["report"] = str(config.reports_dir / report[C.RUN_ID])
    summary["model"] = str(config.model_dir)
    return summary


def main() -> None:
    run_job("summary", body)


if __name__ == "__main__":
    main()
