"""Baselines that every model is compared with, on the same split in the same run."""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recspark import constants as C


def most_popular(vocab: DataFrame, queries: DataFrame, k: int, exclude_seen: bool) -> DataFrame:
    """The k items most often interacted with in the training period, for every query user
    (minus the items the user has seen, when ``exclude_seen``). One row per (user, rank).

    The popularity list is one array row crossed with the queries: no per-user join with the
    catalogue, and only as many items as the most active user could have to skip.
    """
    needed = k
    if exclude_seen:
        needed += queries.agg(F.max(F.size(C.SEEN))).collect()[0][0] or 0  # one small aggregate
    ranked = F.transform(F.array_sort(F.collect_list(F.struct(-F.col(C.TRAIN_COUNT), C.ITEM_ID))), lambda x: x[C.ITEM_ID])
    top = vocab.orderBy(F.col(C.TRAIN_COUNT).desc(), C.ITEM_ID).limit(needed).agg(ranked.alias("_popular"))
    candidates = F.col("_popular")
    if exclude_seen:
        candidates = F.filter(candidates, lambda item: ~F.array_contains(F.col(C.SEEN), item))
    picked = queries.crossJoin(F.broadcast(top)).select(C.USER_ID, F.slice(candidates, 1, k).alias("_picked"))
    counts = F.broadcast(vocab.select(C.ITEM_ID, F.col(C.TRAIN_COUNT).cast("float").alias(C.SCORE)))
    return picked.select(C.USER_ID, F.posexplode("_picked").alias("_pos", C.ITEM_ID)).select(
        C.USER_ID, (F.col("_pos") + 1).alias(C.RANK), C.ITEM_ID
    ).join(counts, C.ITEM_ID)
