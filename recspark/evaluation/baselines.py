"""Baselines that every model is compared with, on the same split in the same run."""
from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recspark import constants as C


def _popular_for_queries(popularity: DataFrame, queries: DataFrame, k: int, exclude_seen: bool) -> DataFrame:
    """The same ranked item list for every query user (minus the user's seen items, when
    ``exclude_seen``). ``popularity``: (item_id, score, _tiebreak), best = highest score, then
    highest _tiebreak, then smallest item_id. One row per (user, rank) with the item's score.

    The list is one array row crossed with the queries: no per-user join with the catalogue, and
    only as many items as the most active user could have to skip.
    """
    needed = k
    if exclude_seen:
        needed += queries.agg(F.max(F.size(C.SEEN))).collect()[0][0] or 0  # one small aggregate
    order = F.struct(-F.col(C.SCORE), -F.col("_tiebreak"), C.ITEM_ID)
    ranked = F.transform(F.array_sort(F.collect_list(order.alias("_o"))), lambda x: x[C.ITEM_ID])
    top = (popularity.orderBy(F.col(C.SCORE).desc(), F.col("_tiebreak").desc(), C.ITEM_ID).limit(needed)
           .agg(ranked.alias("_popular")))
    candidates = F.col("_popular")
    if exclude_seen:
        # array_except keeps the first array's order and uses a hash set: linear in both lists,
        # where a filter with array_contains would be their product (2,300 x 2,300 per ML-1M user).
        candidates = F.array_except(candidates, F.col(C.SEEN))
    picked = queries.crossJoin(F.broadcast(top)).select(C.USER_ID, F.slice(candidates, 1, k).alias("_picked"))
    scores = F.broadcast(popularity.select(C.ITEM_ID, F.col(C.SCORE).cast("float").alias(C.SCORE)))
    return picked.select(C.USER_ID, F.posexplode("_picked").alias("_pos", C.ITEM_ID)).select(
        C.USER_ID, (F.col("_pos") + 1).alias(C.RANK), C.ITEM_ID
    ).join(scores, C.ITEM_ID)


def most_popular(vocab: DataFrame, queries: DataFrame, k: int, exclude_seen: bool) -> DataFrame:
    """The k items most often interacted with in the training period, for every query user
    (minus the items the user has seen, when ``exclude_seen``). One row per (user, rank); the score
    is the training count."""
    popularity = vocab.select(C.ITEM_ID, F.col(C.TRAIN_COUNT).alias(C.SCORE), F.lit(0).alias("_tiebreak"))
    return _popular_for_queries(popularity, queries, k, exclude_seen)


def train_steps(sequences: DataFrame, splits: tuple[str, ...] = ("train",), *, first_item_idx: int) -> DataFrame:
    """(user_id, item_id, item_idx, event_ts): every event of ``splits`` (default: the training period)
    of an item in the vocabulary (``first_item_idx``: the first vocabulary index; below it PAD,
    unknown and the hashed buckets)."""
    step = F.explode(F.arrays_zip(C.ITEM_ID, C.ITEM_IDX, C.EVENT_TS, C.SPLIT)).alias("_step")
    return (sequences.select(C.USER_ID, step)
            .filter(F.col("_step")[C.SPLIT].isin(*splits) & (F.col("_step")[C.ITEM_IDX] >= first_item_idx))
            .select(C.USER_ID, *[F.col("_step")[c].alias(c) for c in (C.ITEM_ID, C.ITEM_IDX, C.EVENT_TS)]))


def recent_popular(sequences: DataFrame, vocab: DataFrame, queries: DataFrame, k: int, exclude_seen: bool,
                   recent_days: float, *, first_item_idx: int) -> DataFrame:
    """Most popular over the last ``recent_days`` days of the training period (events in
    ``(end - recent_days, end]``, end = the latest training event), for every query user.

    What is in fashion now rather than all year. Ties, and items with no recent event (so every
    user still gets k items), are ordered by the all-time training count. The score is the recent count.
    """
    return _popular_for_queries(recent_popularity(sequences, vocab, recent_days, first_item_idx=first_item_idx), queries, k,
                                exclude_seen)


