"""Issue #11's last named lever, measured: a blend of repeatnet's and TIFU-KNN's scores, chosen on validation.

The blend of one household is w x repeatnet + (1 - w) x TIFU-KNN over the union of the two models'
top-N lists, each model's scores first put on one scale per household (``minmax``: 0 at its N-th
item, 1 at its first; ``rank``: 1 / (c + rank), reciprocal rank fusion). Every (scale, w) is scored
on the validation queries with the validation-chosen repeatnet (trained on the training period) and
TIFU-KNN from the training baskets; the best validation NDCG@10 is then read once on test, with the
refit (train + validation) and TIFU-KNN from the train + validation baskets, beside repeatnet alone,
TIFU-KNN alone and "buy again" from the same lists (``--test``).

Run from a checkout whose lakehouse holds a `make run ONLY="ingest prepare features train"` of the
default configuration:

    PYTHONPATH=. TF_USE_LEGACY_KERAS=1 .venv/bin/python results/blend-20261204/blend.py \\
        --conf-file conf/local.yaml --conf-file conf/datasets/completejourney.yaml --test
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import Config, add_config_arguments, load_config
from recspark.evaluation import tifu_knn as T
from recspark.evaluation.baselines import repeat_purchase
from recspark.evaluation.evaluate import TEST_HISTORY_SPLITS, tifu_settings
from recspark.evaluation.tuning import score_lists
from recspark.pipeline.features import SEQUENCES
from recspark.scoring import recommend, require_model_inputs
from recspark.session import get_spark
from recspark.utils.delta import read_table

CANDIDATES = 50  # each model's top-N the blend re-ranks
WEIGHTS = [round(0.1 * i, 1) for i in range(11)]  # w = 1: repeatnet alone; w = 0: TIFU-KNN alone
RRF_C = 10


def tifu_lists(sequences, vocab, queries, splits, config, n: int) -> DataFrame:
    """TIFU-KNN's top n (user_id, rank, item_id, score) for ``queries`` from the baskets of ``splits``,
    with the configured (single) setting; persisted."""
    settings = tifu_settings(config)
    (groups, within, group), neighbours, alpha = (settings["vector_settings"][0], settings["neighbours"][0],
                                                  settings["alphas"][0])
    baskets = T.history_baskets(sequences, splits, first_item_idx=config.features.first_item_idx)
    return T.tifu_knn(baskets, vocab, queries, n, config.evaluate.exclude_seen, neighbours=neighbours,
                      within_decay=within, group_decay=group, alpha=alpha, group_count=groups,
                      similarity_items=settings["similarity_items"])


def model_lists(queries, vocab, model_dir: Path, config, n: int) -> DataFrame:
    return recommend(require_model_inputs(queries, str(model_dir), C.EVAL_QUERIES), vocab, str(model_dir), n,
                     config.evaluate.exclude_seen, config.score.batch_size).select(
        C.USER_ID, C.RANK, C.ITEM_ID, C.SCORE).persist()


def scaled(lists: DataFrame, scale: str, name: str) -> DataFrame:
    """(user_id, item_id, <name>) with the household's scores on one scale."""
    if scale == "rank":
        value = F.lit(1.0) / (F.lit(float(RRF_C)) + F.col(C.RANK))
    else:
        user = Window.partitionBy(C.USER_ID)
        low, high = F.min(C.SCORE).over(user), F.max(C.SCORE).over(user)
        value = F.when(high > low, (F.col(C.SCORE) - low) / (high - low)).otherwise(F.lit(1.0))
    return lists.select(C.USER_ID, C.ITEM_ID, value.cast("double").alias(name))


def blended(a: DataFrame, b: DataFrame, scale: str, w: float, k: int) -> DataFrame:
    """The top k of w x a + (1 - w) x b per household (absent from a list: 0), ties by item id."""
    both = scaled(a, scale, "_a").join(scaled(b, scale, "_b"), [C.USER_ID, C.ITEM_ID], "full")
    score = F.lit(w) * F.coalesce("_a", F.lit(0.0)) + F.lit(1.0 - w) * F.coalesce("_b", F.lit(0.0))
    order = Window.partitionBy(C.USER_ID).orderBy(F.col(C.SCORE).desc(), C.ITEM_ID)
    return (both.withColumn(C.SCORE, score).withColumn(C.RANK, F.row_number().over(order))
            .filter(F.col(C.RANK) <= k).select(C.USER_ID, C.RANK, C.ITEM_ID, C.SCORE))


