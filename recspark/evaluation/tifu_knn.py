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

Scale: the user-user similarity is computed in blocks of users (:func:`user_neighbours`): each
(query block, user block) pair is one task multiplying two sparse matrices of unit-normalised
vectors, so no task holds more than a block x block matrix and the vectors move once per block,
never one row per pair of users sharing an item; the neighbours' mean is query users x neighbours x
their items. The top k needs only the items that can beat the floor of :func:`top_candidates`
(exact). ``similarity_items`` optionally keeps only each user's heaviest items for the similarity
(the prediction always uses the whole u).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from scipy import sparse

from recspark import constants as C
from recspark.evaluation.baselines import most_popular

# The grid and the similarity pruning are configuration (evaluate.tifu_*, recspark.config); here
# only the default of the functions' similarity_items argument.
SIMILARITY_ITEMS: int | None = None  # None: the whole u enters the similarity
# Users per block of the similarity (user_neighbours): a block pair's similarities are a dense
# float64 matrix of at most this squared (32 MB, a few copies while its best are picked).
BLOCK_USERS = 2048
# Similarities and scores are ordered at this many decimals: sums of the same weights in another
# order (Spark's partitioning) may differ in the last bit, which must not reorder exact ties.
ORDER_DECIMALS = 12

BASKET_ID = "basket_id"
BASKET_END = "basket_end"
WEIGHT = "weight"
NEIGHBOUR_ID = "neighbour_id"
USER_IDX = "user_idx"
NEIGHBOUR_IDX = "neighbour_idx"
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
    # A window, not an aggregate joined back: every reuse of a DataFrame repeats its plan, and these
    # functions are chained (baskets -> weights -> vectors -> neighbours), so each keeps one lineage.
    end = F.max("_pos").over(Window.partitionBy(C.USER_ID, BASKET_ID))
    return (steps.withColumn(BASKET_END, end).filter(F.col(C.ITEM_IDX) >= first_item_idx)
            .select(C.USER_ID, BASKET_ID, BASKET_END, C.ITEM_IDX).distinct())


def with_basket_weights(baskets: DataFrame, group_count: int, within_decay: float, group_decay: float) -> DataFrame:
    """Adds ``weight`` to every (user, basket) row: r_b^(|G| - j) / |G| x r_g^(m' - i) / m' for the
    j-th basket of group i (see the module docstring), so that u = sum of weights per item."""
    if group_count < 1:
        raise ValueError(f"group_count must be >= 1, got {group_count}")
    per_user = Window.partitionBy(C.USER_ID)
    # Rows are (basket, item): the basket's dense rank is its position, 1 = oldest; the largest is n.
    order = (baskets.withColumn("_b", F.dense_rank().over(per_user.orderBy(BASKET_END, BASKET_ID)))
             .withColumn("_n", F.max("_b").over(per_user)))
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
    return placed.withColumn(WEIGHT, weight).drop("_b", "_n", "_m", "_s", "_first", "_g", "_j", "_size")


def user_vectors(baskets: DataFrame, group_count: int, within_decay: float, group_decay: float) -> DataFrame:
    """(user_id, user_idx, item_idx, weight): every user's TIFU vector u as sparse rows (weight > 0).

    ``user_idx`` numbers the users densely in user id order: the similarity's blocks are ranges of it
    and its rows and columns are ints, not 26-character pseudonyms, and "smaller user id" and
    "smaller index" are the same tie-break.
    """
    summed = (baskets.transform(with_basket_weights, group_count, within_decay, group_decay)
              .groupBy(C.USER_ID, C.ITEM_IDX).agg(F.sum(WEIGHT).alias(WEIGHT))
              .filter(F.col(WEIGHT) > 0))
    # One row per user: the global order is small (a few thousand rows here, one partition).
    index = summed.select(C.USER_ID).distinct().withColumn(
        USER_IDX, F.row_number().over(Window.orderBy(C.USER_ID)).cast("int"))
    return summed.join(index, C.USER_ID).select(C.USER_ID, USER_IDX, C.ITEM_IDX, WEIGHT)