def recent_popularity(sequences: DataFrame, vocab: DataFrame, recent_days: float, *, first_item_idx: int) -> DataFrame:
    """(item_id, score = events in the last ``recent_days`` days of training, _tiebreak = all-time
    count) for every vocabulary item (see :func:`recent_popular`)."""
    steps = train_steps(sequences, first_item_idx=first_item_idx)
    end = steps.agg(F.max(C.EVENT_TS).alias("_end"))  # one row, crossed in (no collect)
    # Epoch seconds as double: exact for any window, no interval type needed.
    recent = (steps.crossJoin(F.broadcast(end))
              .filter(F.col(C.EVENT_TS).cast("double") > F.col("_end").cast("double") - F.lit(recent_days * 86400.0))
              .groupBy(C.ITEM_ID).agg(F.count(F.lit(1)).alias("_recent")))
    popularity = vocab.join(recent, C.ITEM_ID, "left").select(
        C.ITEM_ID, F.coalesce("_recent", F.lit(0)).alias(C.SCORE), F.col(C.TRAIN_COUNT).alias("_tiebreak"))
    return popularity


def cooccurrence_neighbours(sequences: DataFrame, window: int, neighbours: int, *, first_item_idx: int) -> DataFrame:
    """(item_idx, neighbour_idx, count): for each item its ``neighbours`` most frequent co-occurring
    items, counting every pair of training events of one user at most ``window`` steps apart (in
    either order; an item with itself does not count).

    The window bounds the work to ``window`` pairs per event (a per-user self-join would be
    quadratic in the history: thousands of items for the heaviest users) and keeps the pairs to
    items bought or watched around the same time: a basket, a binge. Ties in count: smaller index first.
    """
    train_items = F.transform(
        F.filter(F.arrays_zip(C.ITEM_IDX, C.SPLIT), lambda s: (s[C.SPLIT] == "train") & (s[C.ITEM_IDX] >= first_item_idx)),
        lambda s: s[C.ITEM_IDX])
    steps = sequences.select(train_items.alias("_items")).select("_items", F.posexplode("_items").alias("_pos", "_a"))
    # slice is 1-based: the `window` items right after position _pos (0-based).
    pairs = steps.select("_a", F.explode(F.slice("_items", F.col("_pos") + 2, window)).alias("_b")).filter(
        F.col("_a") != F.col("_b"))
    both_ways = pairs.select(F.col("_a").alias(C.ITEM_IDX), F.col("_b").alias("neighbour_idx")).unionByName(
        pairs.select(F.col("_b").alias(C.ITEM_IDX), F.col("_a").alias("neighbour_idx")))
    counts = both_ways.groupBy(C.ITEM_IDX, "neighbour_idx").agg(F.count(F.lit(1)).alias("count"))
    best = Window.partitionBy(C.ITEM_IDX).orderBy(F.col("count").desc(), "neighbour_idx")
    return counts.withColumn("_n", F.row_number().over(best)).filter(F.col("_n") <= neighbours).drop("_n")


