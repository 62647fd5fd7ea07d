"""TIFU-KNN (Hu, He, Gao & Zhang, "Modeling Personalized Item Frequency Information for Next-basket
Recommendation", SIGIR 2020) as a Spark baseline: Spark SQL built-ins only, no Python UDF, no user
vector on the driver.

Why: grocery baskets are mostly re-buys, and the strong published next-basket methods model the
user's own item frequencies explicitly; TIFU-KNN is the simplest of them that also borrows from
similar users, so it is the bar a learned next-basket model has to clear beside "buy again".

Definitions, for one user with n baskets before the evaluated period (oldest first), each a multi-hot
vector v_b over the vocabulary items (a basket is a session of the gold sequences: the source
session, else the event itself, the features stage's unit; ordered by its last step):

* groups: m' = min(group_count, n) groups of consecutive baskets. The latest m' - 1 groups hold
  s = floor(n / m') baskets each, the earliest group the rest, n - (m' - 1) s (between s and 2s - 1).
* group vector (within-group decay r_b): g_i = (1 / |G_i|) sum_{j=1..|G_i|} r_b^(|G_i| - j) v_{b_j},
  the group's latest basket weighing 1.
* user vector (group decay r_g): u = (1 / m') sum_{i=1..m'} r_g^(m' - i) g_i, the latest group weighing 1.
  Each basket thus gets one weight and u is a weighted count: one ``groupBy`` per (user, item).
* neighbours: the ``neighbours`` other users with the highest cosine similarity of u (only users
  sharing an item have a similarity above 0; ties go to the smaller user id).
* prediction: p = alpha u + (1 - alpha) x the mean of the neighbours' u (over the neighbours found,
  at most ``neighbours``); the top k items of p, filled up with the most popular items when p has
  fewer than k (as :func:`recspark.evaluation.baselines.repeat_purchase` does).

The published code (github.com/HaojiHu/TIFUKNN) differs in details: its within-group decay counts
from the user's last basket over the whole history, its later groups are the larger ones, and its
neighbours are Euclidean; the formulas above are the paper's.

Scale: the user-user similarity is a join of the unit-normalised (user, item, weight) rows on item
and a sum per user pair: the work is sum over items of (query users with it) x (users with it),
bounded per task by Spark's shuffle, never one user x user matrix in one place. ``similarity_items``
optionally keeps only each user's heaviest items for the similarity (the prediction always uses the
whole u), which bounds that work when very popular items make it too large.
"""
from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.evaluation.baselines import most_popular

# Defaults (the EvaluateConfig keys evaluate.tifu_* override them once they exist). The grid is
# VECTOR_SETTINGS x NEIGHBOURS x ALPHAS; it holds both published Complete Journey settings:
# (7 groups, r_b 0.9, r_g 0.9, k 100, alpha 0.1) and (3 groups, r_b 1.0, r_g 0.1, k 100, alpha 0.8).
VECTOR_SETTINGS: tuple[tuple[int, float, float], ...] = ((7, 0.9, 0.9), (3, 1.0, 0.1))  # (group_count, within_decay, group_decay)
NEIGHBOURS: tuple[int, ...] = (100, 300)
ALPHAS: tuple[float, ...] = (0.1, 0.5, 0.8)
SIMILARITY_ITEMS: int | None = None  # None: the whole u enters the similarity
# Similarities and scores are ordered at this many decimals: sums of the same weights in another
# order (Spark's partitioning) may differ in the last bit, which must not reorder exact ties.
ORDER_DECIMALS = 12

BASKET_ID = "basket_id"
BASKET_END = "basket_end"
WEIGHT = "weight"
NEIGHBOUR_ID = "neighbour_id"
SIMILARITY = "similarity"
NEIGHBOUR_RANK = "neighbour_rank"


