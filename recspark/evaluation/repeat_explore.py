"""Repeat / explore breakdown of top-K lists (Li, Jullien, Ariannezhad & de Rijke, "A Next Basket
Recommendation Reality Check", ACM TOIS 2023), in Spark SQL built-ins.

Why: on grocery data a list can score well by re-listing what the user already buys. These numbers
split a model's recall into what it gets from items the user had before (repeat) and from items new
to the user (explore), and say how much of each list is re-buys.

Per user, with T the held-out items, H the items the user had before the evaluated period (the
queries' ``seen``, every interaction) and P the distinct items of the first k of the list:

* ``recall_rep`` = |P n T n H| / |T n H|, over the users with at least one held-out item in H;
* ``recall_expl`` = |P n (T - H)| / |T - H|, over the users with at least one held-out item not in H;
* ``repeat_share`` = |P n H| / |P|, over the users with a non-empty list;
* ``users_rep``, ``users_expl``: how many users the two recalls average over.

Each number is a mean over users (NaN over none). Users whose list is empty or missing count in
the recalls with 0 (pass them with an empty or null prediction), as in the ranking metrics. Ranking
metrics proper are in :mod:`recspark.evaluation.ranking`; this module adds only these five.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType

from recspark.constants import PREDICTION, RELEVANT, SEEN
from recspark.evaluation.metrics import _check_k
from recspark.evaluation.ranking import _check_columns

RECALL_REP = "recall_rep"
RECALL_EXPL = "recall_expl"
REPEAT_SHARE = "repeat_share"
USERS_REP = "users_rep"
USERS_EXPL = "users_expl"
REPEAT_EXPLORE_COLUMNS = (RECALL_REP, RECALL_EXPL, REPEAT_SHARE)
REPEAT_EXPLORE_KEYS = (*REPEAT_EXPLORE_COLUMNS, USERS_REP, USERS_EXPL)

_TOP, _REP, _EXPL, _SEEN, _GROUP = "__re_top", "__re_rep", "__re_expl", "__re_seen", "__re_group"


def with_repeat_explore(df: DataFrame, k: int, predicted_col: str = PREDICTION, relevant_col: str = RELEVANT,
                        seen_col: str = SEEN) -> DataFrame:
    """``df`` with ``recall_rep``, ``recall_expl`` and ``repeat_share`` per row (user); each null
    where the user has nothing to measure it on (see the module docstring)."""
    k = _check_k(k)
    pred_type, rel_type = _check_columns(df, predicted_col, relevant_col)
    _, seen_type = _check_columns(df, relevant_col, seen_col)

    def non_null(col: str, array_type: ArrayType):
        return F.coalesce(F.col(col), F.array().cast(array_type))

    seen = non_null(seen_col, seen_type)
    relevant = F.array_distinct(non_null(relevant_col, rel_type))
    parts = {
        _TOP: F.array_distinct(F.slice(non_null(predicted_col, pred_type), 1, k)),
        _SEEN: seen,
        _REP: F.array_intersect(relevant, seen),
        _EXPL: F.array_except(relevant, seen),
    }

    def share(hits: str, of: str):
        # CASE WHEN keeps x / 0 from being evaluated (an error under ANSI mode) and leaves the user out.
        return F.when(F.size(of) > 0, F.size(F.array_intersect(hits, of)) / F.size(of)).cast("double")

    metrics = {
        RECALL_REP: share(_TOP, _REP),
        RECALL_EXPL: share(_TOP, _EXPL),
        REPEAT_SHARE: F.when(F.size(_TOP) > 0, F.size(F.array_intersect(_TOP, _SEEN)) / F.size(_TOP)).cast("double"),
    }
    # The sets get their own projection so that each is computed once per row, not once per metric.
    return df.withColumns(parts).withColumns(metrics).drop(*parts)


def repeat_explore_metrics(df: DataFrame, k: int, predicted_col: str = PREDICTION, relevant_col: str = RELEVANT,
                           seen_col: str = SEEN) -> dict[str, float]:
    """``{recall_rep, recall_expl, repeat_share, users_rep, users_expl}`` over the rows of ``df``
    (one per user: ranked prediction, held-out items, items had before), in one Spark job."""
    return repeat_explore_by_group(df.withColumn(_GROUP, F.lit(0)), k, _GROUP, predicted_col, relevant_col,
                                   seen_col, groups=[0])[0]


def repeat_explore_by_group(df: DataFrame, k: int, group_col: str, predicted_col: str = PREDICTION,
                            relevant_col: str = RELEVANT, seen_col: str = SEEN,
                            groups: Sequence[Hashable] = ()) -> dict[Hashable, dict[str, float]]:
    """:func:`repeat_explore_metrics` per value of ``group_col`` (e.g. one per model), in one Spark job;
    a value in ``groups`` without rows gets NaN recalls over 0 users."""
    per_user = with_repeat_explore(df.select(F.col(group_col).alias(_GROUP), predicted_col, relevant_col, seen_col),
                                   k, predicted_col, relevant_col, seen_col)
    rows = per_user.groupBy(_GROUP).agg(*[F.avg(name).alias(name) for name in REPEAT_EXPLORE_COLUMNS],
                                        F.count(RECALL_REP).alias(USERS_REP),
                                        F.count(RECALL_EXPL).alias(USERS_EXPL)).collect()
    result = {group: {**dict.fromkeys(REPEAT_EXPLORE_COLUMNS, math.nan), USERS_REP: 0, USERS_EXPL: 0}
              for group in groups}
    for row in rows:
        result[row[_GROUP]] = {**{name: math.nan if row[name] is None else float(row[name])
                                  for name in REPEAT_EXPLORE_COLUMNS},
                               USERS_REP: int(row[USERS_REP]), USERS_EXPL: int(row[USERS_EXPL])}
    return result