def cooccurrence_scores(sequences: DataFrame, queries: DataFrame, exclude_seen: bool, *, window: int,
                        neighbours: int, recent_items: int, first_item_idx: int) -> DataFrame:
    """(user_id, item_idx, _cooc): the summed co-occurrence of each candidate with the user's recent
    items (see :func:`item_cooccurrence`); only candidates with a positive sum appear."""
    known = F.filter(C.HISTORY, lambda i: i >= first_item_idx)
    # slice(a, -n, n) on an array shorter than n is empty, hence the when.
    recent = F.array_distinct(F.when(F.size(known) > recent_items, F.slice(known, -recent_items, recent_items))
                              .otherwise(known))
    users = queries.select(C.USER_ID, F.explode(recent).alias(C.ITEM_IDX))
    scored = (users.join(cooccurrence_neighbours(sequences, window, neighbours, first_item_idx=first_item_idx), C.ITEM_IDX)
              .groupBy(C.USER_ID, F.col("neighbour_idx").alias(C.ITEM_IDX))
              .agg(F.sum("count").cast("double").alias("_cooc")))
    if exclude_seen:
        # An anti-join with the (user, seen item) pairs: no per-row scan of long seen lists.
        seen = queries.select(C.USER_ID, F.explode("seen_idx").alias(C.ITEM_IDX))
        scored = scored.join(seen, [C.USER_ID, C.ITEM_IDX], "left_anti")
    return scored


def item_cooccurrence(sequences: DataFrame, vocab: DataFrame, queries: DataFrame, k: int, exclude_seen: bool, *,
                      window: int, neighbours: int, recent_items: int, first_item_idx: int) -> DataFrame:
    """Item-item co-occurrence: a user's candidates are the neighbours (see
    :func:`cooccurrence_neighbours`) of the last ``recent_items`` distinct items of the query's
    history, scored by the sum of their co-occurrence counts with those items.

    Lists shorter than k (few or rare recent items) are filled with the most popular items, after
    every co-occurrence candidate: a baseline that returns short lists would lose on precision for
    a reason that says nothing about co-occurrence. One row per (user, rank); score 0 for fillers.
    """
    scored = cooccurrence_scores(sequences, queries, exclude_seen, window=window, neighbours=neighbours,
                                 recent_items=recent_items, first_item_idx=first_item_idx)
    scored = scored.join(F.broadcast(vocab.select(C.ITEM_ID, C.ITEM_IDX)), C.ITEM_IDX).select(
        C.USER_ID, C.ITEM_ID, "_cooc", F.lit(None).cast("int").alias("_fill"))
    fillers = most_popular(vocab, queries, k, exclude_seen).select(
        C.USER_ID, C.ITEM_ID, F.lit(None).cast("double").alias("_cooc"), F.col(C.RANK).alias("_fill"))
    merged = scored.unionByName(fillers).groupBy(C.USER_ID, C.ITEM_ID).agg(
        F.max("_cooc").alias("_cooc"), F.min("_fill").alias("_fill"))
    best_first = Window.partitionBy(C.USER_ID).orderBy(
        F.col("_cooc").desc_nulls_last(), F.col("_fill").asc_nulls_last(), C.ITEM_ID)
    return (merged.withColumn(C.RANK, F.row_number().over(best_first)).filter(F.col(C.RANK) <= k)
            .select(C.USER_ID, C.RANK, C.ITEM_ID, F.coalesce("_cooc", F.lit(0.0)).cast("float").alias(C.SCORE)))


def train_interactions(sequences: DataFrame, splits: tuple[str, ...] = ("train",), *, first_item_idx: int) -> DataFrame:
    """(user_id, item_idx, _count) over the steps of ``splits`` (default: the training period),
    from the gold sequences; out-of-vocabulary steps are left out."""
    steps = sequences.select(C.USER_ID, F.explode(F.arrays_zip(C.ITEM_IDX, C.SPLIT)).alias("_step"))
    return interactions_of(steps.filter(F.col("_step")[C.SPLIT].isin(*splits)).select(
        C.USER_ID, F.col("_step")[C.ITEM_IDX].alias(C.ITEM_IDX)), first_item_idx=first_item_idx)


def interactions_of(steps: DataFrame, *, first_item_idx: int) -> DataFrame:
    """(user_id, item_idx) events -> (user_id, item_idx, _count), vocabulary items only: ALS's input."""
    return (steps.filter(F.col(C.ITEM_IDX) >= first_item_idx)
            .groupBy(C.USER_ID, C.ITEM_IDX).agg(F.count(F.lit(1)).cast("float").alias("_count")))


