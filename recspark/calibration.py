"""Calibrated confidence: P(the user buys the item in the next period | it is in their top-K).

The scorer's raw confidence is a softmax share among the recommendable items: it shrinks as the
catalogue grows and is no probability of anything a shop observes. Here it is mapped to one: on the
validation queries (gold ``eval_queries``, split ``validation``: each user's history before the
validation period and the items of that period), every top-``score.k`` recommendation is a pair
(raw confidence, bought in the period or not), and an **isotonic regression** (Spark ML, pool
adjacent violators) is fitted from the first to the second.

Why isotonic and not Platt: the raw share comes from models trained for a next-item or next-basket
softmax, not for this event, and how it relates to the purchase probability varies by model and
data set (repeat-heavy grocery lists against long-tail catalogues); isotonic assumes only that a
higher share never means a lower probability, which keeps every list's order, where Platt forces a
sigmoid in the log-share. It needs more pairs than Platt's two parameters, and validation gives
users x K of them (thousands at least). Between the fitted boundaries it interpolates linearly,
outside it is clamped (as Spark's own model predicts).

The map is stored with the model (``calibration.json`` in its folder, with the training run it was
fitted for, so a retrained model is refitted) together with the expected calibration error (ECE,
10 equal-width bins of the calibrated value) and each bin's pairs, mean confidence and bought rate
(the reliability diagram, :func:`plot_reliability`). It is fitted and measured on validation only
(:func:`ensure_calibration`, by the train stage's export or the first stage that needs it). The
validation ECE is out of fold (:func:`cross_fitted_bins`): an isotonic map measured on the pairs it
was fitted on is calibrated by construction (ECE 0.0000 on Complete Journey, which says nothing),
so each half of the users is binned by a map fitted on the other half. The test
ECE is measured by the evaluate stage on its own test lists of the served model
(:func:`measure_on_test`), so the test split is read by evaluate alone, once per run, and the number
describes the model that is served (the refit, with the map of the validation-chosen model).
Caveat: queries exist only for users active in the period, so this is the probability given the
user shops then.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

CALIBRATION_FILE = "calibration.json"
RAW, LABEL, FOLD = "raw_confidence", "label", "fold"
ECE_BINS = 10
FOLDS = 2  # the validation ECE's folds of users (cross_fitted_bins)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A monotone map raw confidence -> probability (isotonic boundaries and their values)."""

    boundaries: tuple[float, ...]
    predictions: tuple[float, ...]
    method: str = "isotonic"
    model_run_id: Optional[str] = None  # the training run of the model it was fitted for
    pairs: int = 0
    positive_rate: Optional[float] = None
    ece_validation: Optional[float] = None  # None: not measured (no pairs)
    ece_test: Optional[float] = None
    # The reliability diagram's bins, (bin, pairs, mean calibrated confidence, bought rate) per non-empty bin.
    reliability_validation: tuple = ()
    reliability_test: tuple = ()

    def __post_init__(self) -> None:
        if not self.boundaries or len(self.boundaries) != len(self.predictions):
            raise ValueError("a calibration needs as many predictions as boundaries, at least one")
        if np.any(np.diff(self.boundaries) < 0) or np.any(np.diff(self.predictions) < 0):
            raise ValueError("isotonic boundaries and predictions must be non-decreasing")

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of ``raw`` confidences (linear between boundaries, clamped outside)."""
        return np.interp(np.asarray(raw, dtype=np.float64), self.boundaries, self.predictions).astype(np.float32)

    def summary(self) -> dict:
        """The numbers a report shows (the map itself stays in calibration.json)."""
        return {"method": self.method, "pairs": self.pairs, "positive_rate": self.positive_rate,
                "ece_validation": self.ece_validation, "ece_test": self.ece_test}

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / CALIBRATION_FILE
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, model_dir: str | Path) -> Optional["Calibration"]:
        path = Path(model_dir) / CALIBRATION_FILE
        if not path.exists():
            return None
        values = json.loads(path.read_text())
        bins = {name: tuple(tuple(row) for row in values.get(name, ()))
                for name in ("reliability_validation", "reliability_test")}
        return cls(**{**values, "boundaries": tuple(values["boundaries"]), "predictions": tuple(values["predictions"]),
                      **bins})


def fit_isotonic(pairs: DataFrame) -> Calibration:
    """Isotonic regression of ``label`` (0/1) on ``raw_confidence`` over the pairs, in Spark (only
    the fitted boundaries come back to the driver)."""
    from pyspark.ml.regression import IsotonicRegression

    data = pairs.select(F.col(RAW).cast("double").alias(RAW), F.col(LABEL).cast("double").alias(LABEL))
    stats = data.agg(F.count(F.lit(1)).alias("n"), F.avg(LABEL).alias("rate")).collect()[0]
    if not stats["n"]:
        raise ValueError("no pairs to fit a calibration on")
    model = IsotonicRegression(featuresCol=RAW, labelCol=LABEL, isotonic=True).fit(data)
    return Calibration(tuple(float(b) for b in model.boundaries.toArray()),
                       tuple(float(p) for p in model.predictions.toArray()),
                       pairs=int(stats["n"]), positive_rate=float(stats["rate"]))


# Confidences in [0, 1] at 18 decimals: sums of millions of them stay exact in 38 digits.
_EXACT = "decimal(38,18)"


def reliability_bins(pairs: DataFrame, calibration: Calibration, bins: int = ECE_BINS) -> tuple:
    """The pairs in ``bins`` equal-width bins of the calibrated confidence: (bin, pairs, mean calibrated
    confidence, bought rate) for every non-empty bin, in bin order (one small aggregate: a row per bin)."""
    boundaries, predictions = list(calibration.boundaries), list(calibration.predictions)

    @F.pandas_udf("double")
    def calibrated(raw):
        import pandas as pd

        return pd.Series(np.interp(raw.to_numpy(dtype=np.float64), boundaries, predictions))

    scored = pairs.select(calibrated(F.col(RAW).cast("double")).alias("_p"), F.col(LABEL).cast("double").alias("_y"))
    # The mean confidence is summed as a decimal: a sum of doubles depends on the order Spark adds
    # them in (the partitioning), and a re-run must store the same ECE to the last bit.
    per_bin = (scored.groupBy(F.least(F.floor(F.col("_p") * bins), F.lit(bins - 1)).cast("int").alias("_bin"))
               .agg(F.count(F.lit(1)).alias("n"), F.avg(F.col("_p").cast(_EXACT)).alias("p"), F.avg("_y").alias("y"))
               .collect())
    return tuple(sorted((int(row["_bin"]), int(row["n"]), float(row["p"]), float(row["y"])) for row in per_bin))


def ece_of_bins(per_bin: tuple) -> Optional[float]:
    """ECE = sum over bins of |bought rate - mean confidence| x the bin's share of pairs; None without pairs."""
    total = sum(n for _, n, _, _ in per_bin)
    if not total:
        return None
    return float(sum(n * abs(y - p) for _, n, p, y in per_bin) / total)


