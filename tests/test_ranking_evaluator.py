"""The Spark SQL evaluator agrees with the plain-Python reference and with Spark's own RankingMetrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
from pyspark.mllib.evaluation import RankingMetrics

from recspark.evaluation import metrics as ref
from recspark.evaluation.ranking import (
    HIT_RATE_AT_K,
    MAP,
    MAP_AT_K,
    METRIC_COLUMNS,
    MRR_AT_K,
    NDCG_AT_K,
    PRECISION_AT_K,
    RECALL_AT_K,
    SPARK_EVALUATOR_METRICS,
    per_user_ranking_metrics,
    ranking_metrics,
    ranking_metrics_at_ks,
    ranking_metrics_by_group,
    spark_ranking_evaluator_metrics,
)

# 25 is longer than any generated list (<= 15 predictions, <= 8 relevant).
KS = (1, 3, 5, 10, 25)
# Each mllib metric is a separate Spark job through Python workers: a subset keeps the file fast.
MLLIB_KS = (1, 5, 25)
TOL = 1e-9
SCHEMA = "user_id int, prediction array<bigint>, relevant array<bigint>"

REFERENCE = {
    PRECISION_AT_K: ref.precision_at_k,
    RECALL_AT_K: ref.recall_at_k,
    NDCG_AT_K: ref.ndcg_at_k,
    MAP_AT_K: ref.map_at_k,
    MAP: lambda predicted, relevant, k: ref.mean_average_precision(predicted, relevant),
    HIT_RATE_AT_K: ref.hit_rate_at_k,
    MRR_AT_K: ref.mrr_at_k,
}


def reference_metrics(predicted, relevant, k: int) -> dict[str, float]:
    return {name: fn(predicted, relevant, k) for name, fn in REFERENCE.items()}


def random_queries(seed: int = 20261127, n_users: int = 200, n_items: int = 30):
    """Random (predicted, relevant) lists with empty lists and duplicates on both sides."""
    rng = np.random.default_rng(seed)
    predicted, relevant = [], []
    for _ in range(n_users):
        n_pred = int(rng.integers(0, 16))
        if rng.random() < 0.3:
            pred = rng.integers(0, n_items, n_pred)  # with replacement: duplicates
        else:
            pred = rng.permutation(n_items)[:n_pred]
        n_rel = 0 if rng.random() < 0.15 else int(rng.integers(1, 9))
        rel = rng.integers(0, n_items, n_rel)
        predicted.append([int(i) for i in pred])
        relevant.append([int(i) for i in rel])
    return predicted, relevant


@pytest.fixture(scope="module")
def queries():
    predicted, relevant = random_queries()
    # The cases this data must cover, or the comparison proves less than it claims.
    assert any(len(p) == 0 for p in predicted)
    assert any(len(r) == 0 for r in relevant)
    assert any(len(p) != len(set(p)) and set(p) & set(r) for p, r in zip(predicted, relevant))
    return predicted, relevant


@pytest.fixture(scope="module")
def int_df(spark, queries):
    predicted, relevant = queries
    return spark.createDataFrame(list(zip(range(len(predicted)), predicted, relevant)), SCHEMA)


@pytest.fixture(scope="module")
def spark_results(int_df) -> dict[int, dict[str, float]]:
    return ranking_metrics_at_ks(int_df, KS)


@pytest.fixture(scope="module")
def mllib_results(spark, queries) -> dict[object, float]:
    """Spark's own RankingMetrics on the same lists, keyed (our metric name, k); MAP keyed MAP."""
    predicted, relevant = queries
    spark_metrics = RankingMetrics(spark.sparkContext.parallelize(list(zip(predicted, relevant)), 1))
    results: dict[object, float] = {MAP: spark_metrics.meanAveragePrecision}
    for k in MLLIB_KS:
        results[PRECISION_AT_K, k] = spark_metrics.precisionAt(k)
        results[RECALL_AT_K, k] = spark_metrics.recallAt(k)
        results[NDCG_AT_K, k] = spark_metrics.ndcgAt(k)
        results[MAP_AT_K, k] = spark_metrics.meanAveragePrecisionAt(k)
    return results


@pytest.mark.parametrize("k", KS)
def test_matches_reference(spark_results, queries, k):
    expected = reference_metrics(*queries, k)
    assert spark_results[k] == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("k", MLLIB_KS)
def test_matches_spark_mllib_ranking_metrics(spark_results, mllib_results, k):
    got = spark_results[k]
    for name in (PRECISION_AT_K, RECALL_AT_K, NDCG_AT_K, MAP_AT_K):
        assert got[name] == pytest.approx(mllib_results[name, k], abs=TOL), name
    assert got[MAP] == pytest.approx(mllib_results[MAP], abs=TOL)


@pytest.mark.parametrize("k", MLLIB_KS)
def test_reference_matches_spark_mllib_ranking_metrics(queries, mllib_results, k):
    # The reference alone against Spark, so a mistake shared by both of ours cannot hide.
    for name in (PRECISION_AT_K, RECALL_AT_K, NDCG_AT_K, MAP_AT_K):
        assert REFERENCE[name](*queries, k) == pytest.approx(mllib_results[name, k], abs=TOL), name
    assert ref.mean_average_precision(*queries) == pytest.approx(mllib_results[MAP], abs=TOL)


def test_single_k_equals_multi_k(int_df, spark_results):
    assert ranking_metrics(int_df, 5) == pytest.approx(spark_results[5], abs=1e-12)