def fit_als(interactions: DataFrame, *, rank: int, reg_param: float, max_iter: int, alpha: float,
            seed: int) -> tuple[object, DataFrame]:
    """Spark MLlib ALS for implicit feedback (Hu, Koren & Volinsky) on (user_id, item_idx, _count).

    ALS wants int user ids: pseudonyms get a dense index, returned as ``users`` (user_id, _user).
    """
    from pyspark.ml.recommendation import ALS

    users = interactions.select(C.USER_ID).distinct().withColumn(
        "_user", F.dense_rank().over(Window.orderBy(C.USER_ID)).cast("int"))  # one row per user: small
    ratings = interactions.join(users, C.USER_ID)
    model = ALS(userCol="_user", itemCol=C.ITEM_IDX, ratingCol="_count", implicitPrefs=True, rank=rank,
                regParam=reg_param, maxIter=max_iter, alpha=alpha, seed=seed, coldStartStrategy="drop",
                checkpointInterval=3).fit(ratings)
    return model, users


def als_top_k(model: object, users: DataFrame, vocab: DataFrame, queries: DataFrame, k: int,
              exclude_seen: bool) -> DataFrame:
    """The fitted ALS model's top k per query user (user_id, seen_idx), one row per (user, rank).

    Seen items are removed after asking ALS for k + (the most items any query user has seen), so
    every user still gets k items. Query users ALS never saw get nothing (they count as misses).
    """
    needed = k + ((queries.agg(F.max(F.size("seen_idx"))).collect()[0][0] or 0) if exclude_seen else 0)
    query_users = queries.select(C.USER_ID, "seen_idx").join(users, C.USER_ID)
    recs = model.recommendForUserSubset(query_users.select("_user"), needed)
    # ALS returns each list best first; equal ratings are put in item order so that the result
    # does not depend on ALS's internal order. Then the seen items go, by a hash-set array_except
    # (linear, where exploding and testing array_contains per row is quadratic in long histories).
    ordered = F.array_sort(F.transform("recommendations", lambda r: F.struct(
        (-r["rating"]).alias("_neg"), r[C.ITEM_IDX].alias(C.ITEM_IDX))))
    items = F.transform(ordered, lambda r: r[C.ITEM_IDX])
    if exclude_seen:
        items = F.array_except(items, F.col("seen_idx"))
    rating_of = F.map_from_entries(F.transform("recommendations", lambda r: F.struct(r[C.ITEM_IDX], r["rating"])))
    top = (recs.join(query_users, "_user")
           .select(C.USER_ID, rating_of.alias("_rating"), F.posexplode(F.slice(items, 1, k)).alias("_pos", C.ITEM_IDX))
           .select(C.USER_ID, (F.col("_pos") + 1).alias(C.RANK), C.ITEM_IDX,
                   F.element_at("_rating", F.col(C.ITEM_IDX)).alias(C.SCORE)))
    return top.join(F.broadcast(vocab.select(C.ITEM_ID, C.ITEM_IDX)), C.ITEM_IDX).drop(C.ITEM_IDX)


def als(sequences: DataFrame, vocab: DataFrame, queries: DataFrame, k: int, exclude_seen: bool, *,
        rank: int, reg_param: float, max_iter: int, alpha: float, seed: int, checkpoint_dir: str | None = None,
        splits: tuple[str, ...] = ("train",), first_item_idx: int) -> DataFrame:
    """ALS fitted on the steps of ``splits`` of the gold sequences, top k for every query user.

    ``splits=("train", "validation")`` is the refit after tuning: ALS has no history input, so the
    validation period can only reach its user factors through the fit. ``checkpoint_dir`` is
    accepted for older callers and not used (10 iterations need no lineage cutting).
    """
    model, users = fit_als(train_interactions(sequences, splits, first_item_idx=first_item_idx), rank=rank, reg_param=reg_param,
                           max_iter=max_iter, alpha=alpha, seed=seed)
    return als_top_k(model, users, vocab, queries, k, exclude_seen)


