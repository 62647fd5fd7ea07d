"""Distributed top-K ranking metrics over a Spark DataFrame, with Spark SQL built-ins only.

Input: one row per user, an array column of ranked predicted item ids (best first) and an array
column of relevant item ids (ints or strings; the two columns' element types must match or both be
numeric). Each metric is computed per row with higher-order functions (no Python UDF, so rows
never leave the JVM) and then averaged; only the one-row mean reaches the driver.

* :func:`ranking_metrics` / :func:`ranking_metrics_at_ks`: means, for one k or several in one job.
* :func:`ranking_metrics_by_group`: the same means per group (e.g. per model), still one job.
* :func:`per_user_ranking_metrics`: the per-user values behind the means, for distributions.
* :func:`spark_ranking_evaluator_metrics`: the same numbers from ``pyspark.ml``'s RankingEvaluator.

Definitions are exactly those of :mod:`recspark.evaluation.metrics`, which follow Spark's
``RankingMetrics`` (binary relevance, relevant as a set, every occurrence of a relevant item in the
prediction is a hit, users without relevant items score 0 but count in the mean). Two additions
the reference cannot have: a null array counts as empty, and ids are compared null-safely (``<=>``)
so that a null id behaves like any other value, as it would in Spark's Scala ``Set``.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DataType, DoubleType, NullType, NumericType

from recspark.constants import PREDICTION, RELEVANT
from recspark.evaluation.metrics import _check_k

PRECISION_AT_K = "precision_at_k"
RECALL_AT_K = "recall_at_k"
NDCG_AT_K = "ndcg_at_k"
MAP_AT_K = "map_at_k"
MAP = "mean_average_precision"
HIT_RATE_AT_K = "hit_rate_at_k"
MRR_AT_K = "mrr_at_k"
METRIC_COLUMNS: tuple[str, ...] = (
    PRECISION_AT_K, RECALL_AT_K, NDCG_AT_K, MAP_AT_K, MAP, HIT_RATE_AT_K, MRR_AT_K,
)

# Our names -> pyspark.ml.evaluation.RankingEvaluator metricName (it has no hit rate or MRR).
SPARK_EVALUATOR_METRICS: dict[str, str] = {
    PRECISION_AT_K: "precisionAtK",
    RECALL_AT_K: "recallAtK",
    NDCG_AT_K: "ndcgAtK",
    MAP_AT_K: "meanAveragePrecisionAtK",
    MAP: "meanAveragePrecision",
}

# Intermediate columns, dropped before returning.
_ACC = "__ranking_acc"
_N_REL = "__ranking_n_relevant"
_GROUP = "__ranking_group"


def _array_element_type(df: DataFrame, col: str) -> DataType:
    if col not in df.columns:
        raise ValueError(f"column {col!r} not in DataFrame columns {df.columns}")
    data_type = df.schema[col].dataType
    if not isinstance(data_type, ArrayType):
        raise TypeError(f"column {col!r} must be an array of item ids, got {data_type.simpleString()}")
    return data_type.elementType


def _check_columns(df: DataFrame, predicted_col: str, relevant_col: str) -> tuple[ArrayType, ArrayType]:
    pred_type = _array_element_type(df, predicted_col)
    rel_type = _array_element_type(df, relevant_col)
    # Comparing strings with numbers would make Spark cast one side: "1" == 1 would silently hit.
    compatible = (
        pred_type == rel_type
        or isinstance(pred_type, NullType) or isinstance(rel_type, NullType)
        or (isinstance(pred_type, NumericType) and isinstance(rel_type, NumericType))
    )
    if not compatible:
        raise TypeError(
            f"element types of {predicted_col!r} ({pred_type.simpleString()}) and {relevant_col!r} "
            f"({rel_type.simpleString()}) are not comparable; cast the ids to one type first"
        )
    return ArrayType(pred_type), ArrayType(rel_type)


def _non_null_array(col: str, array_type: ArrayType) -> Column:
    return F.coalesce(F.col(col), F.array().cast(array_type))


def per_user_ranking_metrics(
    df: DataFrame,
    k: int,
    predicted_col: str = PREDICTION,
    relevant_col: str = RELEVANT,
) -> DataFrame:
    """``df`` with one extra double column per metric (see ``METRIC_COLUMNS``), one row per user.

    Use it for distributions (e.g. NDCG by user segment); :func:`ranking_metrics` is its mean.
    Existing columns with a metric's name are replaced.
    """
    k = _check_k(k)
    pred_type, rel_type = _check_columns(df, predicted_col, relevant_col)
    pred = _non_null_array(predicted_col, pred_type)
    rel = _non_null_array(relevant_col, rel_type)
    n_rel = F.size(F.array_distinct(rel))  # relevant is a set; membership needs no de-duplication

    # 1/0 per predicted position, one flag per occurrence: duplicates each hit, as in Spark.
    hits = F.transform(pred, lambda x: F.exists(rel, lambda r: r.eqNullSafe(x)).cast("int"))

    # One left-to-right pass over the whole list yields every metric: the @k ones only
    # accumulate while the position is <= k, full-list AP accumulates throughout.
    def step(acc: Column, hit: Column) -> Column:
        rank = acc["rank"] + 1
        n_hits = acc["n_hits"] + hit
        in_top_k = rank <= k
        hit_k = F.when(in_top_k, hit).otherwise(F.lit(0))
        precision_here = hit * n_hits / rank  # precision@rank at a hit, else 0
        return F.struct(
            rank.alias("rank"),
            n_hits.alias("n_hits"),
            (acc["n_hits_k"] + hit_k).alias("n_hits_k"),
            (acc["ap_sum"] + precision_here).alias("ap_sum"),
            (acc["ap_sum_k"] + F.when(in_top_k, precision_here).otherwise(F.lit(0.0))).alias("ap_sum_k"),
            (acc["dcg_k"] + hit_k / F.log2(rank + 1)).alias("dcg_k"),
            F.when((acc["first_hit_k"] == 0) & (hit_k == 1), rank)
            .otherwise(acc["first_hit_k"]).alias("first_hit_k"),
        )

    zero = F.struct(
        F.lit(0).alias("rank"),
        F.lit(0).alias("n_hits"),
        F.lit(0).alias("n_hits_k"),
        F.lit(0.0).alias("ap_sum"),
        F.lit(0.0).alias("ap_sum_k"),
        F.lit(0.0).alias("dcg_k"),
        F.lit(0).alias("first_hit_k"),  # 1-based rank of the first hit in the top k, 0 = none
    )
    # Ideal DCG: a hit at each of the first min(k, |relevant|) positions. sequence(1, k) is a
    # constant (folded once); slicing it avoids sequence(1, 0), which would count down to [1, 0].
    idcg = F.aggregate(
        F.slice(F.sequence(F.lit(1), F.lit(k)), 1, F.col(_N_REL)),
        F.lit(0.0),
        lambda acc, rank: acc + 1.0 / F.log2(rank + 1),
    )

    acc = F.col(_ACC)
    n_rel_col = F.col(_N_REL)
    has_rel = n_rel_col > 0

    def if_relevant(value: Column) -> Column:
        # Spark scores users without relevant items 0; CASE WHEN also keeps / 0 from being
        # evaluated (an error under ANSI mode).
        return F.when(has_rel, value).otherwise(F.lit(0.0)).cast(DoubleType())

    metrics = {
        PRECISION_AT_K: if_relevant(acc["n_hits_k"] / F.lit(k)),
        RECALL_AT_K: if_relevant(acc["n_hits_k"] / n_rel_col),
        NDCG_AT_K: if_relevant(acc["dcg_k"] / idcg),
        MAP_AT_K: if_relevant(acc["ap_sum_k"] / F.least(n_rel_col, F.lit(k))),
        MAP: if_relevant(acc["ap_sum"] / n_rel_col),
        HIT_RATE_AT_K: if_relevant((acc["n_hits_k"] > 0).cast("double")),
        MRR_AT_K: if_relevant(F.when(acc["first_hit_k"] > 0, 1.0 / acc["first_hit_k"]).otherwise(F.lit(0.0))),
    }
    # The fold and the set size get their own projection so that Spark evaluates them once per
    # row, not once per metric that reads them (CollapseProject does not inline non-trivial
    # expressions that are referenced more than once).
    return (
        df.withColumns({_ACC: F.aggregate(hits, zero, step), _N_REL: n_rel})
        .withColumns(metrics)
        .drop(_ACC, _N_REL)
    )


def ranking_metrics(
    df: DataFrame,
    k: int,
    predicted_col: str = PREDICTION,
    relevant_col: str = RELEVANT,
) -> dict[str, float]:
    """Mean of each per-user metric (keys: ``METRIC_COLUMNS``), in one Spark job.

    The metric values equal :mod:`recspark.evaluation.metrics` and, for the five metrics it has,
    Spark's ``RankingMetrics``. An empty DataFrame gives NaN for every metric (as Spark).
    """
    k = _check_k(k)
    return ranking_metrics_at_ks(df, [k], predicted_col, relevant_col)[k]


def ranking_metrics_at_ks(
    df: DataFrame,
    ks: Sequence[int],
    predicted_col: str = PREDICTION,
    relevant_col: str = RELEVANT,
) -> dict[int, dict[str, float]]:
    """:func:`ranking_metrics` for several cut-offs, ``{k: {metric: mean}}``, in one Spark job.

    Reports usually want @5, @10, @20 side by side; one pass over the data instead of one per k.
    (``mean_average_precision`` does not depend on k, so it is the same under every k.)
    """
    return ranking_metrics_by_group(df.withColumn(_GROUP, F.lit(0)), ks, _GROUP, predicted_col, relevant_col,
                                    groups=[0])[0]


def ranking_metrics_by_group(
    df: DataFrame,
    ks: Sequence[int],
    group_col: str,
    predicted_col: str = PREDICTION,
    relevant_col: str = RELEVANT,
    groups: Sequence[Hashable] = (),
) -> dict[Hashable, dict[int, dict[str, float]]]:
    """:func:`ranking_metrics_at_ks` per value of ``group_col`` (e.g. one per model), in one Spark job.

    The evaluation stage compares several models on the same users: one grouped pass instead of
    one job per model. A value in ``groups`` without rows gets NaN for every metric (as an empty
    DataFrame does).
    """
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Iterable):
        raise TypeError(f"ks must be a sequence of positive ints, got {type(ks).__name__}")
    ks = list(dict.fromkeys(_check_k(k) for k in ks))
    if not ks:
        raise ValueError("ks must contain at least one k")
    _check_columns(df, predicted_col, relevant_col)
    per_user = df.select(F.col(group_col).alias(_GROUP), predicted_col, relevant_col)
    for k in ks:
        per_user = per_user_ranking_metrics(per_user, k, predicted_col, relevant_col).withColumnsRenamed(
            {name: f"{name}@{k}" for name in METRIC_COLUMNS}
        )
    # One row per group reaches the driver; avg over no rows is null, reported as NaN (as Spark).
    rows = per_user.groupBy(_GROUP).agg(*[F.avg(f"`{name}@{k}`") for k in ks for name in METRIC_COLUMNS]).collect()
    result = {group: {k: dict.fromkeys(METRIC_COLUMNS, math.nan) for k in ks} for group in groups}
    for row in rows:
        means = iter(row[1:])
        result[row[0]] = {
            k: {name: math.nan if (value := next(means)) is None else float(value) for name in METRIC_COLUMNS}
            for k in ks
        }
    return result


def spark_ranking_evaluator_metrics(
    df: DataFrame,
    k: int,
    predicted_col: str = PREDICTION,
    relevant_col: str = RELEVANT,
) -> dict[str, float]:
    """The metrics ``pyspark.ml.evaluation.RankingEvaluator`` offers (keys: ``SPARK_EVALUATOR_METRICS``).

    A thin wrapper, for cross-checking and for code that expects Spark's own evaluator; prefer
    :func:`ranking_metrics`, which is one job instead of five and has hit rate and MRR.
    RankingEvaluator only accepts ``array<double>`` columns, so numeric ids are cast to double
    (exact only for |id| < 2**53) and string ids are rejected.
    """
    from pyspark.ml.evaluation import RankingEvaluator

    k = _check_k(k)
    pred_type, rel_type = _check_columns(df, predicted_col, relevant_col)
    for col, array_type in ((predicted_col, pred_type), (relevant_col, rel_type)):
        if not isinstance(array_type.elementType, (NumericType, NullType)):
            raise TypeError(
                f"RankingEvaluator needs numeric item ids, column {col!r} holds "
                f"{array_type.elementType.simpleString()}; use ranking_metrics instead"
            )
    double_array = ArrayType(DoubleType())
    data = df.select(
        _non_null_array(predicted_col, pred_type).cast(double_array).alias(predicted_col),
        _non_null_array(relevant_col, rel_type).cast(double_array).alias(relevant_col),
    )
    evaluator = RankingEvaluator(predictionCol=predicted_col, labelCol=relevant_col, k=k)
    return {
        name: float(evaluator.evaluate(data, {evaluator.metricName: spark_name}))
        for name, spark_name in SPARK_EVALUATOR_METRICS.items()
    }