def merged_bins(per_fold: list[tuple]) -> tuple:
    """Reliability bins of disjoint sets of pairs added up: per bin, the pairs and their
    pair-weighted mean confidence and bought rate."""
    merged: dict[int, tuple[int, float, float]] = {}
    for per_bin in per_fold:
        for b, n, p, y in per_bin:
            total, p_sum, y_sum = merged.get(b, (0, 0.0, 0.0))
            merged[b] = (total + n, p_sum + n * p, y_sum + n * y)
    return tuple((b, n, p_sum / n, y_sum / n) for b, (n, p_sum, y_sum) in sorted(merged.items()))


def cross_fitted_bins(pairs: DataFrame, folds: int = FOLDS, bins: int = ECE_BINS) -> tuple:
    """Out-of-fold reliability bins of ``pairs`` (with ``fold``, a hash of the user): each fold's pairs
    binned by an isotonic map fitted on the other folds' pairs, then added up (:func:`merged_bins`).
    Empty () when a fold has no pairs to fit on or to measure (too few users): not measured, rather
    than an in-sample figure."""
    # One small aggregate (a row per fold) rather than an emptiness check of each side of each fold.
    if pairs.select(FOLD).distinct().count() < folds:
        return ()
    return merged_bins([reliability_bins(pairs.filter(F.col(FOLD) == fold),
                                         fit_isotonic(pairs.filter(F.col(FOLD) != fold)), bins)
                        for fold in range(folds)])


