"""Issue #11's discovery goal, measured on validation: what reserving the last m of the top 10 for items new
to the household costs in NDCG@10 and gives in recall on new items (recall_expl@10).

The served list keeps repeatnet's first 10 - m items (in its order, mostly re-buys) and ends with the m best
items the household never had (not in the validation queries' ``seen``) from one source:

* ``model``: repeatnet's own next items outside the household's history (from its top 50);
* ``tifu``: TIFU-KNN's, i.e. what the household's nearest neighbours buy (from its top 50);
* ``popular``: the most popular items the household never had.

A source with fewer than m such items leaves the rest of the list to repeatnet. Validation only (the
validation-chosen repeatnet, TIFU-KNN from the training baskets), beside most_popular itself, whose
recall_expl@10 is the goal's bar. Same lakehouse and flags as ``blend.py`` (without ``--test``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from blend import CANDIDATES, experiment, model_lists, tifu_lists
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.evaluation.baselines import most_popular
from recspark.evaluation.ranking import ranking_metrics
from recspark.evaluation.repeat_explore import repeat_explore_metrics
from recspark.scoring import ranked_list

SLOTS = [0, 1, 2, 3, 5]


def new_to_household(lists: DataFrame, queries: DataFrame) -> DataFrame:
    """(user_id, rank, item_id) rows of ``lists`` whose item the household never had, ranked anew."""
    seen = queries.select(C.USER_ID, F.explode(C.SEEN).alias(C.ITEM_ID))
    order = Window.partitionBy(C.USER_ID).orderBy(C.RANK)
    return (lists.join(seen, [C.USER_ID, C.ITEM_ID], "left_anti")
            .withColumn(C.RANK, F.row_number().over(order)).select(C.USER_ID, C.RANK, C.ITEM_ID))


def with_slots(model: DataFrame, explore: DataFrame, m: int, k: int) -> DataFrame:
    """The model's first k - e items, then the e <= m best explore items not already among them."""
    if m == 0:
        return model.filter(F.col(C.RANK) <= k).select(C.USER_ID, C.RANK, C.ITEM_ID)
    picks = explore.filter(F.col(C.RANK) <= m).select(C.USER_ID, C.ITEM_ID, F.col(C.RANK).alias("_e"))
    rest = model.join(picks, [C.USER_ID, C.ITEM_ID], "left_anti").select(C.USER_ID, C.ITEM_ID, F.col(C.RANK).alias("_m"))
    both = rest.unionByName(picks.withColumn("_m", F.lit(None).cast("int")), allowMissingColumns=True)
    count = Window.partitionBy(C.USER_ID)
    # The explore picks go last: ordered by (is a pick, its own rank); the model's items keep theirs.
    order = Window.partitionBy(C.USER_ID).orderBy(F.col("_e").isNotNull(), F.coalesce("_m", "_e"))
    e = F.count("_e").over(count)
    return (both.withColumn("_n_e", e).withColumn("_pos", F.row_number().over(order))
            .filter(F.col("_e").isNotNull() | (F.col("_pos") <= F.lit(k) - F.col("_n_e")))
            .withColumn(C.RANK, F.row_number().over(order)).filter(F.col(C.RANK) <= k)
            .select(C.USER_ID, C.RANK, C.ITEM_ID))


def measure(lists: DataFrame, queries: DataFrame, k: int) -> dict:
    """Ranking metrics@k and the repeat / explore split of (user_id, rank, item_id) lists, from one
    grouping of the lists (users without a list count with an empty one)."""
    grouped = lists.groupBy(C.USER_ID).agg(ranked_list().alias(C.PREDICTION))
    scored = queries.select(C.USER_ID, C.RELEVANT, C.SEEN).join(grouped, C.USER_ID, "left").withColumn(
        C.PREDICTION, F.coalesce(C.PREDICTION, F.array().cast("array<string>")))
    scored = scored.persist()
    metrics = {**ranking_metrics(scored, k), **repeat_explore_metrics(scored, k)}
    scored.unpersist()
    return metrics


def main() -> None:
    args, config, tables = experiment(argparse.ArgumentParser(description=__doc__.splitlines()[0]), "explore.json")
    eval_queries, vocab, sequences = tables["eval_queries"], tables["vocab"], tables["sequences"]
    k, model = config.evaluate.k, config.train.models[0]
    started = time.perf_counter()
    queries = eval_queries.filter(F.col(C.SPLIT) == C.VALIDATION).persist()
    lists = model_lists(queries, vocab, config.model_dir(model), config, CANDIDATES)
    sources = {"model": new_to_household(lists, queries).persist(),
               "tifu": new_to_household(tifu_lists(sequences, vocab, queries, ("train",), config, CANDIDATES),
                                        queries).persist(),
               "popular": most_popular(vocab, queries, max(SLOTS), True).select(C.USER_ID, C.RANK, C.ITEM_ID)}
    report = {"model": model, "k": k, "split": C.VALIDATION, "rows": []}
    popular = measure(most_popular(vocab, queries, k, False), queries, k)
    report["most_popular"] = popular
    print(f"most_popular: NDCG@{k} {popular['ndcg_at_k']:.4f} recall_expl@{k} {popular['recall_expl']:.4f}", flush=True)
    for source, explore in sources.items():
        for m in SLOTS if source == "model" else SLOTS[1:]:
            metrics = measure(with_slots(lists, explore, m, k), queries, k)
            report["rows"].append({"source": source, "slots": m, **metrics})
            print(f"{source:8s} slots={m}: NDCG@{k} {metrics['ndcg_at_k']:.4f} recall@{k} {metrics['recall_at_k']:.4f} "
                  f"recall_rep {metrics['recall_rep']:.4f} recall_expl {metrics['recall_expl']:.4f} "
                  f"repeat share {metrics['repeat_share']:.3f}", flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"written {args.out}", flush=True)


if __name__ == "__main__":
    main()
