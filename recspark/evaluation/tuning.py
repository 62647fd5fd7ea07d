"""ALS hyper-parameters chosen without touching the test split: on validation, or by cross-validation.

* :func:`tune_als_on_validation`: for each (rank, reg_param) of the grids, fit on the training
  period and score the validation queries; the best NDCG@k wins. (The test-time refit on train +
  validation is the evaluation stage's.)
* :func:`cross_validate_als`: ``folds`` folds, each with its own fit per grid point, reporting the
  mean and the standard deviation (across folds, ddof=1) of every metric; the best mean NDCG@k wins.
  Two schemes:

  - ``users``: users are hashed into folds. Fold f's model sees every user's training period plus
    the validation period of the users outside f, and is scored on the validation queries of the
    users in f: each fold has a different training set, so the spread reflects the fit, not only
    the sample of users.
  - ``time``: rolling origin inside the training period (validation and test are not touched).
    Fold f trains on training events before cut f and is scored on each user's items between cut f
    and cut f+1 (users with at least one earlier event). The cuts are quantiles of the training
    events' times, each window holding about ``1 / (folds + 1)`` of the last half of the events.

Every fit costs one ALS training (about 30 s on Complete Journey on 2 cores), so the cost is
``len(ranks) x len(reg_params)`` fits on validation and ``folds`` times that for cross-validation.

* :func:`tune_tifu_on_validation`: TIFU-KNN's grid (vector settings x neighbours x alphas), user
  vectors and neighbours from the training baskets, scored on the validation queries; the best
  NDCG@k wins. The costly parts are shared: one set of vectors and neighbours per vector setting,
  one neighbour mean per neighbour count, and each alpha only mixes and ranks.
"""
from __future__ import annotations

import math
import statistics
import time

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.evaluation.baselines import als_top_k, fit_als, interactions_of, train_steps
from recspark.evaluation.ranking import NDCG_AT_K, ranking_metrics
from recspark.evaluation.tifu_knn import (
    history_baskets, own_and_neighbour_weights, top_candidates, top_k_with_fillers, user_neighbours,
    user_vectors,
)
from recspark.scoring import ranked_list

SELECTION_METRIC = NDCG_AT_K


def score_lists(recommendations: DataFrame, queries: DataFrame, k: int) -> dict[str, float]:
    """Ranking metrics@k of (user_id, rank, item_id) lists against queries (user_id, relevant item ids).
    Query users without a list count with an empty one."""
    lists = recommendations.groupBy(C.USER_ID).agg(ranked_list().alias(C.PREDICTION))
    relevant_type = queries.schema[C.RELEVANT].dataType
    scored = queries.select(C.USER_ID, C.RELEVANT).join(lists, C.USER_ID, "left").withColumn(
        C.PREDICTION, F.coalesce(C.PREDICTION, F.array().cast(relevant_type)))
    return ranking_metrics(scored, k)


def _grid(ranks: list, reg_params: list) -> list[tuple[int, float]]:
    return [(int(r), float(g)) for r in ranks for g in reg_params]


def _best(results: list[dict], key) -> dict:
    # NaN (no queries) never wins; ties keep the first grid point (smaller rank, smaller reg).
    return max(results, key=lambda r: -math.inf if math.isnan(key(r)) else key(r))


def tune_als_on_validation(sequences: DataFrame, vocab: DataFrame, validation_queries: DataFrame, k: int,
                           exclude_seen: bool, *, ranks: list, reg_params: list, max_iter: int, alpha: float,
                           seed: int, first_item_idx: int) -> dict:
    """Fits ALS on the training period for every grid point and scores the validation queries.

    ``validation_queries``: (user_id, relevant, seen_idx) of split validation. Returns
    ``{"selection", "grid": [{rank, reg_param, seconds, validation: {metric: value}}], "chosen": {rank, reg_param}}``.
    """
    steps = train_steps(sequences, first_item_idx=first_item_idx)
    interactions = interactions_of(steps.select(C.USER_ID, C.ITEM_IDX), first_item_idx=first_item_idx).persist()  # read by every fit
    results = []
    for rank, reg_param in _grid(ranks, reg_params):
        started = time.perf_counter()
        model, users = fit_als(interactions, rank=rank, reg_param=reg_param, max_iter=max_iter, alpha=alpha, seed=seed)
        metrics = score_lists(als_top_k(model, users, vocab, validation_queries, k, exclude_seen), validation_queries, k)
        results.append({"rank": rank, "reg_param": reg_param, "seconds": round(time.perf_counter() - started, 1),
                        "validation": metrics})
    interactions.unpersist()
    best = _best(results, lambda r: r["validation"][SELECTION_METRIC])
    return {"selection": f"{SELECTION_METRIC.replace('_at_k', '')}@{k} on the validation queries, fit on train",
            "grid": results, "chosen": {"rank": best["rank"], "reg_param": best["reg_param"]}}


