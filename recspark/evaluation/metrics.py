"""Reference top-K ranking metrics in plain Python, defined exactly as Spark's ``RankingMetrics``.

These are the ground truth the distributed evaluator (:mod:`recspark.evaluation.ranking`) is tested
against, so they favour obvious loops over speed. Every function takes ``predicted`` and
``relevant``: one entry per query (user), each an item-id sequence. ``predicted[u]`` is ranked,
best first; ``relevant[u]`` is treated as a set. The result is the mean over all queries.

Conventions, all copied from ``org.apache.spark.mllib.evaluation.RankingMetrics`` (Spark 4.0) so that
our numbers can be compared with anything computed by Spark:

* Relevance is binary: an item is relevant iff it is in ``relevant[u]``.
* Every *occurrence* of a relevant item in the prediction counts as a hit. Spark does not
  de-duplicate predictions, so with duplicates recall, NDCG and AP can exceed 1; a well-formed
  recommender never emits duplicates, and matching Spark keeps the two implementations comparable.
* A query with an empty relevant set scores 0 on every metric and still counts in the mean
  (Spark logs a warning and uses 0). This punishes evaluation sets with such users, so filter them
  out upstream if that is not what you want.
* The mean over zero queries is NaN (as Spark's ``RDD.mean`` of an empty RDD).

Spark has no hit rate and no MRR; :func:`hit_rate_at_k` and :func:`mrr_at_k` follow the same
conventions (binary relevance, empty relevant set -> 0).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from numbers import Integral

import numpy as np

ItemLists = Sequence[Sequence[Hashable]]

__all__ = [
    "precision_at_k",
    "recall_at_k",
    "ndcg_at_k",
    "map_at_k",
    "mean_average_precision",
    "hit_rate_at_k",
    "mrr_at_k",
    "roc_auc",
    "log_loss",
    "confusion_at_threshold",
    "accuracy_at_threshold",
    "precision_at_threshold",
    "recall_at_threshold",
    "f1_at_threshold",
    "best_f1_threshold",
]


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------

def _check_k(k: int) -> int:
    # bool is an int subclass; k=True is almost certainly a bug, not "k=1".
    if isinstance(k, bool) or not isinstance(k, Integral):
        raise TypeError(f"k must be a positive int, got {type(k).__name__}: {k!r}")
    if k <= 0:
        raise ValueError(f"k must be a positive int, got {k}")
    return int(k)


def _as_item_list(items: object, what: str, index: int, ordered: bool) -> list[Hashable]:
    # A str is a Sequence, but "abc" as a list of three one-letter items is never intended.
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise TypeError(
            f"{what}[{index}] must be a sequence of item ids, got {type(items).__name__}: {items!r}"
        )
    # A set has no order, so it cannot be a ranking (it is fine as a relevant set).
    if ordered and isinstance(items, (set, frozenset, dict)):
        raise TypeError(f"{what}[{index}] must be an ordered sequence, got {type(items).__name__}")
    return list(items)


def _check_lists(predicted: ItemLists, relevant: ItemLists) -> list[tuple[list[Hashable], set[Hashable]]]:
    for name, value in (("predicted", predicted), ("relevant", relevant)):
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise TypeError(f"{name} must be a sequence of item-id sequences, got {type(value).__name__}")
    predicted, relevant = list(predicted), list(relevant)
    if len(predicted) != len(relevant):
        raise ValueError(
            f"predicted and relevant must have the same length (one entry per query), "
            f"got {len(predicted)} and {len(relevant)}"
        )
    pairs = []
    for i, (pred, rel) in enumerate(zip(predicted, relevant)):
        pred_list = _as_item_list(pred, "predicted", i, ordered=True)
        rel_set = set(_as_item_list(rel, "relevant", i, ordered=False))
        pairs.append((pred_list, rel_set))
    return pairs


def _mean(per_query: Callable[[list[Hashable], set[Hashable]], float],
          predicted: ItemLists, relevant: ItemLists) -> float:
    pairs = _check_lists(predicted, relevant)
    if not pairs:
        return math.nan
    return float(np.mean([per_query(pred, rel) if rel else 0.0 for pred, rel in pairs]))


def _hits(pred: list[Hashable], rel: set[Hashable], n: int | None = None) -> list[int]:
    """1/0 per position of ``pred[:n]``; duplicates of a relevant item are each a hit (as Spark)."""
    return [1 if item in rel else 0 for item in pred[:n]]


def _average_precision(pred: list[Hashable], rel: set[Hashable], n: int | None, denominator: int) -> float:
    hits, precision_sum = 0, 0.0
    for rank, hit in enumerate(_hits(pred, rel, n), start=1):
        if hit:
            hits += 1
            precision_sum += hits / rank
    return precision_sum / denominator


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------

def precision_at_k(predicted: ItemLists, relevant: ItemLists, k: int) -> float:
    """Mean precision@k: ``|hits in pred[:k]| / k`` (Spark ``precisionAt``).

    The denominator is k even if fewer than k items are predicted, so a recommender that returns
    short lists is not rewarded for it.
    """
    k = _check_k(k)
    return _mean(lambda pred, rel: sum(_hits(pred, rel, k)) / k, predicted, relevant)


def recall_at_k(predicted: ItemLists, relevant: ItemLists, k: int) -> float:
    """Mean recall@k: ``|hits in pred[:k]| / |relevant|`` (Spark ``recallAt``).

    The denominator is the full relevant-set size, not ``min(k, |relevant|)``, so recall@k < 1 when
    a user has more than k relevant items. Empty relevant set -> 0 (not undefined), as Spark.
    """
    k = _check_k(k)
    return _mean(lambda pred, rel: sum(_hits(pred, rel, k)) / len(rel), predicted, relevant)


def ndcg_at_k(predicted: ItemLists, relevant: ItemLists, k: int) -> float:
    """Mean NDCG@k with binary gains (Spark ``ndcgAt``).

    ``DCG = sum_{i=1..min(k, |pred|)} hit_i / log2(i + 1)`` and the ideal
    ``IDCG = sum_{i=1..min(k, |relevant|)} 1 / log2(i + 1)``; NDCG = DCG / IDCG. Spark uses the
    natural log, which gives the same ratio (the base cancels). Duplicated hits each add gain
    while the ideal counts each relevant item once, so NDCG can exceed 1 with duplicates.
    """
    k = _check_k(k)

    def per_query(pred: list[Hashable], rel: set[Hashable]) -> float:
        dcg = sum(hit / math.log2(rank + 1) for rank, hit in enumerate(_hits(pred, rel, k), start=1))
        idcg = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(k, len(rel)) + 1))
        return dcg / idcg

    return _mean(per_query, predicted, relevant)


def map_at_k(predicted: ItemLists, relevant: ItemLists, k: int) -> float:
    """Mean average precision at k (Spark ``meanAveragePrecisionAt``).

    ``AP@k = sum_{i<=k, hit_i} precision@i / min(|relevant|, k)``: dividing by ``min(|relevant|, k)``
    rather than ``|relevant|`` makes a perfect top-k list score 1 even when more than k items are
    relevant.
    """
    k = _check_k(k)
    return _mean(lambda pred, rel: _average_precision(pred, rel, k, min(len(rel), k)), predicted, relevant)


def mean_average_precision(predicted: ItemLists, relevant: ItemLists) -> float:
    """Mean average precision over the whole predicted list (Spark ``meanAveragePrecision``).

    ``AP = sum_{i<=|pred|, hit_i} precision@i / |relevant|``. There is no k: the whole list is
    scored, so this is a separate function rather than :func:`map_at_k` with an optional k. (Spark
    calls its AP helper with ``k = max(|pred|, |relevant|)``, which reduces to exactly this.)
    """
    return _mean(lambda pred, rel: _average_precision(pred, rel, None, len(rel)), predicted, relevant)


def hit_rate_at_k(predicted: ItemLists, relevant: ItemLists, k: int) -> float:
    """Mean hit rate@k: 1 if any of ``pred[:k]`` is relevant, else 0. Not in Spark.

    The share of users for whom the top-k contains at least one relevant item: the plainest
    "did we help this user at all" number.
    """
    k = _check_k(k)
    return _mean(lambda pred, rel: float(any(_hits(pred, rel, k))), predicted, relevant)


def mrr_at_k(predicted: ItemLists, relevant: ItemLists, k: int) -> float:
    """Mean reciprocal rank@k: ``1 / rank`` of the first relevant item in ``pred[:k]``, else 0.

    Not in Spark's ``RankingMetrics``; defined with Spark's conventions (binary relevance, empty
    relevant set -> 0). It rewards putting the first good item at the very top.
    """
    k = _check_k(k)

    def per_query(pred: list[Hashable], rel: set[Hashable]) -> float:
        for rank, hit in enumerate(_hits(pred, rel, k), start=1):
            if hit:
                return 1.0 / rank
        return 0.0

    return _mean(per_query, predicted, relevant)


# --------------------------------------------------------------------------------------------------
# Classification metrics for the probability path (label in {0, 1}, probability in [0, 1])
# --------------------------------------------------------------------------------------------------
# A pair is predicted positive iff probability >= threshold. Degenerate cases are defined, not
# errors: AUC is NaN without both classes; precision is 0 with no predicted positive, recall 0
# with no positive; F1 = 2 TP / (2 TP + FP + FN) (the harmonic mean of precision and recall, 0 when
# TP = 0). These are the definitions recspark.evaluation.classification computes in Spark.

LOG_LOSS_EPS = 1e-15


def _check_pairs(labels: Sequence[float], probabilities: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and probabilities must have the same length, got {y.size} and {p.size}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("probabilities must be in [0, 1]")
    return y, p


def roc_auc(labels: Sequence[float], probabilities: Sequence[float]) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative, a tie counting 1/2 (Mann-Whitney U / (P N), from average ranks). NaN without both classes.

    This is the trapezoidal area under the ROC curve with tied scores as one step, as Spark's
    ``BinaryClassificationMetrics`` without binning computes it.
    """
    y, p = _check_pairs(labels, probabilities)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(p, kind="stable")
    ranks = np.empty(p.size, dtype=np.float64)
    sorted_p = p[order]
    start = 0
    while start < p.size:  # each run of equal scores gets the mean of its 1-based ranks
        end = start
        while end + 1 < p.size and sorted_p[end + 1] == sorted_p[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def log_loss(labels: Sequence[float], probabilities: Sequence[float], eps: float = LOG_LOSS_EPS) -> float:
    """Mean binary cross-entropy ``-(y ln p + (1 - y) ln(1 - p))`` (natural log), p clipped to
    ``[eps, 1 - eps]`` so that one confident mistake costs ln(1/eps) instead of infinity. NaN if empty."""
    y, p = _check_pairs(labels, probabilities)
    if y.size == 0:
        return math.nan
    p = np.clip(p, eps, 1 - eps)
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))


