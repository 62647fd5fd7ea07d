"""Baselines that every model is compared with, on the same split in the same run."""
from __future__ import annotations

from pyspark.sql import DataFrame, Window
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


def train_interactions(sequences: DataFrame) -> DataFrame:
    """(user_id, item_idx, count) over the training period, from the gold sequences."""
    steps = sequences.select(C.USER_ID, F.explode(F.arrays_zip(C.ITEM_IDX, C.SPLIT)).alias("_step"))
    return (steps.filter((F.col("_step")[C.SPLIT] == "train") & (F.col("_step")[C.ITEM_IDX] >= C.FIRST_ITEM_IDX))
            .groupBy(C.USER_ID, F.col("_step")[C.ITEM_IDX].alias(C.ITEM_IDX))
            .agg(F.count(F.lit(1)).cast("float").alias("_count")))


def als(sequences: DataFrame, vocab: DataFrame, queries: DataFrame, k: int, exclude_seen: bool, *,
        rank: int, reg_param: float, max_iter: int, alpha: float, seed: int, checkpoint_dir: str) -> DataFrame:
    """Spark MLlib ALS for implicit feedback (Hu, Koren & Volinsky), trained on the training period.

    ALS wants int user ids: pseudonyms get a dense index. Seen items are removed after asking ALS
    for k + (the most items any query user has seen), so every user still gets k items.
    """
    from pyspark.ml.recommendation import ALS

    interactions = train_interactions(sequences)
    users = interactions.select(C.USER_ID).distinct().withColumn(
        "_user", F.dense_rank().over(Window.orderBy(C.USER_ID)).cast("int"))  # one row per user: small
    ratings = interactions.join(users, C.USER_ID)
    model = ALS(userCol="_user", itemCol=C.ITEM_IDX, ratingCol="_count", implicitPrefs=True, rank=rank,
                regParam=reg_param, maxIter=max_iter, alpha=alpha, seed=seed, coldStartStrategy="drop",
                checkpointInterval=3).fit(ratings)
    needed = k + ((queries.agg(F.max(F.size(C.SEEN))).collect()[0][0] or 0) if exclude_seen else 0)
    query_users = queries.select(C.USER_ID, "seen_idx").join(users, C.USER_ID)
    recs = model.recommendForUserSubset(query_users.select("_user"), needed)
    hits = recs.join(query_users, "_user").select(C.USER_ID, "seen_idx", F.explode("recommendations").alias("_r"))
    if exclude_seen:
        hits = hits.filter(~F.array_contains("seen_idx", F.col("_r")[C.ITEM_IDX]))
    best_first = Window.partitionBy(C.USER_ID).orderBy(F.col("_r.rating").desc(), F.col("_r")[C.ITEM_IDX])
    top = (hits.withColumn(C.RANK, F.row_number().over(best_first)).filter(F.col(C.RANK) <= k)
           .select(C.USER_ID, C.RANK, F.col("_r")[C.ITEM_IDX].alias(C.ITEM_IDX), F.col("_r.rating").alias(C.SCORE)))
    return top.join(F.broadcast(vocab.select(C.ITEM_ID, C.ITEM_IDX)), C.ITEM_IDX).drop(C.ITEM_IDX)