def user_neighbours(vectors: DataFrame, query_users: DataFrame, neighbours: int,
                    similarity_items: int | None = SIMILARITY_ITEMS, block_users: int = BLOCK_USERS) -> DataFrame:
    """(user_id, neighbour_id, user_idx, neighbour_idx, similarity, neighbour_rank): for every user of
    ``query_users`` (user_id), the ``neighbours`` other users most cosine-similar to it, rank 1 the
    most similar (ties at ``ORDER_DECIMALS`` decimals: smaller neighbour id). Users sharing no item are
    never neighbours (similarity 0).

    Blocked, as the scorer's top-k is over items: the users are cut into blocks of at most
    ``block_users`` (by user_idx) and each (query block, user block) pair is one task that multiplies
    the two blocks' sparse unit-normalised vectors (SciPy) into a dense block of similarities and
    keeps each query user's best ``neighbours`` of it (:func:`_block_neighbours`); Spark then ranks
    the survivors of every block per user. The data moved is the vectors once per block (a few
    copies of a few MB here), not one row per pair of users sharing an item: that join was 40
    million products on Complete Journey and most of TIFU-KNN's time (results/profile-20261204/).
    """
    rows = vectors
    if similarity_items is not None:
        heaviest = Window.partitionBy(USER_IDX).orderBy(F.col(WEIGHT).desc(), C.ITEM_IDX)
        rows = rows.withColumn("_r", F.row_number().over(heaviest)).filter(F.col("_r") <= similarity_items).drop("_r")
    norms = rows.groupBy(USER_IDX).agg(F.sqrt(F.sum(F.col(WEIGHT) * F.col(WEIGHT))).alias("_norm"))
    unit = rows.join(norms, USER_IDX).select(USER_IDX, C.ITEM_IDX, (F.col(WEIGHT) / F.col("_norm")).alias("_w"))
    index = vectors.select(C.USER_ID, USER_IDX).distinct()
    queried = index.join(query_users.select(C.USER_ID).distinct(), C.USER_ID, "left_semi")
    blocks, size = _blocks(vectors, block_users)
    block = ((F.col(USER_IDX) - 1) / size).cast("int")
    every = F.explode(F.sequence(F.lit(0), F.lit(blocks - 1)))
    # The query users' rows go to each (their block, any block) pair, everyone's to (any, their block).
    left = unit.join(F.broadcast(queried.select(USER_IDX)), USER_IDX, "left_semi").select(
        "*", block.alias("_qb"), every.alias("_cb"))
    # New names on one side: a cogroup of two sides of one plan is an ambiguous self-join to Spark.
    right = unit.select(F.col(USER_IDX).alias(NEIGHBOUR_IDX), F.col(C.ITEM_IDX).alias("_item"),
                        F.col("_w").alias("_wn"), every.alias("_qb"), block.alias("_cb"))
    keep = int(neighbours)

    def best_of_block(query_rows: pd.DataFrame, user_rows: pd.DataFrame) -> pd.DataFrame:
        return _block_neighbours(query_rows, user_rows, keep)

    found = (left.groupBy("_qb", "_cb").cogroup(right.groupBy("_qb", "_cb"))
             .applyInPandas(best_of_block, f"{USER_IDX} int, {NEIGHBOUR_IDX} int, {SIMILARITY} double"))
    best = Window.partitionBy(USER_IDX).orderBy(F.round(SIMILARITY, ORDER_DECIMALS).desc(), NEIGHBOUR_IDX)
    return (found.withColumn(NEIGHBOUR_RANK, F.row_number().over(best)).filter(F.col(NEIGHBOUR_RANK) <= neighbours)
            .join(F.broadcast(queried.select(USER_IDX, C.USER_ID)), USER_IDX)  # one row per user
            .join(F.broadcast(index.select(F.col(USER_IDX).alias(NEIGHBOUR_IDX), F.col(C.USER_ID).alias(NEIGHBOUR_ID))),
                  NEIGHBOUR_IDX)
            .select(C.USER_ID, NEIGHBOUR_ID, USER_IDX, NEIGHBOUR_IDX, SIMILARITY, NEIGHBOUR_RANK))


