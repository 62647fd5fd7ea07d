"""Beyond accuracy: what a recommender shows, not only whether it hits.

Two implementations with the same definitions: plain-Python references (the ground truth, obvious
loops) and Spark aggregates over a recommendations DataFrame (user_id, rank, item_id), which is
what the evaluation stage runs. Definitions, over each user's top-K list:

* catalogue coverage: distinct recommended items / catalogue (vocabulary) size;
* relative popularity: mean training count of recommended items (each list occurrence counts) /
  mean training count of a catalogue item (1.0 = as popular as the average item);
* novelty: the mean self-information ``-log2 p(i)`` of recommended items, ``p(i) = count(i) /
  sum of all training counts``; averaged over each user's list, then over users (so a user with a
  short list weighs as much as any other). Higher = less obvious items. Items without a training
  count (never the case for vocabulary-based recommenders) are left out, as their p is 0;
* intra-list diversity: per user with at least 2 recommended items, the share of pairs of list
  positions whose items have different categories; mean over those users. Items without a known
  category share the category ``unknown`` (as silver items do). Duplicated items form same-category
  pairs. Computed in Spark from category counts, ``(n^2 - sum_c n_c^2) / (n (n - 1))``, which
  equals the pairwise share without forming pairs.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recspark import constants as C

UNKNOWN_CATEGORY = "unknown"
_GROUP = "__beyond_group"
COVERAGE, POPULARITY, NOVELTY, DIVERSITY = (
    "catalogue_coverage", "relative_popularity", "novelty", "intra_list_diversity")


def novelty_reference(recommended: Sequence[Sequence[Hashable]], train_counts: Mapping[Hashable, int]) -> float:
    """Mean over users of the mean ``-log2(count(i) / total count)`` of the user's items (see module)."""
    total = sum(train_counts.values())
    per_user = []
    for items in recommended:
        known = [train_counts[i] for i in items if train_counts.get(i, 0) > 0]
        if known:
            per_user.append(sum(-math.log2(c / total) for c in known) / len(known))
    return sum(per_user) / len(per_user) if per_user else math.nan


def intra_list_diversity_reference(recommended: Sequence[Sequence[Hashable]],
                                   categories: Mapping[Hashable, str]) -> float:
    """Mean over users (lists of >= 2 items) of the share of position pairs with different categories."""
    per_user = []
    for items in recommended:
        cats = [categories.get(i) or UNKNOWN_CATEGORY for i in items]
        pairs = list(combinations(cats, 2))
        if pairs:
            per_user.append(sum(a != b for a, b in pairs) / len(pairs))
    return sum(per_user) / len(per_user) if per_user else math.nan


def coverage_reference(recommended: Sequence[Sequence[Hashable]], catalogue_size: int) -> float:
    """Distinct recommended items / catalogue size."""
    return len({i for items in recommended for i in items}) / catalogue_size if catalogue_size else 0.0


def relative_popularity_reference(recommended: Sequence[Sequence[Hashable]],
                                  train_counts: Mapping[Hashable, int]) -> float:
    """Mean training count over every list occurrence / mean training count of a catalogue item."""
    occurrences = [train_counts.get(i, 0) for items in recommended for i in items]
    mean_item = sum(train_counts.values()) / len(train_counts) if train_counts else 0.0
    return (sum(occurrences) / len(occurrences)) / mean_item if occurrences and mean_item else 0.0


def beyond_accuracy_reference(recommended: Sequence[Sequence[Hashable]], train_counts: Mapping[Hashable, int],
                              categories: Mapping[Hashable, str]) -> dict[str, float]:
    """All four numbers from plain Python; the catalogue is the keys of ``train_counts``."""
    return {COVERAGE: coverage_reference(recommended, len(train_counts)),
            POPULARITY: relative_popularity_reference(recommended, train_counts),
            NOVELTY: novelty_reference(recommended, train_counts),
            DIVERSITY: intra_list_diversity_reference(recommended, categories)}


def _nan_if_null(value: float | None) -> float:
    return math.nan if value is None else float(value)