def confusion_at_threshold(labels: Sequence[float], probabilities: Sequence[float], threshold: float) -> dict[str, int]:
    """``{tp, fp, fn, tn}`` with a pair predicted positive iff probability >= threshold."""
    y, p = _check_pairs(labels, probabilities)
    predicted = p >= threshold
    positive = y == 1
    return {"tp": int((predicted & positive).sum()), "fp": int((predicted & ~positive).sum()),
            "fn": int((~predicted & positive).sum()), "tn": int((~predicted & ~positive).sum())}


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def accuracy_at_threshold(labels: Sequence[float], probabilities: Sequence[float], threshold: float) -> float:
    """(TP + TN) / pairs; NaN if there are no pairs."""
    c = confusion_at_threshold(labels, probabilities, threshold)
    n = sum(c.values())
    return (c["tp"] + c["tn"]) / n if n else math.nan


def precision_at_threshold(labels: Sequence[float], probabilities: Sequence[float], threshold: float) -> float:
    """TP / (TP + FP); 0 when nothing is predicted positive."""
    c = confusion_at_threshold(labels, probabilities, threshold)
    return _ratio(c["tp"], c["tp"] + c["fp"])


def recall_at_threshold(labels: Sequence[float], probabilities: Sequence[float], threshold: float) -> float:
    """TP / (TP + FN); 0 when there is no positive."""
    c = confusion_at_threshold(labels, probabilities, threshold)
    return _ratio(c["tp"], c["tp"] + c["fn"])


def f1_at_threshold(labels: Sequence[float], probabilities: Sequence[float], threshold: float) -> float:
    """2 TP / (2 TP + FP + FN): the harmonic mean of precision and recall; 0 when TP = 0."""
    c = confusion_at_threshold(labels, probabilities, threshold)
    return _ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"])


def best_f1_threshold(labels: Sequence[float], probabilities: Sequence[float]) -> tuple[float, float]:
    """``(threshold, F1)`` maximising F1 over the thresholds that matter: every distinct probability
    (between two of them nothing changes). Ties in F1 go to the highest threshold (fewest positive
    predictions). Choose it on validation pairs, then report test metrics at it. NaN, NaN if empty.
    """
    y, p = _check_pairs(labels, probabilities)
    if y.size == 0:
        return math.nan, math.nan
    best = (math.nan, -1.0)
    for threshold in sorted(set(p.tolist()), reverse=True):  # highest first: ties keep the highest
        f1 = f1_at_threshold(y, p, threshold)
        if f1 > best[1]:
            best = (threshold, f1)
    return best