def test_matches_reference_with_string_ids(spark, queries):
    predicted = [[f"item-{i}" for i in p] for p in queries[0]]
    relevant = [[f"item-{i}" for i in r] for r in queries[1]]
    df = spark.createDataFrame(
        list(zip(range(len(predicted)), predicted, relevant)),
        "user_id int, prediction array<string>, relevant array<string>",
    )
    got = ranking_metrics_at_ks(df, (3, 25))
    for k in (3, 25):
        assert got[k] == pytest.approx(reference_metrics(predicted, relevant, k), abs=TOL), k


def test_per_user_metrics_match_reference_per_user(int_df, queries):
    k = 5
    per_user = per_user_ranking_metrics(int_df, k)
    assert per_user.columns == int_df.columns + list(METRIC_COLUMNS)
    rows = per_user.orderBy("user_id").collect()  # a test-sized frame; production code never collects it
    assert len(rows) == len(queries[0])
    for row, pred, rel in zip(rows, *queries):
        expected = reference_metrics([pred], [rel], k)
        assert {name: row[name] for name in METRIC_COLUMNS} == pytest.approx(expected, abs=TOL), row.user_id


def test_ranking_evaluator_wrapper_matches(int_df, spark_results):
    got = spark_ranking_evaluator_metrics(int_df, 5)
    assert set(got) == set(SPARK_EVALUATOR_METRICS)
    assert got == pytest.approx({name: spark_results[5][name] for name in SPARK_EVALUATOR_METRICS}, abs=TOL)


def test_plan_has_no_python_udf(int_df):
    plan = per_user_ranking_metrics(int_df, 5)._jdf.queryExecution().executedPlan().toString()
    for python_node in ("BatchEvalPython", "ArrowEvalPython", "PythonUDF"):
        assert python_node not in plan


def test_null_arrays_null_ids_and_mixed_int_types(spark):
    df = spark.createDataFrame(
        [
            (0, [5, None, 7], [7]),  # hits [0, 0, 1]: precision 1/3, NDCG 1/log2(4) = 0.5, MRR 1/3
            (1, None, [7]),          # null prediction = empty list: all 0
            (2, [7], None),          # null relevant = empty set: all 0
            (3, [None, 7], [None]),  # null ids compare null-safely, as in Spark's Scala Set: hit at 1
        ],
        "user_id int, prediction array<int>, relevant array<bigint>",
    )
    rows = {r.user_id: r for r in per_user_ranking_metrics(df, 3).collect()}
    assert (rows[0][PRECISION_AT_K], rows[0][NDCG_AT_K], rows[0][MRR_AT_K]) == pytest.approx((1 / 3, 0.5, 1 / 3))
    assert [rows[1][name] for name in METRIC_COLUMNS] == [0.0] * len(METRIC_COLUMNS)
    assert [rows[2][name] for name in METRIC_COLUMNS] == [0.0] * len(METRIC_COLUMNS)
    assert (rows[3][RECALL_AT_K], rows[3][MRR_AT_K]) == pytest.approx((1.0, 1.0))


def test_empty_frame_is_nan(spark):
    result = ranking_metrics_at_ks(spark.createDataFrame([], SCHEMA), (5, 10))
    assert set(result) == {5, 10}
    assert set(result[10]) == set(METRIC_COLUMNS)
    assert all(math.isnan(v) for metrics in result.values() for v in metrics.values())


def test_argument_errors(spark, int_df):
    with pytest.raises(ValueError, match="k must be a positive int"):
        ranking_metrics(int_df, 0)
    with pytest.raises(TypeError, match="k must be a positive int"):
        per_user_ranking_metrics(int_df, 2.0)
    with pytest.raises(ValueError, match="at least one k"):
        ranking_metrics_at_ks(int_df, [])
    with pytest.raises(TypeError, match="ks must be a sequence"):
        ranking_metrics_at_ks(int_df, 5)
    with pytest.raises(ValueError, match="not in DataFrame columns"):
        per_user_ranking_metrics(int_df, 5, predicted_col="recommendations")
    with pytest.raises(TypeError, match="must be an array"):
        per_user_ranking_metrics(int_df, 5, predicted_col="user_id")
    mixed = spark.createDataFrame([], "prediction array<string>, relevant array<bigint>")
    with pytest.raises(TypeError, match="not comparable"):
        per_user_ranking_metrics(mixed, 5)
    strings = spark.createDataFrame([], "prediction array<string>, relevant array<string>")
    with pytest.raises(TypeError, match="RankingEvaluator needs numeric"):
        spark_ranking_evaluator_metrics(strings, 5)


def test_by_group_equals_each_group_alone(spark, queries) -> None:
    """Two groups (e.g. two models) over the same users in one job give each group's own means;
    a group named but without rows is NaN."""
    predicted, relevant = queries
    rows = [(g, u, p if g == "a" else p[::-1], r) for g in ("a", "b") for u, (p, r) in enumerate(zip(predicted, relevant))]
    df = spark.createDataFrame(rows, "model string, user_id int, prediction array<bigint>, relevant array<bigint>")
    got = ranking_metrics_by_group(df, (1, 10), "model", groups=["a", "b", "none"])
    assert list(got) == ["a", "b", "none"]
    for group, lists in (("a", predicted), ("b", [p[::-1] for p in predicted])):
        for k in (1, 10):
            expected = reference_metrics(lists, relevant, k)
            assert got[group][k] == pytest.approx(expected, abs=TOL), (group, k)
    assert got["a"][10] != got["b"][10]  # the reversal must change something, or the test proves nothing
    assert all(math.isnan(v) for v in got["none"][10].values())