def history_baskets(sequences: DataFrame, splits: tuple[str, ...], *, first_item_idx: int) -> DataFrame:
    """(user_id, basket_id, basket_end, item_idx): the steps of ``splits`` (never the evaluated
    period) of the gold sequences, one row per basket and vocabulary item (multi-hot).

    A basket is the step's ``session_id`` (the features stage's unit: the source session, else the
    event itself). ``basket_end`` orders a user's baskets: the position of the basket's last step
    in the sequence, which is in time order, ties by source position.
    """
    if C.SESSION_ID not in sequences.columns:
        raise ValueError("the gold sequences have no session_id (built before baskets were kept): "
                         "run the features stage again")
    step = F.posexplode(F.arrays_zip(C.ITEM_IDX, C.SPLIT, C.SESSION_ID)).alias("_pos", "_s")
    steps = (sequences.select(C.USER_ID, step).filter(F.col("_s")[C.SPLIT].isin(*splits))
             .select(C.USER_ID, F.col("_s")[C.SESSION_ID].alias(BASKET_ID), F.col("_s")[C.ITEM_IDX].alias(C.ITEM_IDX),
                     "_pos"))
    ends = steps.groupBy(C.USER_ID, BASKET_ID).agg(F.max("_pos").alias(BASKET_END))
    items = steps.filter(F.col(C.ITEM_IDX) >= first_item_idx).select(C.USER_ID, BASKET_ID, C.ITEM_IDX).distinct()
    return items.join(ends, [C.USER_ID, BASKET_ID])


def with_basket_weights(baskets: DataFrame, group_count: int, within_decay: float, group_decay: float) -> DataFrame:
    """Adds ``weight`` to every (user, basket) row: r_b^(|G| - j) / |G| x r_g^(m' - i) / m' for the
    j-th basket of group i (see the module docstring), so that u = sum of weights per item."""
    if group_count < 1:
        raise ValueError(f"group_count must be >= 1, got {group_count}")
    per_user = Window.partitionBy(C.USER_ID)
    order = (baskets.select(C.USER_ID, BASKET_ID, BASKET_END).distinct()
             .withColumn("_b", F.row_number().over(per_user.orderBy(BASKET_END, BASKET_ID)))  # 1 = oldest
             .withColumn("_n", F.count(F.lit(1)).over(per_user)))
    groups = F.least(F.col("_n"), F.lit(group_count))  # m'
    size = F.floor(F.col("_n") / F.col("_m"))  # s: the size of every group but the earliest
    first = F.col("_n") - (F.col("_m") - 1) * F.col("_s")  # the earliest group's size
    later = F.col("_b") - F.col("_first") - 1  # 0-based position among the later groups' baskets
    placed = (order.withColumn("_m", groups).withColumn("_s", size).withColumn("_first", first)
              .withColumn("_g", F.when(F.col("_b") <= F.col("_first"), F.lit(1))
                          .otherwise(F.floor(later / F.col("_s")) + 2))
              .withColumn("_j", F.when(F.col("_b") <= F.col("_first"), F.col("_b"))
                          .otherwise(F.pmod(later, F.col("_s")) + 1))
              .withColumn("_size", F.when(F.col("_g") == 1, F.col("_first")).otherwise(F.col("_s"))))
    weight = (F.pow(F.lit(float(within_decay)), F.col("_size") - F.col("_j")) / F.col("_size")
              * F.pow(F.lit(float(group_decay)), F.col("_m") - F.col("_g")) / F.col("_m"))
    weights = placed.select(C.USER_ID, BASKET_ID, weight.alias(WEIGHT))
    return baskets.join(weights, [C.USER_ID, BASKET_ID])


def user_vectors(baskets: DataFrame, group_count: int, within_decay: float, group_decay: float) -> DataFrame:
    """(user_id, item_idx, weight): every user's TIFU vector u as sparse rows (weight > 0)."""
    return (baskets.transform(with_basket_weights, group_count, within_decay, group_decay)
            .groupBy(C.USER_ID, C.ITEM_IDX).agg(F.sum(WEIGHT).alias(WEIGHT))
            .filter(F.col(WEIGHT) > 0))