def _block_neighbours(query_rows: pd.DataFrame, user_rows: pd.DataFrame, neighbours: int) -> pd.DataFrame:
    """One block pair of :func:`user_neighbours`: (user_idx, item_idx, _w) rows of some query users and
    (neighbour_idx, _item, _wn) rows of some users -> (user_idx, neighbour_idx, similarity) for each query user's ``neighbours`` most
    similar other users of the block with a similarity above 0, and any tied with the last of them
    to within 10^-ORDER_DECIMALS (Spark makes the final, exact order over every block's survivors, so
    a rounding of its own here must not drop a tie)."""
    empty = pd.DataFrame({USER_IDX: np.zeros(0, np.int32), NEIGHBOUR_IDX: np.zeros(0, np.int32),
                          SIMILARITY: np.zeros(0, np.float64)})
    if query_rows.empty or user_rows.empty:
        return empty
    queried, q = np.unique(query_rows[USER_IDX].to_numpy(), return_inverse=True)
    others, o = np.unique(user_rows[NEIGHBOUR_IDX].to_numpy(), return_inverse=True)
    _, i = np.unique(np.concatenate([query_rows[C.ITEM_IDX].to_numpy(), user_rows["_item"].to_numpy()]),
                     return_inverse=True)
    items = int(i.max()) + 1
    left = sparse.csr_matrix((query_rows["_w"].to_numpy(np.float64), (q, i[:len(q)])), shape=(len(queried), items))
    right = sparse.csr_matrix((user_rows["_wn"].to_numpy(np.float64), (o, i[len(q):])), shape=(len(others), items))
    similarity = (left @ right.T).toarray()
    similarity[queried[:, None] == others[None, :]] = 0.0  # a user is not its own neighbour
    rounded = np.round(similarity, ORDER_DECIMALS)
    if len(others) > neighbours:  # each row's neighbours-th best, the floor of what it keeps
        floor = -np.partition(-rounded, neighbours - 1, axis=1)[:, neighbours - 1]
    else:
        floor = np.full(len(queried), -np.inf)
    rows, cols = np.nonzero((similarity > 0) & (rounded >= floor[:, None] - 10.0 ** -ORDER_DECIMALS))
    if not len(rows):
        return empty
    return pd.DataFrame({USER_IDX: queried[rows].astype(np.int32), NEIGHBOUR_IDX: others[cols].astype(np.int32),
                         SIMILARITY: similarity[rows, cols]})


def own_and_neighbour_weights(vectors: DataFrame, near: DataFrame, query_users: DataFrame, neighbours: int,
                              reachable: tuple[int, float] | None = None,
                              block_users: int = BLOCK_USERS) -> DataFrame:
    """(user_id, item_idx, _own, _nbr) for every query user and every item in its u or in a
    neighbour's: the user's own weight and the mean of its (at most ``neighbours``) nearest
    neighbours' weights (0 where absent). ``near`` (:func:`user_neighbours`) may hold more
    neighbours per user (for a larger grid point): only ranks <= ``neighbours`` are used.

    ``reachable`` = (k, min_alpha): only the rows that can be in the user's top k for some alpha >=
    min_alpha, exactly (the rows worth persisting for the full-ranking lists; the sampled protocol
    scores arbitrary items and reads them uncut). The bound is :func:`top_candidates`' floor made
    independent of alpha: a user's k heaviest own items all have p >= alpha x the k-th heaviest own
    weight w_k, so an item the user never bought (own 0, p = (1 - alpha) x nbr) is out of the top k
    unless (1 - alpha) x nbr >= alpha x w_k, and that bound only rises with alpha. Own items are all
    kept (the floor is made of them), and so is every row of a user with fewer than k own items. On
    Complete Journey's test queries (k = 20, alpha 0.8) 1.35 million rows of the 24.5 million remain.

    Blocked by query user (:func:`_block_weights`): each block of query users is one task that
    receives its users' neighbour lists and the vectors of the users they name, and forms the
    neighbours' mean as a sparse product. The rows out are the kept ones only; a join of every
    (user, neighbour) pair with the neighbour's items (79 million rows for the validation queries)
    and an aggregation per (user, item) took 50 s of TIFU-KNN's test lists (results/tifu-blocked-20261204/).
    """
    index = vectors.select(C.USER_ID, USER_IDX).distinct().join(
        query_users.select(C.USER_ID).distinct(), C.USER_ID, "left_semi")
    blocks, size = _blocks(vectors, block_users)
    block = ((F.col(USER_IDX) - 1) / size).cast("int")
    pairs = (near.filter(F.col(NEIGHBOUR_RANK) <= neighbours).select(USER_IDX, NEIGHBOUR_IDX, F.lit(False).alias("_self"))
             .unionByName(index.select(USER_IDX, F.col(USER_IDX).alias(NEIGHBOUR_IDX), F.lit(True).alias("_self")))
             .withColumn("_qb", block))
    # Each block's neighbours' vectors, once per block (new names: vectors and pairs share a plan).
    needed = pairs.select(F.col("_qb").alias("_vb"), F.col(NEIGHBOUR_IDX).alias("_n")).distinct()
    theirs = (vectors.select(F.col(USER_IDX).alias("_n"), F.col(C.ITEM_IDX).alias("_item"), F.col(WEIGHT).alias("_wv"))
              .join(needed, "_n"))
    cut = None if reachable is None else (int(reachable[0]), float(reachable[1]))

    def weights_of_block(block_pairs: pd.DataFrame, block_vectors: pd.DataFrame) -> pd.DataFrame:
        return _block_weights(block_pairs, block_vectors, cut)

    weights = (pairs.groupBy("_qb").cogroup(theirs.groupBy("_vb"))
               .applyInPandas(weights_of_block, f"{USER_IDX} int, {C.ITEM_IDX} int, _own double, _nbr double"))
    return weights.join(F.broadcast(index), USER_IDX).select(C.USER_ID, C.ITEM_IDX, "_own", "_nbr")  # one row per user


