"""Score: every user's top-K items with score and confidence -> the Delta `recommendations` table.

    spark-submit jobs/score.py --conf-file conf/local.yaml
"""
from __future__ import annotations

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import Config
from recspark.evaluation.evaluate import model_run, with_original_user_id
from recspark.pipeline.prepare import IDENTITY_MAP
from recspark.scoring import SEEN_IDX, recommend
from recspark.utils.delta import overwrite_table, read_table, row_count
from recspark.utils.jobs import run_job

def body(spark: SparkSession, config: Config) -> dict:
    run = model_run(config)
    histories = read_table(spark, config.table_path(C.GOLD, C.SERVING_HISTORIES))
    vocab = read_table(spark, config.table_path(C.GOLD, C.ITEM_VOCAB))
    identity = read_table(spark, config.table_path(C.BRONZE, IDENTITY_MAP))
    recommendations = recommend(histories.select(C.USER_ID, C.HISTORY, SEEN_IDX), vocab, str(config.model_dir),
                                config.score.k, config.evaluate.exclude_seen, config.score.batch_size)
    table = (with_original_user_id(recommendations, identity)
             .select(C.USER_ID, C.RANK, C.ITEM_ID, C.SCORE, C.CONFIDENCE,
                     F.lit(run[C.RUN_ID]).alias(C.RUN_ID), F.lit(config.train.model).alias(C.MODEL_NAME)))
    overwrite_table(table, config.recommendations_path)
    rows = row_count(spark, config.recommendations_path)
    return {"recommendations": f"{rows:,} rows (top {config.score.k} for each user) -> {config.recommendations_path}",
            C.RUN_ID: run[C.RUN_ID]}

def main() -> None:
    run_job("score", body)

if __name__ == "__main__":
    main()