def own_item_counts(sequences: DataFrame, queries: DataFrame, splits: tuple[str, ...] = ("train",), *,
                    first_item_idx: int) -> DataFrame:
    """(user_id, item_id, item_idx, _count, _last): how often and when last each query user had each
    vocabulary item in the steps of ``splits`` (see :func:`repeat_purchase` for which splits)."""
    users = sequences.join(queries.select(C.USER_ID), C.USER_ID, "left_semi")
    return (train_steps(users, splits, first_item_idx=first_item_idx).groupBy(C.USER_ID, C.ITEM_ID, C.ITEM_IDX)
            .agg(F.count(F.lit(1)).alias("_count"), F.max(C.EVENT_TS).alias("_last")))


def repeat_purchase(sequences: DataFrame, vocab: DataFrame, queries: DataFrame, k: int, *,
                    splits: tuple[str, ...] = ("train",), first_item_idx: int) -> DataFrame:
    """"Buy again": each query user's own items, most often had first, ties by the most recent, then
    by item id; lists shorter than k are filled with the most popular items not already listed.

    The history is the steps of ``splits`` of the gold sequences: ("train",) for validation queries,
    ("train", "validation") for test queries, as for ALS's refit; never the held-out period itself.
    Only meaningful when seen items may be recommended (``exclude_seen`` false: grocery re-buying).
    One row per (user, rank); the score is the user's count of the item, 0 for fillers.
    """
    own = own_item_counts(sequences, queries, splits, first_item_idx=first_item_idx).select(
        C.USER_ID, C.ITEM_ID, "_count", "_last", F.lit(None).cast("int").alias("_fill"))
    # k popular fillers are always enough: a user with m < k own items finds at most m of them among
    # the k, leaving the k - m the list needs (with m >= k no filler is needed).
    fillers = most_popular(vocab, queries, k, exclude_seen=False).select(
        C.USER_ID, C.ITEM_ID, F.lit(None).cast("long").alias("_count"), F.lit(None).cast("timestamp").alias("_last"),
        F.col(C.RANK).alias("_fill"))
    merged = own.unionByName(fillers).groupBy(C.USER_ID, C.ITEM_ID).agg(
        F.max("_count").alias("_count"), F.max("_last").alias("_last"), F.min("_fill").alias("_fill"))
    best_first = Window.partitionBy(C.USER_ID).orderBy(
        F.col("_count").desc_nulls_last(), F.col("_last").desc_nulls_last(), F.col("_fill").asc_nulls_last(), C.ITEM_ID)
    return (merged.withColumn(C.RANK, F.row_number().over(best_first)).filter(F.col(C.RANK) <= k)
            .select(C.USER_ID, C.RANK, C.ITEM_ID, F.coalesce("_count", F.lit(0)).cast("float").alias(C.SCORE)))


def repeat_purchase_scores(sequences: DataFrame, queries: DataFrame, splits: tuple[str, ...] = ("train",), *,
                           first_item_idx: int) -> DataFrame:
    """(user_id, item_idx, score) for the users' own items, in :func:`repeat_purchase`'s order as one
    number: count + 1 + a recency fraction in [0, 1) (the item's dense rank by last time over the user's
    distinct items + 1), so every own item scores above 1 and the sampled protocol can put popularity
    fractions (< 1) under it for the fillers."""
    own = own_item_counts(sequences, queries, splits, first_item_idx=first_item_idx)
    per_user = Window.partitionBy(C.USER_ID)
    recency = F.dense_rank().over(per_user.orderBy("_last")) / (F.count(F.lit(1)).over(per_user) + 1)
    return own.select(C.USER_ID, C.ITEM_IDX, (F.col("_count") + 1 + recency).cast("double").alias(C.SCORE))