def beyond_accuracy(recommendations: DataFrame, vocab: DataFrame, categories: DataFrame | None = None) -> dict[str, float]:
    """The four numbers of the module docstring from Spark aggregates.

    ``recommendations``: (user_id, item_id), one row per list position, already cut to the top K;
    ``vocab``: (item_id, train_count), the catalogue; ``categories``: (item_id, category), or None
    (every item then has the same, unknown, category, so diversity is 0).
    """
    return beyond_accuracy_by_group(recommendations.withColumn(_GROUP, F.lit(0)), vocab, categories, _GROUP,
                                    groups=[0])[0]


def beyond_accuracy_by_group(recommendations: DataFrame, vocab: DataFrame, categories: DataFrame | None,
                             group_col: str, groups: Sequence[Hashable] = ()) -> dict[Hashable, dict[str, float]]:
    """:func:`beyond_accuracy` per value of ``group_col`` of ``recommendations`` (e.g. one per model).

    Four Spark jobs whatever the number of groups; one small row per group reaches the driver. A value
    in ``groups`` without rows gets coverage and popularity 0 and NaN novelty and diversity.
    """
    stats = vocab.agg(F.count(F.lit(1)).alias("items"), F.sum(C.TRAIN_COUNT).alias("total"),
                      F.avg(C.TRAIN_COUNT).alias("mean_count")).first()
    counts = F.broadcast(vocab.select(C.ITEM_ID, F.col(C.TRAIN_COUNT).cast("double").alias("_count")))
    lists = recommendations.select(F.col(group_col).alias(_GROUP), C.USER_ID, C.ITEM_ID)
    recs = lists.join(counts, C.ITEM_ID, "left")
    total = float(stats["total"] or 0)
    # -log2(count / total); null for items without a count, which avg() then skips, as the reference.
    self_information = F.when(F.col("_count") > 0, -F.log2(F.col("_count") / F.lit(total)))
    per_user_novelty = recs.groupBy(_GROUP, C.USER_ID).agg(F.avg(self_information).alias("_novelty"))
    shown = {r[_GROUP]: r for r in recs.groupBy(_GROUP).agg(
        F.countDistinct(C.ITEM_ID).alias("distinct"), F.avg(F.coalesce("_count", F.lit(0.0))).alias("pop")).collect()}
    novelty = {r[_GROUP]: r[1] for r in per_user_novelty.groupBy(_GROUP).agg(F.avg("_novelty")).collect()}

    if categories is not None:
        labelled = lists.join(categories.select(C.ITEM_ID, C.CATEGORY).dropDuplicates([C.ITEM_ID]), C.ITEM_ID, "left")
        category = F.coalesce(F.col(C.CATEGORY), F.lit(UNKNOWN_CATEGORY))
    else:
        labelled, category = lists, F.lit(UNKNOWN_CATEGORY)
    per_category = labelled.groupBy(_GROUP, C.USER_ID, category.alias("_category")).agg(F.count(F.lit(1)).alias("_n_c"))
    per_user = per_category.groupBy(_GROUP, C.USER_ID).agg(F.sum("_n_c").alias("_n"),
                                                           F.sum(F.col("_n_c") * F.col("_n_c")).alias("_sq"))
    pair_share = (F.col("_n") * F.col("_n") - F.col("_sq")) / (F.col("_n") * (F.col("_n") - 1))
    diversity = {r[_GROUP]: r[1] for r in per_user.filter(F.col("_n") >= 2).groupBy(_GROUP).agg(F.avg(pair_share))
                 .collect()}
    result = {}
    # Every group with a novelty or diversity has rows, so it is in ``shown``.
    for group in dict.fromkeys([*groups, *shown]):
        row = shown.get(group)
        distinct, pop = (row["distinct"], row["pop"]) if row is not None else (0, None)
        result[group] = {
            COVERAGE: (distinct or 0) / stats["items"] if stats["items"] else 0.0,
            POPULARITY: (pop or 0.0) / stats["mean_count"] if stats["mean_count"] else 0.0,
            NOVELTY: _nan_if_null(novelty.get(group)),
            DIVERSITY: _nan_if_null(diversity.get(group)),
        }
    return result
