"""OPTIONAL sampled-negatives protocol: each relevant item ranked against n sampled negatives.

Not the default: full ranking over the whole catalogue is (sampled metrics are known to disagree
with full-ranking ones, even on the order of models; Krichene & Rendle 2020). When
``evaluate.sampled_negatives = n``, every user gets n negatives drawn without replacement, seeded,
uniformly from the vocabulary minus the user's relevant items (and minus the seen items with
``exclude_seen``); the same n serve all of the user's relevant items.

Rank of a relevant item = 1 + the number of its user's negatives scoring >= it (ties count
against the relevant item, so a constant scorer is not rewarded). A relevant item outside the
vocabulary, or one the model gives no score, ranks n + 1. Per relevant item: hit@k = rank <= k,
NDCG@k = 1 / log2(rank + 1) if rank <= k (one relevant item per ranking, so the ideal DCG is 1),
MRR@k = 1 / rank if rank <= k; averaged over the user's relevant items, then over users.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.evaluation.ranking import HIT_RATE_AT_K, MRR_AT_K, NDCG_AT_K

SAMPLED_METRICS = (HIT_RATE_AT_K, NDCG_AT_K, MRR_AT_K)
NEGATIVES = "negatives"
RELEVANT_IDX = "relevant_idx"
CANDIDATES = "candidates"


def protocol_label(n: int, seed: int, exclude_seen: bool) -> str:
    return (f"SAMPLED (not full ranking): each relevant item ranked against {n} sampled negatives "
            f"(uniform, seed {seed}; ties count against the relevant item)"
            + ("; seen items never sampled" if exclude_seen else ""))


def sampled_metrics_reference(relevant_scores: Sequence[Sequence[float | None]], negative_scores: Sequence[Sequence[float]],
                              k: int) -> dict[str, float]:
    """Plain-Python definition: per user, the scores of their relevant items (None = unscorable)
    and of their negatives; the module's metrics, mean over users with at least one relevant item."""
    per_user = {name: [] for name in SAMPLED_METRICS}
    for relevant, negatives in zip(relevant_scores, negative_scores):
        if not relevant:
            continue
        ranks = [len(negatives) + 1 if s is None else 1 + sum(n >= s for n in negatives) for s in relevant]
        per_user[HIT_RATE_AT_K].append(np.mean([r <= k for r in ranks]))
        per_user[NDCG_AT_K].append(np.mean([1 / math.log2(r + 1) if r <= k else 0.0 for r in ranks]))
        per_user[MRR_AT_K].append(np.mean([1 / r if r <= k else 0.0 for r in ranks]))
    return {name: float(np.mean(values)) if values else math.nan for name, values in per_user.items()}


def sampled_candidates(queries: DataFrame, vocab: DataFrame, n: int, exclude_seen: bool, seed: int) -> DataFrame:
    """(user_id, relevant_idx array (null = out of vocabulary), negatives array<int>, candidates) per query.

    The negatives: the vocabulary indices minus relevant (and seen) ones, ordered by a seeded hash
    of (user, item) and cut to n: a uniform sample without replacement, the same on every re-run.
    """
    # One row: the vocabulary's index range (below it PAD, unknown and the hashed buckets, never negatives).
    first_idx, max_idx = vocab.agg(F.min(C.ITEM_IDX), F.max(C.ITEM_IDX)).first()
    ids = F.broadcast(vocab.select(C.ITEM_ID, C.ITEM_IDX))
    relevant = (queries.select(C.USER_ID, F.explode(C.RELEVANT).alias(C.ITEM_ID)).join(ids, C.ITEM_ID, "left")
                .groupBy(C.USER_ID).agg(F.collect_list(F.coalesce(C.ITEM_IDX, F.lit(-1))).alias(RELEVANT_IDX)))
    excluded = F.concat(RELEVANT_IDX, "seen_idx") if exclude_seen else F.col(RELEVANT_IDX)
    pool = F.array_except(F.sequence(F.lit(first_idx), F.lit(max_idx)), excluded)
    keyed = F.transform(pool, lambda i: F.struct(F.xxhash64(F.col(C.USER_ID), i, F.lit(seed)).alias("h"), i.alias("i")))
    negatives = F.transform(F.slice(F.array_sort(keyed), 1, n), lambda x: x["i"])
    with_relevant = queries.join(relevant, C.USER_ID)
    return with_relevant.withColumn(NEGATIVES, negatives).withColumn(
        CANDIDATES, F.concat(F.filter(RELEVANT_IDX, lambda i: i >= first_idx), NEGATIVES))