# Query users whose dense (users x items) own and neighbour matrices are formed at once in a block.
_CHUNK_USERS = 256


def _block_weights(pairs: pd.DataFrame, vectors: pd.DataFrame, reachable: tuple[int, float] | None) -> pd.DataFrame:
    """One query block of :func:`own_and_neighbour_weights`: (user_idx, neighbour_idx, _self) pairs
    and the (_n, _item, _wv) vector rows of every user they name -> (user_idx, item_idx, _own, _nbr)
    rows with own or nbr > 0 (cut to ``reachable`` = (k, min_alpha) when given)."""
    out = {USER_IDX: [], C.ITEM_IDX: [], "_own": [], "_nbr": []}
    if not pairs.empty and not vectors.empty:
        users, u = np.unique(pairs[USER_IDX].to_numpy(), return_inverse=True)
        named, n = np.unique(vectors["_n"].to_numpy(), return_inverse=True)
        items, i = np.unique(vectors["_item"].to_numpy(), return_inverse=True)
        theirs = sparse.csr_matrix((vectors["_wv"].to_numpy(np.float64), (n, i)), shape=(len(named), len(items)))
        at = np.searchsorted(named, pairs[NEIGHBOUR_IDX].to_numpy())  # every user named has a vector
        own_self = pairs["_self"].to_numpy(bool)
        pick = lambda rows: sparse.csr_matrix((np.ones(rows.sum()), (u[rows], at[rows])),  # noqa: E731
                                              shape=(len(users), len(named)))
        own_of, sum_of = pick(own_self), pick(~own_self)
        found = np.bincount(u[~own_self], minlength=len(users)).astype(np.float64)
        for lo in range(0, len(users), _CHUNK_USERS):
            hi = min(lo + _CHUNK_USERS, len(users))
            own = (own_of[lo:hi] @ theirs).toarray()  # one 1 per row: the user's own weights, exactly
            nbr = (sum_of[lo:hi] @ theirs).toarray()
            np.divide(nbr, found[lo:hi, None], out=nbr, where=found[lo:hi, None] > 0)
            keep = (own > 0) | (nbr > 0)
            if reachable is not None:
                k, alpha = reachable
                owned = (own > 0).sum(axis=1)
                cut_rows = owned >= k  # users with fewer own items than k keep every row
                if cut_rows.any():
                    kth = np.full(hi - lo, np.inf)
                    kth[cut_rows] = -np.partition(-own[cut_rows], k - 1, axis=1)[:, k - 1]
                    # The margin keeps rows whose bound is met at ORDER_DECIMALS, as top_candidates' floor does.
                    reach = (1.0 - alpha) * nbr >= alpha * kth[:, None] - 10.0 ** -ORDER_DECIMALS
                    keep &= (own > 0) | ~cut_rows[:, None] | reach
            rows, cols = np.nonzero(keep)
            out[USER_IDX].append(users[lo + rows])
            out[C.ITEM_IDX].append(items[cols])
            out["_own"].append(own[rows, cols])
            out["_nbr"].append(nbr[rows, cols])
    joined = {name: (np.concatenate(parts) if parts else np.zeros(0)) for name, parts in out.items()}
    return pd.DataFrame({USER_IDX: joined[USER_IDX].astype(np.int32), C.ITEM_IDX: joined[C.ITEM_IDX].astype(np.int32),
                         "_own": joined["_own"].astype(np.float64), "_nbr": joined["_nbr"].astype(np.float64)})