def expected_calibration_error(pairs: DataFrame, calibration: Calibration, bins: int = ECE_BINS) -> Optional[float]:
    """ECE over equal-width bins of the calibrated value (:func:`reliability_bins`); None without pairs."""
    return ece_of_bins(reliability_bins(pairs, calibration, bins))


def plot_reliability(calibration: Calibration, path: Path, title: str) -> Optional[Path]:
    """The reliability diagram: bought rate against mean calibrated confidence per bin, validation and
    test, the diagonal for perfect calibration, and each bin's share of test pairs; None without bins."""
    if not calibration.reliability_validation and not calibration.reliability_test:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curve, counts) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    curve.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    for name, per_bin, ece in (("validation", calibration.reliability_validation, calibration.ece_validation),
                               ("test", calibration.reliability_test, calibration.ece_test)):
        if per_bin:
            curve.plot([p for _, _, p, _ in per_bin], [y for _, _, _, y in per_bin], marker="o",
                       label=f"{name} (ECE {ece:.4f})")
    curve.set_ylabel("bought in the period (share)")
    curve.set_xlim(0, 1)
    curve.set_ylim(0, 1)
    curve.legend(fontsize=8)
    curve.set_title(title, fontsize=10)
    per_bin = calibration.reliability_test or calibration.reliability_validation
    total = sum(n for _, n, _, _ in per_bin)
    counts.bar([(b + 0.5) / ECE_BINS for b, _, _, _ in per_bin], [n / total for _, n, _, _ in per_bin],
               width=0.9 / ECE_BINS)
    counts.set_xlabel(f"calibrated confidence ({ECE_BINS} bins)")
    counts.set_ylabel("share of pairs")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


REPORT_SECTION = "## Confidence calibration"


def report_section(model: str, summary: dict, plot_name: Optional[str]) -> list[str]:
    """The evaluation report's lines on the served model's confidence (``summary``:
    :meth:`Calibration.summary`): the map, its ECE on validation and on test, the reliability diagram."""
    ece = {name: "not measured" if summary.get(f"ece_{name}") is None else f"{summary[f'ece_{name}']:.4f}"
           for name in ("validation", "test")}
    return ["", REPORT_SECTION, "",
            f"`{model}`: confidence = isotonic map of the softmax share to the bought rate, fitted on "
            f"{summary['pairs']:,} validation pairs (top-K recommendations; bought rate "
            f"{summary.get('positive_rate') or 0:.4f}). Expected calibration error ({ECE_BINS} bins): validation "
            f"{ece['validation']} (out of fold: each half of the users binned by the map fitted on the other), "
            f"**test {ece['test']}** (the served model's test lists above)."
            + (f" Reliability diagram: `{plot_name}`." if plot_name else "")]


def labelled_pairs(top: DataFrame) -> DataFrame:
    """(raw_confidence, label, fold) of recommendation rows (``user_id``, ``confidence``, ``item_id``,
    ``relevant``: the item_ids the user bought in the period); ``fold`` splits the users by a hash
    (:func:`cross_fitted_bins`)."""
    from recspark import constants as C

    return top.select(F.col(C.CONFIDENCE).alias(RAW),
                      F.array_contains(C.RELEVANT, F.col(C.ITEM_ID)).cast("double").alias(LABEL),
                      F.pmod(F.xxhash64(C.USER_ID), F.lit(FOLDS)).cast("int").alias(FOLD))


