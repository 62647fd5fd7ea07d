"""Train: gold training examples -> Petastorm -> Horovod (2 ranks) -> TensorFlow model.

    spark-submit jobs/train.py --conf-file conf/local.yaml [--set train.epochs=5]
"""
from __future__ import annotations

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import Config
from recspark.models.training import train_distributed
from recspark.utils.delta import read_table, table_version
from recspark.utils.jobs import new_run_id, run_job, write_json


def body(spark: SparkSession, config: Config) -> dict:
    examples_path = config.table_path(C.GOLD, C.TRAIN_EXAMPLES)
    vocab_path = config.table_path(C.GOLD, C.ITEM_VOCAB)
    examples = read_table(spark, examples_path)
    num_items = read_table(spark, vocab_path).agg(F.max(C.ITEM_IDX)).collect()[0][0] + 1  # one aggregate
    run_id = new_run_id(config)
    result = train_distributed(
        spark, examples, num_items=num_items, max_seq_len=config.features.max_seq_len,
        train_config=config.train, model_dir=str(config.model_dir), cache_url=config.petastorm_cache_url,
    )
    write_json(config.model_dir / "run.json", {
        C.RUN_ID: run_id,
        "dataset": config.dataset.name,
        "model": config.train.model,
        "num_items": num_items,
        "table_versions": {examples_path: table_version(spark, examples_path), vocab_path: table_version(spark, vocab_path)},
        "config": config.to_dict(),
    })
    return {
        C.RUN_ID: run_id,
        "model": f"{config.train.model} with {config.train.num_proc} Horovod ranks, {num_items - 2:,} items",
        "loss per epoch": ", ".join(f"{loss:.4f}" for loss in result.history),
        "training seconds": f"{result.seconds:.1f}",
        "model dir": str(config.model_dir),
    }


def main() -> None:
    run_job("train", body)


if __name__ == "__main__":
    main()
