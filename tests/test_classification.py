"""Classification metrics: NumPy references on hand-derived cases, and the Spark versions agree."""
from __future__ import annotations

import math

import numpy as np
import pytest
from pyspark.sql import SparkSession

from recspark.evaluation import classification as spark_cls
from recspark.evaluation import metrics as ref

# Predicted positive iff probability >= 0.5: [1, 1, 0, 0, 1] -> TP 2 (0.9, 0.5), FP 1 (0.6),
# FN 1 (0.4), TN 1 (0.2).
LABELS = [1, 0, 1, 0, 1]
PROBS = [0.9, 0.6, 0.4, 0.2, 0.5]


def pairs_df(spark: SparkSession, labels, probs):
    return spark.createDataFrame([(int(y), float(p)) for y, p in zip(labels, probs)], "label int, probability double")


def test_auc_counts_ties_as_half() -> None:
    # Positives 0.8 and 0.3, negatives 0.8 and 0.1: (0.8 vs 0.8) 1/2, (0.8 vs 0.1) 1, (0.3 vs 0.8) 0,
    # (0.3 vs 0.1) 1 -> 2.5 / 4.
    assert ref.roc_auc([1, 0, 1, 0], [0.8, 0.8, 0.3, 0.1]) == pytest.approx(0.625, abs=1e-12)
    assert ref.roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5, abs=1e-12)
    assert ref.roc_auc([0, 1], [0.1, 0.9]) == 1.0 and ref.roc_auc([1, 0], [0.1, 0.9]) == 0.0
    assert math.isnan(ref.roc_auc([1, 1], [0.1, 0.9]))


def test_log_loss_by_hand_and_clipped() -> None:
    assert ref.log_loss([1, 0], [0.5, 0.25]) == pytest.approx(-(math.log(0.5) + math.log(0.75)) / 2, abs=1e-12)
    # A certain, wrong prediction is clipped to 1 - 1e-15 and costs about ln(1 / 1e-15), not infinity
    # (exactly -ln(1 - (1 - 1e-15)): 1 - 1e-15 is not exact in floating point).
    assert ref.log_loss([0], [1.0]) == pytest.approx(-math.log(1 - (1 - 1e-15)), rel=1e-12)
    assert ref.log_loss([0], [1.0]) == pytest.approx(-math.log(1e-15), rel=1e-4)


def test_threshold_metrics_by_hand() -> None:
    assert ref.confusion_at_threshold(LABELS, PROBS, 0.5) == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}
    assert ref.accuracy_at_threshold(LABELS, PROBS, 0.5) == pytest.approx(3 / 5)
    assert ref.precision_at_threshold(LABELS, PROBS, 0.5) == pytest.approx(2 / 3)
    assert ref.recall_at_threshold(LABELS, PROBS, 0.5) == pytest.approx(2 / 3)
    assert ref.f1_at_threshold(LABELS, PROBS, 0.5) == pytest.approx(2 / 3)
    # Above every probability: nothing predicted positive -> precision 0 (defined), recall 0, F1 0.
    assert (ref.precision_at_threshold(LABELS, PROBS, 0.95), ref.f1_at_threshold(LABELS, PROBS, 0.95)) == (0.0, 0.0)


def test_best_f1_threshold_by_hand() -> None:
    # Thresholds high to low: 0.9 -> F1 2/4, 0.6 -> 2/5, 0.5 -> 4/6, 0.4 -> 6/7, 0.2 -> 6/8.
    assert ref.best_f1_threshold(LABELS, PROBS) == (0.4, pytest.approx(6 / 7))
    # 0.9 (TP 1, FN 1) and 0.2 (TP 2, FP 2) both give 2/3: the tie goes to the higher threshold.
    assert ref.best_f1_threshold([1, 0, 0, 1], [0.9, 0.7, 0.6, 0.2]) == (0.9, pytest.approx(2 / 3))


def test_bad_inputs_are_errors() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        ref.roc_auc([2, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="same length"):
        ref.log_loss([1, 0], [0.1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ref.log_loss([1], [1.5])


def test_spark_hand_derived(spark: SparkSession) -> None:
    df = pairs_df(spark, LABELS, PROBS)
    got = spark_cls.metrics_at_threshold(df, 0.5)
    assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (2, 1, 1, 1)
    assert got["f1"] == pytest.approx(2 / 3) and got["accuracy"] == pytest.approx(3 / 5)
    assert spark_cls.best_f1_threshold(df) == (0.4, pytest.approx(6 / 7))
    assert spark_cls.best_f1_threshold(pairs_df(spark, [1, 0, 0, 1], [0.9, 0.7, 0.6, 0.2]))[0] == 0.9
    assert spark_cls.roc_auc(pairs_df(spark, [1, 0, 1, 0], [0.8, 0.8, 0.3, 0.1])) == pytest.approx(0.625, abs=1e-12)


def random_pairs(rng: np.random.Generator, n: int) -> tuple[list[int], list[float]]:
    labels = (rng.random(n) < 0.3).astype(int)
    # Informative but noisy, rounded to 2 decimals so that many scores tie.
    probs = np.clip(np.round(0.35 * labels + 0.65 * rng.random(n), 2), 0.0, 1.0)
    return labels.tolist(), probs.tolist()


def test_spark_agrees_with_reference_on_random_pairs(spark: SparkSession) -> None:
    rng = np.random.default_rng(3)
    val_labels, val_probs = random_pairs(rng, 300)
    test_labels, test_probs = random_pairs(rng, 250)
    report = spark_cls.classification_report(pairs_df(spark, val_labels, val_probs),
                                             pairs_df(spark, test_labels, test_probs))
    threshold, val_f1 = ref.best_f1_threshold(val_labels, val_probs)
    assert report["threshold"] == threshold
    assert report["validation"]["f1"] == pytest.approx(val_f1, abs=1e-12)
    expected = {
        "auc": ref.roc_auc(test_labels, test_probs),
        "logloss": ref.log_loss(test_labels, test_probs),
        "accuracy": ref.accuracy_at_threshold(test_labels, test_probs, threshold),
        "precision": ref.precision_at_threshold(test_labels, test_probs, threshold),
        "recall": ref.recall_at_threshold(test_labels, test_probs, threshold),
        "f1": ref.f1_at_threshold(test_labels, test_probs, threshold),
    }
    assert {name: report["test"][name] for name in spark_cls.CLASSIFICATION_METRICS} == pytest.approx(expected, abs=1e-9)
    assert 0.5 < expected["auc"] < 1.0  # the data exercise the metric (informative, not perfect)
