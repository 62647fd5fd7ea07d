"""Calibration: the isotonic fit on hand-built pairs (pooling a violation), interpolation and
clamping, the expected calibration error by hand, and the round trip through calibration.json."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import SparkSession

from recspark.calibration import (REPORT_SECTION, Calibration, cross_fitted_bins, ece_of_bins,
                                  expected_calibration_error, fit_isotonic, merged_bins,
                                  plot_reliability, reliability_bins, report_section)


def _pairs(spark: SparkSession, groups: list[tuple[float, int, int]]):
    """(raw, positives, count) groups -> a DataFrame of (raw_confidence, label) pairs."""
    rows = [(raw, float(i < positives)) for raw, positives, count in groups for i in range(count)]
    return spark.createDataFrame(rows, "raw_confidence double, label double")


def test_isotonic_fit_follows_the_rates_and_pools_a_violation(spark: SparkSession) -> None:
    # 0.2 -> 6/10 bought but 0.4 -> 2/10: a violation, pooled to 8/20 = 0.4 for both.
    pairs = _pairs(spark, [(0.1, 1, 10), (0.2, 6, 10), (0.4, 2, 10), (0.9, 9, 10)])
    fitted = fit_isotonic(pairs)
    values = dict(zip(fitted.boundaries, fitted.predictions))
    assert values[0.1] == pytest.approx(0.1) and values[0.9] == pytest.approx(0.9)
    assert values[0.2] == pytest.approx(0.4) and values[0.4] == pytest.approx(0.4)
    assert fitted.pairs == 40 and fitted.positive_rate == pytest.approx(18 / 40)
    got = fitted.apply(np.array([0.0, 0.1, 0.3, 0.65, 1.0]))
    # Clamped outside the boundaries, linear between them.
    np.testing.assert_allclose(got, [0.1, 0.1, 0.4, 0.65, 0.9], atol=1e-6)


def test_expected_calibration_error_by_hand(spark: SparkSession) -> None:
    identity = Calibration(boundaries=(0.0, 1.0), predictions=(0.0, 1.0))
    # Bin of 0.15 (10 pairs, 3 bought): |0.3 - 0.15| = 0.15; bin of 0.85 (30 pairs, 24 bought): |0.8 - 0.85| = 0.05.
    pairs = _pairs(spark, [(0.15, 3, 10), (0.85, 24, 30)])
    assert expected_calibration_error(pairs, identity) == pytest.approx((10 * 0.15 + 30 * 0.05) / 40)
    # A calibration fitted on the same pairs has no error on them.
    assert expected_calibration_error(pairs, fit_isotonic(pairs)) == pytest.approx(0.0, abs=1e-9)


def test_reliability_bins_do_not_depend_on_the_partitioning(spark: SparkSession) -> None:
    # A re-run stores the same ECE to the last bit: the same pairs in one partition or in seven
    # (Spark adds them in another order) give identical bins, compared exactly.
    rng = np.random.default_rng(3)
    rows = [(float(raw), float(rng.random() < raw)) for raw in rng.random(3000)]
    pairs = spark.createDataFrame(rows, "raw_confidence double, label double")
    identity = Calibration(boundaries=(0.0, 1.0), predictions=(0.0, 1.0))
    one = reliability_bins(pairs.repartition(1), identity)
    seven = reliability_bins(pairs.repartition(7, "raw_confidence").sortWithinPartitions("label"), identity)
    assert one == seven and len(one) == 10


def test_calibration_round_trips_and_rejects_a_decreasing_map(tmp_path: Path) -> None:
    calibration = Calibration(boundaries=(0.1, 0.5), predictions=(0.2, 0.3), model_run_id="r1", pairs=7)
    calibration.save(tmp_path)
    assert Calibration.load(tmp_path) == calibration
    assert Calibration.load(tmp_path / "missing") is None
    with pytest.raises(ValueError, match="non-decreasing"):
        Calibration(boundaries=(0.1, 0.5), predictions=(0.3, 0.2))


def test_reliability_bins_plot_and_report_section(spark: SparkSession, tmp_path: Path) -> None:
    identity = Calibration(boundaries=(0.0, 1.0), predictions=(0.0, 1.0))
    bins = reliability_bins(_pairs(spark, [(0.15, 3, 10), (0.85, 24, 30)]), identity)
    assert [b[:2] for b in bins] == [(1, 10), (8, 30)]
    np.testing.assert_allclose([b[2:] for b in bins], [(0.15, 0.3), (0.85, 0.8)])
    calibration = Calibration(boundaries=(0.0, 1.0), predictions=(0.0, 1.0), pairs=40, positive_rate=0.675,
                              ece_validation=0.1, ece_test=0.25, reliability_validation=bins, reliability_test=bins)
    calibration.save(tmp_path)
    assert Calibration.load(tmp_path) == calibration  # the bins survive the JSON round trip
    plot = plot_reliability(calibration, tmp_path / "run-1" / "reliability_repeatnet.png", "title")
    assert plot is not None and plot.stat().st_size > 1000
    lines = report_section("repeatnet", calibration.summary(), plot.name)
    text = "\n".join(lines)
    assert lines[1] == REPORT_SECTION and "**test 0.2500**" in text and "validation 0.1000" in text
    assert "reliability_repeatnet.png" in text and "40 validation pairs" in text
    unmeasured = Calibration(boundaries=(0.0,), predictions=(0.1,), pairs=3)
    assert "**test not measured**" in "\n".join(report_section("x", unmeasured.summary(), None))
    assert plot_reliability(unmeasured, tmp_path / "x.png", "x") is None


def test_the_validation_ece_is_out_of_fold(spark: SparkSession) -> None:
    # Raw confidence carries no signal here: within each fold the bought rate at 0.2 and 0.8 is the
    # same, but one fold buys at 0.2 and the other at 0.8. A map fitted and measured on the same
    # pairs pools them and looks calibrated; out of fold, each half is binned by the other half's
    # map, so the error shows.
    rows = [(0.2, 1.0, 0), (0.8, 0.0, 0)] * 10 + [(0.2, 0.0, 1), (0.8, 1.0, 1)] * 10
    pairs = spark.createDataFrame(rows, "raw_confidence double, label double, fold int")
    in_sample = reliability_bins(pairs, fit_isotonic(pairs))
    assert ece_of_bins(in_sample) == pytest.approx(0.0, abs=1e-12)
    out_of_fold = cross_fitted_bins(pairs)
    # Fold 0's pairs, binned by fold 1's map (0.2 -> 0, 0.8 -> 1), sit at 0 (bought 1) and 1 (bought 0):
    # each off by 1. Fold 0's rates fall with the raw confidence, so its map pools them to 0.5, which
    # bins fold 1's pairs right on average. ECE = (20 x 1 + 20 x 0) / 40.
    assert sum(n for _, n, _, _ in out_of_fold) == len(rows)
    assert ece_of_bins(out_of_fold) == pytest.approx(0.5)
    merged = merged_bins([((0, 2, 0.1, 0.5),), ((0, 6, 0.3, 0.0), (3, 1, 0.35, 1.0))])
    assert [b[:2] for b in merged] == [(0, 8), (3, 1)]
    np.testing.assert_allclose([b[2:] for b in merged], [(0.25, 0.125), (0.35, 1.0)])
    assert cross_fitted_bins(pairs.filter("fold = 0")) == ()  # nothing to fit fold 0's map on
