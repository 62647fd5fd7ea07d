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
from recspark.evaluation.baselines import als, most_popular
from recspark.evaluation.beyond import beyond_accuracy
from recspark.evaluation.ranking import ranking_metrics_at_ks
from recspark.pipeline.features import SEQUENCES
from recspark.pipeline.item_features import ITEM_FEATURES
from recspark.pipeline.prepare import IDENTITY_MAP, RAW_USER_ID
from recspark.scoring import ranked_list, recommend
from recspark.utils.delta import read_table, table_exists
from recspark.utils.jobs import write_json

KEPT_K = 20  # predictions kept for audit: at least the top 20 of every model
REPORT_KS = (5, 10, 20)
POPULAR = "most_popular"
ALS_NAME = "als"


def model_run(config: Config, model: str) -> dict:
    """The train stage's record of ``model``: run id, table versions, configuration."""
    path = config.model_dir(model) / "run.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the train stage first")
    return json.loads(path.read_text())


def with_original_user_id(df: DataFrame, identity: DataFrame) -> DataFrame:
    """Pseudonym -> the shop's own user id; only final outputs (predictions, recommendations) do this."""
    return (df.join(identity.select(C.USER_ID, RAW_USER_ID), C.USER_ID)
            .drop(C.USER_ID).withColumnRenamed(RAW_USER_ID, C.USER_ID))


def item_categories(spark: SparkSession, config: Config) -> DataFrame | None:
    """(item_id, category) for intra-list diversity: gold item_features, else silver items, else None."""
    for path in (config.table_path(C.GOLD, ITEM_FEATURES), config.table_path(C.SILVER, C.ITEMS)):
        if table_exists(spark, path):
            return read_table(spark, path).select(C.ITEM_ID, C.CATEGORY)
    return None


def evaluate(spark: SparkSession, config: Config) -> dict:
    runs = {model: model_run(config, model) for model in config.train.models}
    run = runs[config.train.models[0]]  # models trained by one train stage share its run id
    k = config.evaluate.k
    kept = max(KEPT_K, k)
    queries = read_table(spark, config.table_path(C.GOLD, C.EVAL_QUERIES)).filter(F.col(C.SPLIT) == C.TEST)
    vocab = read_table(spark, config.table_path(C.GOLD, C.ITEM_VOCAB))
    rankings = {
        model: recommend(queries, vocab, str(config.model_dir(model)),
                         kept, config.evaluate.exclude_seen, config.score.batch_size)
        for model in config.train.models
    }
    rankings.update({
        POPULAR: most_popular(vocab, queries, kept, config.evaluate.exclude_seen),
        ALS_NAME: als(read_table(spark, config.table_path(C.GOLD, SEQUENCES)), vocab, queries, kept,
                      config.evaluate.exclude_seen, rank=config.evaluate.als_rank,
                      reg_param=config.evaluate.als_reg_param, max_iter=config.evaluate.als_max_iter,
                      alpha=config.evaluate.als_alpha, seed=config.train.seed,
                      checkpoint_dir=str(Path(config.paths.checkpoints) / "spark")),
    })
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
    ks = sorted({*REPORT_KS, k})
    at_k: dict[int, dict[str, dict[str, float]]] = {kk: {} for kk in ks}
    beyond = {}
    categories = item_categories(spark, config)
    for name in rankings:
        ranked = stored.filter(F.col(C.MODEL_NAME) == name)
        lists = ranked.groupBy(C.USER_ID).agg(ranked_list().alias(C.PREDICTION))
        # Users the model returned nothing for still count, with an empty list.
        scored = relevant.join(lists, C.USER_ID, "left").withColumn(
            C.PREDICTION, F.coalesce(C.PREDICTION, F.array().cast("array<string>")))
        for kk, metrics in ranking_metrics_at_ks(scored, ks).items():
            at_k[kk][name] = metrics
        beyond[name] = beyond_accuracy(ranked.filter(F.col(C.RANK) <= k), vocab, categories)

    report = {
        C.RUN_ID: run[C.RUN_ID],
        "dataset": config.dataset.name,
        "split": C.TEST,
        "k": k,
        "protocol": "full ranking over all items" + ("; items seen before the test period excluded"
                                                      if config.evaluate.exclude_seen else "; seen items allowed"),
        "users": relevant.count(),
        "catalogue_items": vocab.count(),
        "models": at_k[k],
        "at_k": {str(kk): value for kk, value in at_k.items()},
        "beyond_accuracy": beyond,
        "predictions_table": predictions_path,
    }
    run_dir = config.reports_dir / run[C.RUN_ID]
    write_json(run_dir / "metrics.json", report)
    write_json(config.reports_dir / "metrics.json", report)
    plot_metrics(report, run_dir / "metrics.png")
    plot_metrics_by_k(report, run_dir / "metrics_by_k.png")
    write_report_md(report, run_dir / "report.md")
    return report


def write_report_md(report: dict, path: Path) -> Path:
    """One table of every model x metric at every K, the beyond-accuracy numbers and the plots."""
    ks = list(report["at_k"])
    models = list(report["models"])
    metric_names = list(next(iter(report["models"].values())))
    lines = [f"# {report['dataset']}: evaluation of run {report[C.RUN_ID]}", "",
             f"Test split, {report['users']:,} users, {report['catalogue_items']:,} items; {report['protocol']}.", ""]
    header = ["model"] + [f"{m.replace('_at_k', '')}@{kk}" for m in metric_names if m != "mean_average_precision" for kk in ks]
    lines += ["| " + " | ".join(header + ["MAP (full list)"]) + " |", "|" + "---|" * (len(header) + 1)]
    for model in models:
        cells = [f"{report['at_k'][kk][model][m]:.4f}" for m in metric_names if m != "mean_average_precision" for kk in ks]
        lines.append("| " + " | ".join([model, *cells, f"{report['models'][model]['mean_average_precision']:.4f}"]) + " |")
    lines += ["", f"Beyond accuracy (top {report['k']}; novelty = mean -log2 p(item) in bits; diversity = share of "
              "list pairs of different categories):", "",
              "| model | catalogue coverage | relative popularity | novelty | intra-list diversity |", "|---|---|---|---|---|"]
    for model, values in report["beyond_accuracy"].items():
        lines.append(f"| {model} | {values['catalogue_coverage']:.4f} | {values['relative_popularity']:.2f} | "
                     f"{values['novelty']:.2f} | {values['intra_list_diversity']:.4f} |")
    lines += ["", "![metrics](metrics.png)", "", "![metrics by K](metrics_by_k.png)", "",
              f"Predictions for audit: `{report['predictions_table']}` (run_id = `{report[C.RUN_ID]}`).", ""]
    path.write_text("\n".join(lines))
    return path


def plot_metrics_by_k(report: dict, path: Path) -> Path:
    """HR and NDCG against K for every model: how the gap between models changes with list length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [int(kk) for kk in report["at_k"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, metric in zip(axes, ("hit_rate_at_k", "ndcg_at_k")):
        for model in report["models"]:
            ax.plot(ks, [report["at_k"][str(kk)][model][metric] for kk in ks], marker="o", label=model)
        ax.set_xlabel("K")
        ax.set_title(metric.replace("_at_k", "@K"))
        ax.set_xticks(ks)
    axes[0].legend()
    fig.suptitle(f"{report['dataset']}, test split", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
