"""Classification metrics for models that output a probability per (user, item) pair, in Spark.

Input: DataFrames with ``label`` (0/1) and ``probability`` (in [0, 1]), one row per scored pair.
Definitions are those of the NumPy references in :mod:`recspark.evaluation.metrics` (AUC with ties
counting 1/2, natural-log loss clipped at 1e-15, predicted positive iff probability >= threshold,
F1 = 2 TP / (2 TP + FP + FN)). The decision threshold is chosen on the validation pairs (max F1)
and the test pairs are reported at it, so the test split never tunes anything.

Only aggregates reach the driver: one row of counts and sums, Spark's AUC, and one best-threshold row.
"""
from __future__ import annotations

import math

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recspark.evaluation.metrics import LOG_LOSS_EPS

LABEL = "label"
PROBABILITY = "probability"
CLASSIFICATION_METRICS = ("auc", "logloss", "accuracy", "precision", "recall", "f1")


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def roc_auc(pairs: DataFrame) -> float:
    """Spark's exact AUC (``BinaryClassificationEvaluator``, numBins=0: no down-sampling of the
    curve, so ties and every distinct score count exactly). NaN without both classes."""
    from pyspark.ml.evaluation import BinaryClassificationEvaluator

    row = pairs.agg(F.sum(F.col(LABEL)).alias("pos"), F.count(F.lit(1)).alias("n")).first()
    if not row["n"] or not row["pos"] or row["pos"] == row["n"]:
        return math.nan
    data = pairs.select(F.col(LABEL).cast("double").alias(LABEL), F.col(PROBABILITY).cast("double").alias(PROBABILITY))
    evaluator = BinaryClassificationEvaluator(rawPredictionCol=PROBABILITY, labelCol=LABEL,
                                              metricName="areaUnderROC", numBins=0)
    return float(evaluator.evaluate(data))


def metrics_at_threshold(pairs: DataFrame, threshold: float) -> dict[str, float]:
    """AUC, log loss, accuracy, precision, recall and F1 at ``threshold``, plus the confusion counts."""
    y = F.col(LABEL).cast("double")
    p = F.least(F.greatest(F.col(PROBABILITY).cast("double"), F.lit(LOG_LOSS_EPS)), F.lit(1 - LOG_LOSS_EPS))
    predicted = F.col(PROBABILITY) >= F.lit(threshold)
    positive = F.col(LABEL) == 1
    row = pairs.agg(
        F.count(F.lit(1)).alias("n"),
        F.avg(-(y * F.log(p) + (1 - y) * F.log(1 - p))).alias("logloss"),
        *[F.sum((cond).cast("long")).alias(name) for name, cond in (
            ("tp", predicted & positive), ("fp", predicted & ~positive),
            ("fn", ~predicted & positive), ("tn", ~predicted & ~positive))],
    ).first()
    n = row["n"]
    tp, fp, fn, tn = (row[c] or 0 for c in ("tp", "fp", "fn", "tn"))
    return {
        "auc": roc_auc(pairs),
        "logloss": math.nan if row["logloss"] is None else float(row["logloss"]),
        "accuracy": (tp + tn) / n if n else math.nan,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "threshold": float(threshold),
        "pairs": int(n), "tp": int(tp), "fp": int(fp), "fn": int(fn), "tn": int(tn),
    }


def best_f1_threshold(pairs: DataFrame) -> tuple[float, float]:
    """``(threshold, F1)`` maximising F1 over every distinct probability; ties go to the highest
    threshold. NaN, NaN for no pairs.

    Per distinct probability: positives and negatives at it; cumulative sums from the highest
    probability down give TP and FP when that probability is the threshold. The running sum is a
    window over the distinct probabilities (one partition, one row per distinct value): the data
    themselves are only aggregated.
    """
    per_value = pairs.groupBy(F.col(PROBABILITY).cast("double").alias("_t")).agg(
        F.sum((F.col(LABEL) == 1).cast("long")).alias("_pos"), F.sum((F.col(LABEL) != 1).cast("long")).alias("_neg"))
    down = Window.orderBy(F.col("_t").desc()).rowsBetween(Window.unboundedPreceding, Window.currentRow)
    everything = Window.partitionBy()
    curve = per_value.select(
        "_t", F.sum("_pos").over(down).alias("_tp"), F.sum("_neg").over(down).alias("_fp"),
        F.sum("_pos").over(everything).alias("_p"))
    # F1 = 2 TP / (2 TP + FP + FN) with FN = P - TP; the denominator is 0 only if TP = FP = P = 0.
    f1 = F.when(F.col("_tp") > 0, 2 * F.col("_tp") / (F.col("_tp") + F.col("_fp") + F.col("_p"))).otherwise(F.lit(0.0))
    best = curve.select("_t", f1.alias("_f1")).orderBy(F.col("_f1").desc(), F.col("_t").desc()).first()
    if best is None:
        return math.nan, math.nan
    return float(best["_t"]), float(best["_f1"])


def classification_report(validation_pairs: DataFrame, test_pairs: DataFrame) -> dict:
    """The probability path's metrics: the max-F1 threshold chosen on ``validation_pairs``, then
    every metric of :func:`metrics_at_threshold` on both splits at that threshold.

    Both DataFrames have columns ``label`` (0/1) and ``probability``. Returns
    ``{"threshold", "threshold_rule", "validation": {...}, "test": {...}}``.
    """
    threshold, _ = best_f1_threshold(validation_pairs)
    if math.isnan(threshold):
        raise ValueError("validation_pairs is empty: no threshold can be chosen")
    return {
        "threshold": threshold,
        "threshold_rule": "max F1 on the validation pairs (predicted positive iff probability >= threshold)",
        "validation": metrics_at_threshold(validation_pairs, threshold),
        "test": metrics_at_threshold(test_pairs, threshold),
    }
