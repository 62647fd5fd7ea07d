"""Evaluation: the model and the baselines on the same held-out test split, in the same run.

Protocol: full ranking over every item of the vocabulary (no sampled negatives); with
``evaluate.exclude_seen`` the items the user interacted with before the test period are removed
from every model's ranking alike. Every model's top-K lists are kept in the Delta table
``evaluation/predictions`` keyed by the original user id, so anyone can recompute the metrics.
"""
from __future__ import annotations

import json
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import Config
from recspark.evaluation.baselines import most_popular
from recspark.evaluation.ranking import ranking_metrics
from recspark.pipeline.prepare import IDENTITY_MAP, RAW_USER_ID
from recspark.scoring import SEEN_IDX, ranked_list, recommend
from recspark.utils.delta import read_table
from recspark.utils.jobs import write_json

KEPT_K = 20  # predictions kept for audit: at least the top 20 of every model
POPULAR = "most_popular"


def model_run(config: Config) -> dict:
    path = config.model_dir / "run.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the train stage first")
    return json.loads(path.read_text())


def with_original_user_id(df: DataFrame, identity: DataFrame) -> DataFrame:
    """Pseudonym -> the shop's own user id; only final outputs (predictions, recommendations) do this."""
    return (df.join(identity.select(C.USER_ID, RAW_USER_ID), C.USER_ID)
            .drop(C.USER_ID).withColumnRenamed(RAW_USER_ID, C.USER_ID))


def evaluate(spark: SparkSession, config: Config) -> dict:
    run = model_run(config)
    k = config.evaluate.k
    kept = max(KEPT_K, k)
    queries = read_table(spark, config.table_path(C.GOLD, C.EVAL_QUERIES)).filter(F.col(C.SPLIT) == C.TEST)
    vocab = read_table(spark, config.table_path(C.GOLD, C.ITEM_VOCAB))
    rankings = {
        config.train.model: recommend(queries.select(C.USER_ID, C.HISTORY, SEEN_IDX), vocab, str(config.model_dir),
                                      kept, config.evaluate.exclude_seen, config.score.batch_size),
        POPULAR: most_popular(vocab, queries, kept, config.evaluate.exclude_seen),
    }
    predictions = None
    for name, ranking in rankings.items():
        rows = ranking.select(F.lit(run[C.RUN_ID]).alias(C.RUN_ID), F.lit(name).alias(C.MODEL_NAME), C.USER_ID,
                              C.RANK, C.ITEM_ID, F.col(C.SCORE).cast("float").alias(C.SCORE))
        predictions = rows if predictions is None else predictions.unionByName(rows)
    predictions_path = str(Path(config.paths.lakehouse) / config.dataset.name / "evaluation" / "predictions")
    identity = read_table(spark, config.table_path(C.BRONZE, IDENTITY_MAP))
    # Re-running the evaluation of one run replaces that run's rows and nothing else.
    (with_original_user_id(predictions, identity).write.format("delta").mode("overwrite")
     .option("replaceWhere", f"{C.RUN_ID} = '{run[C.RUN_ID]}'").save(predictions_path))

    stored = read_table(spark, predictions_path).filter(F.col(C.RUN_ID) == run[C.RUN_ID])
    relevant = with_original_user_id(queries.select(C.USER_ID, C.RELEVANT), identity)
    metrics = {}
    for name in rankings:
        lists = (stored.filter(F.col(C.MODEL_NAME) == name).groupBy(C.USER_ID)
                 .agg(ranked_list().alias(C.PREDICTION)))
        # Users the model returned nothing for still count, with an empty list.
        scored = relevant.join(lists, C.USER_ID, "left").withColumn(
            C.PREDICTION, F.coalesce(C.PREDICTION, F.array().cast("array<string>")))
        metrics[name] = ranking_metrics(scored, k)

    report = {
        C.RUN_ID: run[C.RUN_ID],
        "dataset": config.dataset.name,
        "split": C.TEST,
        "k": k,
        "protocol": "full ranking over all items" + ("; items seen before the test period excluded"
                                                      if config.evaluate.exclude_seen else "; seen items allowed"),
        "users": relevant.count(),
        "models": metrics,
        "predictions_table": predictions_path,
    }
    write_json(config.reports_dir / run[C.RUN_ID] / "metrics.json", report)
    write_json(config.reports_dir / "metrics.json", report)
    plot_metrics(report, config.reports_dir / run[C.RUN_ID] / "metrics.png")
    return report


def plot_metrics(report: dict, path: Path) -> Path:
    """A grouped bar chart of every metric per model: the first thing a reader wants to see."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["models"])
    names = list(next(iter(report["models"].values())))
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        ax.bar([x + i * width for x in range(len(names))], [report["models"][model][n] for n in names], width, label=model)
    ax.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(names))])
    ax.set_xticklabels([n.replace("_at_k", f"@{report['k']}") for n in names], rotation=20)
    ax.set_title(f"{report['dataset']} test split, {report['users']:,} users ({report['protocol']})", fontsize=9)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