def user_neighbours(vectors: DataFrame, query_users: DataFrame, neighbours: int,
                    similarity_items: int | None = SIMILARITY_ITEMS) -> DataFrame:
    """(user_id, neighbour_id, similarity, neighbour_rank): for every user of ``query_users``
    (user_id), the ``neighbours`` other users most cosine-similar to it, rank 1 the most similar
    (ties at ``ORDER_DECIMALS`` decimals: smaller neighbour id). Users sharing no item are never neighbours (similarity 0).

    The similarity is a join on item of the unit-normalised weights and a sum per user pair: sparse
    rows in, one row per pair sharing an item out; nothing is collected.
    """
    rows = vectors
    if similarity_items is not None:
        heaviest = Window.partitionBy(C.USER_ID).orderBy(F.col(WEIGHT).desc(), C.ITEM_IDX)
        rows = rows.withColumn("_r", F.row_number().over(heaviest)).filter(F.col("_r") <= similarity_items).drop("_r")
    norms = rows.groupBy(C.USER_ID).agg(F.sqrt(F.sum(F.col(WEIGHT) * F.col(WEIGHT))).alias("_norm"))
    unit = rows.join(norms, C.USER_ID).select(C.USER_ID, C.ITEM_IDX, (F.col(WEIGHT) / F.col("_norm")).alias("_w"))
    left = unit.join(query_users.select(C.USER_ID).distinct(), C.USER_ID, "left_semi")
    right = unit.select(F.col(C.USER_ID).alias(NEIGHBOUR_ID), C.ITEM_IDX, F.col("_w").alias("_wn"))
    pairs = (left.join(right, C.ITEM_IDX).filter(F.col(C.USER_ID) != F.col(NEIGHBOUR_ID))
             .groupBy(C.USER_ID, NEIGHBOUR_ID).agg(F.sum(F.col("_w") * F.col("_wn")).alias(SIMILARITY)))
    best = Window.partitionBy(C.USER_ID).orderBy(F.round(SIMILARITY, ORDER_DECIMALS).desc(), NEIGHBOUR_ID)
    return (pairs.withColumn(NEIGHBOUR_RANK, F.row_number().over(best))
            .filter(F.col(NEIGHBOUR_RANK) <= neighbours))


def own_and_neighbour_weights(vectors: DataFrame, near: DataFrame, query_users: DataFrame,
                              neighbours: int) -> DataFrame:
    """(user_id, item_idx, _own, _nbr) for every query user and every item in its u or in a
    neighbour's: the user's own weight and the mean of its (at most ``neighbours``) nearest
    neighbours' weights (0 where absent). ``near`` (:func:`user_neighbours`) may hold more
    neighbours per user (for a larger grid point): only ranks <= ``neighbours`` are used."""
    kept = near.filter(F.col(NEIGHBOUR_RANK) <= neighbours).select(C.USER_ID, NEIGHBOUR_ID)
    found = kept.groupBy(C.USER_ID).agg(F.count(F.lit(1)).alias("_found"))
    theirs = vectors.select(F.col(C.USER_ID).alias(NEIGHBOUR_ID), C.ITEM_IDX, F.col(WEIGHT).alias("_wn"))
    mean = (kept.join(theirs, NEIGHBOUR_ID).groupBy(C.USER_ID, C.ITEM_IDX).agg(F.sum("_wn").alias("_sum"))
            .join(found, C.USER_ID).select(C.USER_ID, C.ITEM_IDX, (F.col("_sum") / F.col("_found")).alias("_nbr")))
    own = vectors.join(query_users.select(C.USER_ID).distinct(), C.USER_ID, "left_semi").select(
        C.USER_ID, C.ITEM_IDX, F.col(WEIGHT).alias("_own"))
    return own.join(mean, [C.USER_ID, C.ITEM_IDX], "full").select(
        C.USER_ID, C.ITEM_IDX, F.coalesce("_own", F.lit(0.0)).alias("_own"), F.coalesce("_nbr", F.lit(0.0)).alias("_nbr"))