def sampled_metrics(candidates: DataFrame, scores: DataFrame, ks: Sequence[int]) -> dict[int, dict[str, float]]:
    """The module's metrics from ``candidates`` (see :func:`sampled_candidates`) and the model's
    ``scores`` (user_id, item_idx, score) for them; ``{k: {metric: mean}}`` in one job."""
    keyed = candidates.select(C.USER_ID, RELEVANT_IDX, NEGATIVES)
    negative_scores = (keyed.select(C.USER_ID, F.explode(NEGATIVES).alias(C.ITEM_IDX))
                       .join(scores, [C.USER_ID, C.ITEM_IDX])
                       .groupBy(C.USER_ID).agg(F.collect_list(F.col(C.SCORE).cast("double")).alias("_neg")))
    relevant = (keyed.select(C.USER_ID, F.explode(RELEVANT_IDX).alias(C.ITEM_IDX))
                .join(scores, [C.USER_ID, C.ITEM_IDX], "left")
                .join(negative_scores, C.USER_ID, "left")
                .join(keyed.select(C.USER_ID, F.size(NEGATIVES).alias("_n")), C.USER_ID))
    s = F.col(C.SCORE).cast("double")
    beaten_by = F.size(F.filter(F.coalesce("_neg", F.array().cast("array<double>")), lambda x: x >= s))
    # No score (out of vocabulary, or the model skipped it): below every negative.
    rank = F.when(s.isNull(), F.col("_n") + 1).otherwise(beaten_by + 1)
    ranked = relevant.select(C.USER_ID, rank.alias("_rank"))
    per_user = ranked.groupBy(C.USER_ID).agg(*[
        F.avg(expr).alias(f"{name}@{k}") for k in ks for name, expr in (
            (HIT_RATE_AT_K, (F.col("_rank") <= k).cast("double")),
            (NDCG_AT_K, F.when(F.col("_rank") <= k, 1.0 / F.log2(F.col("_rank") + 1)).otherwise(0.0)),
            (MRR_AT_K, F.when(F.col("_rank") <= k, 1.0 / F.col("_rank")).otherwise(0.0)))])
    row = per_user.agg(*[F.avg(f"`{name}@{k}`").alias(f"{name}@{k}") for k in ks for name in SAMPLED_METRICS]).first()
    return {k: {name: math.nan if row[f"{name}@{k}"] is None else float(row[f"{name}@{k}"]) for name in SAMPLED_METRICS}
            for k in ks}


# --------------------------------------------------------------------------------------------------
# Scores for the candidates, per kind of model
# --------------------------------------------------------------------------------------------------

def item_scores(candidates: DataFrame, per_item: DataFrame) -> DataFrame:
    """A user-independent score (popularity): (item_idx, score) joined onto every candidate."""
    return (candidates.select(C.USER_ID, F.explode(CANDIDATES).alias(C.ITEM_IDX))
            .join(F.broadcast(per_item.select(C.ITEM_IDX, C.SCORE)), C.ITEM_IDX))


def user_item_scores(candidates: DataFrame, pair_scores: DataFrame) -> DataFrame:
    """Per-user scores (user_id, item_idx, score) for the candidates; pairs without one score 0."""
    return (candidates.select(C.USER_ID, F.explode(CANDIDATES).alias(C.ITEM_IDX))
            .join(pair_scores, [C.USER_ID, C.ITEM_IDX], "left")
            .select(C.USER_ID, C.ITEM_IDX, F.coalesce(F.col(C.SCORE).cast("double"), F.lit(0.0)).alias(C.SCORE)))


def als_scores(candidates: DataFrame, model: object, users: DataFrame) -> DataFrame:
    """ALS's score of a candidate: the dot product of the user's and the item's factors."""
    user_factors = model.userFactors.select(F.col("id").alias("_user"), F.col("features").alias("_u"))
    item_factors = model.itemFactors.select(F.col("id").alias(C.ITEM_IDX), F.col("features").alias("_i"))
    dot = F.aggregate(F.zip_with("_u", "_i", lambda a, b: a * b), F.lit(0.0).cast("float"), lambda acc, x: acc + x)
    return (candidates.select(C.USER_ID, F.explode(CANDIDATES).alias(C.ITEM_IDX))
            .join(users, C.USER_ID).join(user_factors, "_user").join(item_factors, C.ITEM_IDX)
            .select(C.USER_ID, C.ITEM_IDX, dot.cast("double").alias(C.SCORE)))


def keras_scores(candidates: DataFrame, model_dir: str) -> DataFrame:
    """A saved recspark model's logits for the candidates, in a pandas UDF (one model per worker).

    The model reads the gold columns named in its ``model_meta.json`` ``inputs`` (older models:
    ``history``); ``candidates`` must carry them (the eval_queries columns).
    """
    import json
    from pathlib import Path

    meta = json.loads((Path(model_dir) / "model_meta.json").read_text())
    columns = list(meta.get("inputs", [C.HISTORY]))
    missing = [c for c in columns if c not in candidates.columns]
    if missing:
        raise ValueError(f"{model_dir} reads {missing}, not among the query columns {candidates.columns}")
    as_dict = "inputs" in meta

    @F.pandas_udf("array<float>")
    def score(batches: Iterator[tuple[pd.Series, ...]]) -> Iterator[pd.Series]:
        from recspark.scoring import _load, model_batch  # the scorer's own input conversion

        model = _load(model_dir)
        for *inputs, items in batches:
            arrays = model_batch(columns, inputs)
            logits = model(arrays if as_dict else arrays[C.HISTORY], training=False).numpy()
            yield pd.Series([row[np.asarray(idx, dtype=np.int64)].astype(np.float32) for row, idx in zip(logits, items)])

    scored = candidates.select(C.USER_ID, CANDIDATES, score(*columns, CANDIDATES).alias("_scores"))
    return scored.select(C.USER_ID, F.explode(F.arrays_zip(F.col(CANDIDATES).alias("i"), F.col("_scores").alias("s"))).alias("_c")
                         ).select(C.USER_ID, F.col("_c.i").alias(C.ITEM_IDX), F.col("_c.s").cast("double").alias(C.SCORE))


def reference_from_frames(relevant: Mapping[Hashable, Sequence[float | None]],
                          negatives: Mapping[Hashable, Sequence[float]], k: int) -> dict[str, float]:
    """:func:`sampled_metrics_reference` over dicts keyed by user (for tests)."""
    users = sorted(relevant)
    return sampled_metrics_reference([relevant[u] for u in users], [negatives.get(u, []) for u in users], k)