def user_folds(sequences: DataFrame, eval_queries: DataFrame, folds: int, seed: int, *, first_item_idx: int):
    """Yields (fold, training interactions, queries) for the ``users`` scheme (see module)."""
    fold_of = F.pmod(F.xxhash64(C.USER_ID, F.lit(seed)), F.lit(folds))
    steps = sequences.select(C.USER_ID, fold_of.alias("_fold"),
                             F.explode(F.arrays_zip(C.ITEM_IDX, C.SPLIT)).alias("_s"))
    validation = eval_queries.filter(F.col(C.SPLIT) == C.VALIDATION).withColumn("_fold", fold_of)
    for fold in range(folds):
        kept = (F.col("_s")[C.SPLIT] == "train") | ((F.col("_s")[C.SPLIT] == C.VALIDATION) & (F.col("_fold") != fold))
        interactions = interactions_of(steps.filter(kept).select(C.USER_ID, F.col("_s")[C.ITEM_IDX].alias(C.ITEM_IDX)),
                                       first_item_idx=first_item_idx)
        queries = validation.filter(F.col("_fold") == fold).select(C.USER_ID, C.RELEVANT, "seen_idx")
        yield fold, interactions, queries


def time_folds(sequences: DataFrame, folds: int, *, first_item_idx: int):
    """Yields (fold, training interactions, queries) for the ``time`` scheme (see module)."""
    steps = train_steps(sequences, first_item_idx=first_item_idx).withColumn("_t", F.col(C.EVENT_TS).cast("double")).persist()
    # Cuts at the quantiles 1/2 + f / (2 (folds + 1)) of event times, f = 1 .. folds; the last window ends at the end.
    shares = [0.5 + f / (2 * (folds + 1)) for f in range(1, folds + 1)]
    cuts = list(steps.agg(F.percentile_approx("_t", shares, 10000)).first()[0])  # one row of folds numbers
    for fold, start in enumerate(cuts):
        end = cuts[fold + 1] if fold + 1 < len(cuts) else math.inf
        before = steps.filter(F.col("_t") < start)
        window = steps.filter((F.col("_t") >= start) & (F.col("_t") < F.lit(end)))
        seen = before.groupBy(C.USER_ID).agg(F.collect_set(C.ITEM_IDX).alias("seen_idx"))
        relevant = window.groupBy(C.USER_ID).agg(F.collect_set(C.ITEM_ID).alias(C.RELEVANT))
        # Only users with history before the cut: ALS has no factors for the others.
        yield fold, interactions_of(before.select(C.USER_ID, C.ITEM_IDX), first_item_idx=first_item_idx), relevant.join(seen, C.USER_ID)


def cross_validate_als(sequences: DataFrame, vocab: DataFrame, eval_queries: DataFrame, k: int, exclude_seen: bool, *,
                       scheme: str, folds: int, ranks: list, reg_params: list, max_iter: int, alpha: float,
                       seed: int, first_item_idx: int) -> dict:
    """Mean and standard deviation of every metric@k per grid point over ``folds`` folds (see module).

    Returns ``{"scheme", "folds", "selection", "grid": [{rank, reg_param, mean: {...}, std: {...},
    per_fold: [{...}]}], "chosen": {rank, reg_param}, "seconds"}``.
    """
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    if scheme == "users":
        fold_data = user_folds(sequences, eval_queries, folds, seed, first_item_idx=first_item_idx)
    elif scheme == "time":
        fold_data = time_folds(sequences, folds, first_item_idx=first_item_idx)
    else:
        raise ValueError(f"unknown cross-validation scheme {scheme!r} (users or time)")
    started = time.perf_counter()
    per_point: dict[tuple[int, float], list[dict[str, float]]] = {point: [] for point in _grid(ranks, reg_params)}
    for _, interactions, queries in fold_data:
        interactions, queries = interactions.persist(), queries.persist()
        for rank, reg_param in per_point:
            model, users = fit_als(interactions, rank=rank, reg_param=reg_param, max_iter=max_iter, alpha=alpha, seed=seed)
            per_point[(rank, reg_param)].append(
                score_lists(als_top_k(model, users, vocab, queries, k, exclude_seen), queries, k))
        interactions.unpersist()
        queries.unpersist()
    grid = []
    for (rank, reg_param), fold_metrics in per_point.items():
        names = list(fold_metrics[0])
        grid.append({"rank": rank, "reg_param": reg_param,
                     "mean": {n: statistics.fmean(m[n] for m in fold_metrics) for n in names},
                     "std": {n: statistics.stdev(m[n] for m in fold_metrics) for n in names},
                     "per_fold": fold_metrics})
    best = _best(grid, lambda r: r["mean"][SELECTION_METRIC])
    return {"scheme": scheme, "folds": folds,
            "selection": f"mean {SELECTION_METRIC.replace('_at_k', '')}@{k} over {folds} {scheme} folds",
            "grid": grid, "chosen": {"rank": best["rank"], "reg_param": best["reg_param"]},
            "seconds": round(time.perf_counter() - started, 1)}