def with_prediction(weights: DataFrame, alpha: float) -> DataFrame:
    """Adds ``score`` = alpha x own + (1 - alpha) x neighbours' mean (p of the module docstring)."""
    return weights.withColumn(C.SCORE, F.lit(float(alpha)) * F.col("_own") + F.lit(1.0 - float(alpha)) * F.col("_nbr"))


def tifu_scores(vectors: DataFrame, near: DataFrame, queries: DataFrame, *, neighbours: int, alpha: float,
                exclude_seen: bool) -> DataFrame:
    """(user_id, item_idx, score): p for every query user and item with p > 0, minus the user's
    seen items (queries' ``seen_idx``) when ``exclude_seen``."""
    scored = (own_and_neighbour_weights(vectors, near, queries, neighbours).transform(with_prediction, alpha)
              .filter(F.col(C.SCORE) > 0).select(C.USER_ID, C.ITEM_IDX, C.SCORE))
    if exclude_seen:
        seen = queries.select(C.USER_ID, F.explode("seen_idx").alias(C.ITEM_IDX))
        scored = scored.join(seen, [C.USER_ID, C.ITEM_IDX], "left_anti")
    return scored


def top_k_with_fillers(scores: DataFrame, vocab: DataFrame, queries: DataFrame, k: int, exclude_seen: bool) -> DataFrame:
    """(user_id, rank, item_id, score): each query user's k best (user_id, item_idx, score) rows,
    best first (ties at ``ORDER_DECIMALS`` decimals: smaller item index), then the most popular items not already listed; fillers
    score 0."""
    best = Window.partitionBy(C.USER_ID).orderBy(F.round(C.SCORE, ORDER_DECIMALS).desc(), C.ITEM_IDX)
    top = (scores.withColumn("_r", F.row_number().over(best)).filter(F.col("_r") <= k)
           .join(F.broadcast(vocab.select(C.ITEM_ID, C.ITEM_IDX)), C.ITEM_IDX)
           .select(C.USER_ID, C.ITEM_ID, F.col(C.SCORE).cast("double").alias("_p"), F.col("_r"),
                   F.lit(None).cast("int").alias("_fill")))
    # k popular fillers always suffice: a user with m < k scored items finds at most m among them.
    fillers = most_popular(vocab, queries, k, exclude_seen).select(
        C.USER_ID, C.ITEM_ID, F.lit(None).cast("double").alias("_p"), F.lit(None).cast("int").alias("_r"),
        F.col(C.RANK).alias("_fill"))
    merged = top.unionByName(fillers).groupBy(C.USER_ID, C.ITEM_ID).agg(
        F.max("_p").alias("_p"), F.min("_r").alias("_r"), F.min("_fill").alias("_fill"))
    order = Window.partitionBy(C.USER_ID).orderBy(F.col("_r").asc_nulls_last(), F.col("_fill").asc_nulls_last())
    return (merged.withColumn(C.RANK, F.row_number().over(order)).filter(F.col(C.RANK) <= k)
            .select(C.USER_ID, C.RANK, C.ITEM_ID, F.coalesce("_p", F.lit(0.0)).cast("float").alias(C.SCORE)))


def tifu_knn(baskets: DataFrame, vocab: DataFrame, queries: DataFrame, k: int, exclude_seen: bool, *,
             neighbours: int, within_decay: float, group_decay: float, alpha: float, group_count: int,
             similarity_items: int | None = SIMILARITY_ITEMS) -> DataFrame:
    """TIFU-KNN's top k for every query user (user_id, seen_idx), one row per (user, rank).

    ``baskets``: :func:`history_baskets` of the period before the evaluated one (train for
    validation queries, train + validation for test queries), for every user: neighbours come from
    all users, predictions only for the query users.
    """
    vectors = user_vectors(baskets, group_count, within_decay, group_decay)
    near = user_neighbours(vectors, queries, neighbours, similarity_items)
    scores = tifu_scores(vectors, near, queries, neighbours=neighbours, alpha=alpha, exclude_seen=exclude_seen)
    return top_k_with_fillers(scores, vocab, queries, k, exclude_seen)