def _blocks(vectors: DataFrame, block_users: int) -> tuple[int, int]:
    """(number of blocks, users per block) for users 1 .. max(user_idx) (dense) in blocks of at most
    ``block_users``, all of one size: 2 blocks of 1,235 rather than 2,048 and 421."""
    users = vectors.agg(F.max(USER_IDX)).first()[0] or 0
    blocks = max(1, -(-users // block_users))
    return blocks, max(1, -(-users // blocks))


def with_prediction(weights: DataFrame, alpha: float) -> DataFrame:
    """Adds ``score`` = alpha x own + (1 - alpha) x neighbours' mean (p of the module docstring)."""
    return weights.withColumn(C.SCORE, F.lit(float(alpha)) * F.col("_own") + F.lit(1.0 - float(alpha)) * F.col("_nbr"))


def predicted_scores(weights: DataFrame, queries: DataFrame, alpha: float, exclude_seen: bool) -> DataFrame:
    """(user_id, item_idx, score): p from :func:`own_and_neighbour_weights` rows, p > 0 only, minus
    the user's seen items (queries' ``seen_idx``) when ``exclude_seen``. Tuning reuses one set of
    weights for every alpha."""
    scored = weights.transform(with_prediction, alpha).filter(F.col(C.SCORE) > 0).select(C.USER_ID, C.ITEM_IDX, C.SCORE)
    if exclude_seen:
        seen = queries.select(C.USER_ID, F.explode("seen_idx").alias(C.ITEM_IDX))
        scored = scored.join(seen, [C.USER_ID, C.ITEM_IDX], "left_anti")
    return scored


def top_candidates(weights: DataFrame, queries: DataFrame, alpha: float, exclude_seen: bool, k: int) -> DataFrame:
    """:func:`predicted_scores` cut to the rows that can be in a user's top k, exactly.

    A user's k heaviest own items have p >= their smallest p (the floor), so the k-th best p overall
    is at least the floor and nothing below it can be in the top k. The floor needs only the user's
    own items (hundreds), while p has an entry for every item of every neighbour (thousands): the
    ranking then sorts the few rows above the floor. Users with fewer than k own items (and every
    user with ``exclude_seen``, whose own items are all seen) get no floor.
    """
    scored = predicted_scores(weights, queries, alpha, exclude_seen)
    if exclude_seen:
        return scored
    heaviest = Window.partitionBy(C.USER_ID).orderBy(F.col("_own").desc(), C.ITEM_IDX)
    floors = (weights.filter(F.col("_own") > 0).withColumn("_r", F.row_number().over(heaviest))
              .filter(F.col("_r") <= k).transform(with_prediction, alpha)
              .groupBy(C.USER_ID).agg(F.min(C.SCORE).alias("_floor"), F.count(F.lit(1)).alias("_n"))
              .filter(F.col("_n") >= k))
    # The margin keeps scores equal to the floor at ORDER_DECIMALS (ties) whatever the summation order.
    return (scored.join(F.broadcast(floors), C.USER_ID, "left")  # one row per user
            .filter(F.col("_floor").isNull() | (F.col(C.SCORE) >= F.col("_floor") - F.lit(10.0 ** -ORDER_DECIMALS)))
            .select(C.USER_ID, C.ITEM_IDX, C.SCORE))


def tifu_scores(vectors: DataFrame, near: DataFrame, queries: DataFrame, *, neighbours: int, alpha: float,
                exclude_seen: bool) -> DataFrame:
    """(user_id, item_idx, score): p for every query user and item with p > 0 (see
    :func:`predicted_scores`), from the user vectors and :func:`user_neighbours`."""
    return predicted_scores(own_and_neighbour_weights(vectors, near, queries, neighbours), queries, alpha, exclude_seen)


def top_k_with_fillers(scores: DataFrame, vocab: DataFrame, queries: DataFrame, k: int, exclude_seen: bool) -> DataFrame:
    """(user_id, rank, item_id, score): each query user's k best (user_id, item_idx, score) rows,
    best first (ties at ``ORDER_DECIMALS`` decimals: smaller item index), then the most popular
    items not already listed; fillers score 0."""
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
    """TIFU-KNN's top k for every query user (user_id, seen_idx), one row per (user, rank),
    computed here and returned persisted (the caller unpersists it).

    ``baskets``: :func:`history_baskets` of the period before the evaluated one (train for
    validation queries, train + validation for test queries), for every user: neighbours come from
    all users, predictions only for the query users.

    Eager, unlike the transforms above: the vectors, neighbours and weights are each read several
    times downstream, so they are persisted while the lists are computed (without that every read
    repeats the whole plan: hundreds of shuffles) and released before returning.
    """
    vectors = user_vectors(baskets, group_count, within_decay, group_decay).persist()
    near = user_neighbours(vectors, queries, neighbours, similarity_items).persist()
    weights = own_and_neighbour_weights(vectors, near, queries, neighbours,
                                        reachable=None if exclude_seen else (k, alpha)).persist()
    lists = top_k_with_fillers(top_candidates(weights, queries, alpha, exclude_seen, k), vocab, queries, k,
                               exclude_seen).persist()
    lists.count()  # materialised before its inputs are released
    for df in (weights, near, vectors):
        df.unpersist()
    return lists