def calibration_pairs(queries: DataFrame, vocab: DataFrame, model_dir: str, k: int, exclude_seen: bool, *,
                      batch_size: int = 512, item_block: int = 4096) -> DataFrame:
    """(raw_confidence, label, fold): every top-``k`` recommendation of each query (history before the
    period) and whether the user bought it in the period (``relevant`` holds its item_ids)."""
    from recspark import constants as C
    from recspark.scoring import recommend_indices  # loads the scorer only where a fit happens

    top = recommend_indices(queries, model_dir, k, exclude_seen, batch_size, item_block=item_block,
                            keep=[C.RELEVANT])
    return labelled_pairs(top.join(F.broadcast(vocab.select(C.ITEM_ID, C.ITEM_IDX)), C.ITEM_IDX))


def ensure_calibration(spark, config, model: str, model_run_id: Optional[str]) -> Optional[Calibration]:
    """The model's stored calibration if it was fitted for this training run, else one fitted now on
    the validation queries (at most ``score.calibration_users`` users), with its ECE there, and saved
    beside the model. Never reads the test split (:func:`measure_on_test` does, in evaluate). None
    without validation queries."""
    from recspark import constants as C
    from recspark.scoring import require_model_inputs
    from recspark.utils.delta import read_table, table_exists

    model_dir = str(config.model_dir(model))
    stored = Calibration.load(model_dir)
    # A map stored before the reliability bins were kept is fitted again (its diagram needs them).
    if stored is not None and stored.model_run_id == model_run_id and stored.reliability_validation:
        return stored
    queries_path = config.table_path(C.GOLD, C.EVAL_QUERIES)
    if not table_exists(spark, queries_path):
        return None
    queries = read_table(spark, queries_path).filter(F.col(C.SPLIT) == C.VALIDATION)
    score = config.score
    # The same users every time (a hash order, not the file order).
    rows = require_model_inputs(queries.orderBy(F.xxhash64(C.USER_ID), C.USER_ID).limit(score.calibration_users),
                                model_dir, queries_path)
    vocab = read_table(spark, config.table_path(C.GOLD, C.ITEM_VOCAB))
    validation = calibration_pairs(rows, vocab, model_dir, score.k, config.evaluate.exclude_seen,
                                   batch_size=score.batch_size, item_block=score.item_block).persist()
    try:
        if validation.isEmpty():
            return None
        fitted = fit_isotonic(validation)
        on_validation = cross_fitted_bins(validation)
        calibration = dataclasses.replace(fitted, model_run_id=model_run_id, ece_validation=ece_of_bins(on_validation),
                                          reliability_validation=on_validation)
    finally:
        validation.unpersist()
    calibration.save(model_dir)
    return calibration


def measure_on_test(spark, config, model: str, model_run_id: Optional[str], lists: DataFrame,
                    queries: DataFrame) -> Optional[Calibration]:
    """The model's validation calibration (:func:`ensure_calibration`) with its ECE and reliability
    bins on ``lists``: the evaluate stage's test top-K of the served model (``user_id``, ``rank``,
    ``item_id``, raw ``confidence``), labelled by the test ``queries``' ``relevant`` items. Saved
    with the model, where the score stage reads it. None without a validation calibration."""
    from recspark import constants as C

    calibration = ensure_calibration(spark, config, model, model_run_id)
    if calibration is None:
        return None
    top = (lists.filter(F.col(C.RANK) <= config.score.k)
           .join(queries.select(C.USER_ID, C.RELEVANT), C.USER_ID))
    on_test = reliability_bins(labelled_pairs(top), calibration)
    measured = dataclasses.replace(calibration, ece_test=ece_of_bins(on_test), reliability_test=on_test)
    measured.save(config.model_dir(model))
    return measured