def experiment(parser: argparse.ArgumentParser, out: str) -> tuple[argparse.Namespace, Config, dict[str, DataFrame]]:
    """The experiments' common start: the project's configuration flags and ``--out``, the session,
    and the gold tables they read (eval_queries, vocab, sequences)."""
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / out))
    args = add_config_arguments(parser).parse_args()
    config = load_config(args.conf_file, args.overrides)
    spark = get_spark(config.spark)
    tables = {name: read_table(spark, config.table_path(C.GOLD, table))
              for name, table in (("eval_queries", C.EVAL_QUERIES), ("vocab", C.ITEM_VOCAB), ("sequences", SEQUENCES))}
    return args, config, tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", action="store_true", help="read the test split once with the validation choice")
    args, config, tables = experiment(parser, "blend.json")
    eval_queries, vocab, sequences = tables["eval_queries"], tables["vocab"], tables["sequences"]
    k, model = config.evaluate.k, config.train.models[0]
    report: dict = {"model": model, "candidates": CANDIDATES, "rrf_c": RRF_C, "k": k, "validation": []}

    started = time.perf_counter()
    validation = eval_queries.filter(F.col(C.SPLIT) == C.VALIDATION).persist()
    a = model_lists(validation, vocab, config.model_dir(model), config, CANDIDATES)
    b = tifu_lists(sequences, vocab, validation, ("train",), config, CANDIDATES)
    print(f"validation lists: {a.count():,} {model} rows, {b.count():,} tifu_knn rows "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    for scale in ("minmax", "rank"):
        for w in WEIGHTS:
            metrics = score_lists(blended(a, b, scale, w, k), validation, k)
            report["validation"].append({"scale": scale, "w": w, **metrics})
            print(f"validation {scale:6s} w={w:.1f}: NDCG@{k} {metrics['ndcg_at_k']:.4f} "
                  f"recall@{k} {metrics['recall_at_k']:.4f}", flush=True)
    best = max(report["validation"], key=lambda r: (r["ndcg_at_k"], r["w"]))  # ties: more repeatnet
    alone = next(r for r in report["validation"] if r["scale"] == best["scale"] and r["w"] == 1.0)
    report["chosen"] = {"scale": best["scale"], "w": best["w"], "validation_ndcg": best["ndcg_at_k"],
                        f"validation_ndcg_{model}_alone": alone["ndcg_at_k"]}
    print(f"chosen on validation: {best['scale']} w={best['w']} NDCG@{k} {best['ndcg_at_k']:.4f} "
          f"({best['ndcg_at_k'] / alone['ndcg_at_k']:.3f}x {model} alone)", flush=True)
    for df in (a, b, validation):
        df.unpersist()

    if args.test:
        queries = eval_queries.filter(F.col(C.SPLIT) == C.TEST).persist()
        a = model_lists(queries, vocab, config.fitted_model_dir(model), config, CANDIDATES)
        b = tifu_lists(sequences, vocab, queries, TEST_HISTORY_SPLITS, config, CANDIDATES)
        again = repeat_purchase(sequences, vocab, queries, k, splits=TEST_HISTORY_SPLITS,
                                first_item_idx=config.features.first_item_idx)
        test = {"blend": score_lists(blended(a, b, best["scale"], best["w"], k), queries, k),
                model: score_lists(a.filter(F.col(C.RANK) <= k), queries, k),
                "tifu_knn": score_lists(b.filter(F.col(C.RANK) <= k), queries, k),
                "repeat_purchase": score_lists(again, queries, k)}
        report["test"] = test
        base = test["repeat_purchase"]["ndcg_at_k"]
        for name, metrics in test.items():
            print(f"test {name:16s} NDCG@{k} {metrics['ndcg_at_k']:.4f} recall@{k} {metrics['recall_at_k']:.4f} "
                  f"({metrics['ndcg_at_k'] / base:.3f}x repeat_purchase)", flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"written {args.out}", flush=True)


if __name__ == "__main__":
    main()