def tifu_grid(vector_settings, neighbours, alphas) -> list[dict]:
    """Every TIFU-KNN grid point as a dict, in the order tried (ties keep the first)."""
    return [{"group_count": int(m), "within_decay": float(rb), "group_decay": float(rg), "neighbours": int(n),
             "alpha": float(a)} for m, rb, rg in vector_settings for n in neighbours for a in alphas]


def tune_tifu_on_validation(sequences: DataFrame, vocab: DataFrame, validation_queries: DataFrame, k: int,
                            exclude_seen: bool, *, vector_settings, neighbours, alphas,
                            similarity_items: int | None, first_item_idx: int) -> dict:
    """TIFU-KNN on every grid point (see :func:`tifu_grid`), vectors and neighbours from the training
    baskets, scored on the validation queries (user_id, relevant, seen, seen_idx).

    Returns ``{"selection", "grid": [{group_count, within_decay, group_decay, neighbours, alpha,
    seconds, validation: {metric: value}}], "build_seconds": [...], "chosen": {...}}``; a point's
    seconds are its own mixing, ranking and scoring, ``build_seconds`` the vectors and neighbours
    of each vector setting.
    """
    if not vector_settings or not neighbours or not alphas:
        raise ValueError("the TIFU-KNN grid needs at least one vector setting, neighbour count and alpha")
    queries = validation_queries.persist()
    baskets = history_baskets(sequences, ("train",), first_item_idx=first_item_idx).persist()
    results, builds = [], []
    for group_count, within_decay, group_decay in vector_settings:
        started = time.perf_counter()
        vectors = user_vectors(baskets, int(group_count), float(within_decay), float(group_decay)).persist()
        near = user_neighbours(vectors, queries, max(int(n) for n in neighbours), similarity_items).persist()
        near.count()  # materialised here, so that the build is timed apart from the first point
        builds.append({"group_count": int(group_count), "within_decay": float(within_decay),
                       "group_decay": float(group_decay), "seconds": round(time.perf_counter() - started, 1)})
        for n in neighbours:
            # Cut once for the whole alpha grid: what no alpha of it can list is never persisted.
            reach = None if exclude_seen else (k, min(float(a) for a in alphas))
            weights = own_and_neighbour_weights(vectors, near, queries, int(n), reachable=reach).persist()
            for alpha in alphas:
                started = time.perf_counter()
                lists = top_k_with_fillers(top_candidates(weights, queries, float(alpha), exclude_seen, k), vocab,
                                           queries, k, exclude_seen)
                metrics = score_lists(lists, queries, k)
                results.append({**tifu_grid([(group_count, within_decay, group_decay)], [n], [alpha])[0],
                                "seconds": round(time.perf_counter() - started, 1), "validation": metrics})
            weights.unpersist()
        near.unpersist()
        vectors.unpersist()
    baskets.unpersist()
    queries.unpersist()
    best = _best(results, lambda r: r["validation"][SELECTION_METRIC])
    chosen = {name: best[name] for name in ("group_count", "within_decay", "group_decay", "neighbours", "alpha")}
    return {"selection": f"{SELECTION_METRIC.replace('_at_k', '')}@{k} on the validation queries, user vectors "
                         "and neighbours from the training baskets",
            "grid": results, "build_seconds": builds, "chosen": chosen}
