"""report.md, the plots and the MLflow logging of an evaluation, from a hand-made report dict."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from recspark.config import load_config
from recspark.evaluation.evaluate import (
    plot_accuracy_vs_coverage, plot_repeat_explore, plot_training_curves, write_report_md,
)
from recspark.evaluation.mlflow_log import evaluation_metrics, log_evaluation

FULL = ("precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k", "mean_average_precision", "hit_rate_at_k", "mrr_at_k")


def make_report(sampled: int | None = None) -> dict:
    names = ("hit_rate_at_k", "ndcg_at_k", "mrr_at_k") if sampled else FULL
    models = ("mean_pool", "als")
    # Distinct values per (k, model, metric) so that a misplaced cell shows.
    at_k = {str(k): {m: {n: round(0.001 * k + 0.1 * i + 0.01 * j, 4) for j, n in enumerate(names)}
                     for i, m in enumerate(models)} for k in (5, 10, 20)}
    point = {"rank": 16, "reg_param": 0.1, "seconds": 1.0, "validation": {"ndcg_at_k": 0.2, "hit_rate_at_k": 0.3}}
    metrics = {"ndcg_at_k": 0.2, "hit_rate_at_k": 0.3, "recall_at_k": 0.1, "mrr_at_k": 0.15}
    return {
        "run_id": "r1", "dataset": "toy", "k": 10, "users": 7, "catalogue_items": 30,
        "protocol": "SAMPLED (not full ranking): ..." if sampled else "full ranking over all items",
        "sampled_negatives": sampled, "models": at_k["10"], "at_k": at_k,
        "beyond_accuracy": {m: {"catalogue_coverage": 0.5, "relative_popularity": 2.0, "novelty": 7.5,
                                "intra_list_diversity": 0.25} for m in models},
        "als_tuning": {"selection": "ndcg@10 on validation", "chosen_by": "cross_validation", "refit": "refit",
                       "chosen": {"rank": 16, "reg_param": 0.1}, "grid": [point],
                       "cross_validation": {"selection": "mean ndcg@10 over 3 users folds", "seconds": 9.0,
                                            "grid": [{"rank": 16, "reg_param": 0.1, "mean": metrics,
                                                      "std": {n: 0.01 for n in metrics}}]}},
        "repeat_explore": {m: {"recall_rep": 0.4 + 0.01 * i, "recall_expl": 0.02 + 0.001 * i, "repeat_share": 0.9,
                               "users_rep": 6, "users_expl": 5} for i, m in enumerate(models)},
        "repeat_explore_protocol": "top 10 of the full-ranking lists",
        "tifu_knn_tuning": {"selection": "ndcg@10 on validation", "chosen_by": "validation", "refit": "refit",
                            "similarity_items": None, "seconds": 3.0,
                            "chosen": {"group_count": 7, "within_decay": 0.9, "group_decay": 0.9, "neighbours": 100,
                                       "alpha": 0.1},
                            "grid": [{"group_count": 7, "within_decay": 0.9, "group_decay": 0.9, "neighbours": 100,
                                      "alpha": 0.1, "seconds": 1.0,
                                      "validation": {"ndcg_at_k": 0.31, "hit_rate_at_k": 0.7}}],
                            "build_seconds": [{"group_count": 7, "within_decay": 0.9, "group_decay": 0.9, "seconds": 2.0}]},
        "training": {"mean_pool": {"loss_history": [3.0, 2.5, 2.2], "val_ndcg_history": [0.1, 0.12, 0.13]}},
        "plots": {"training_curves": "training_curves.png"}, "predictions_table": "/x/predictions",
        "evaluation_seconds": 12.0, "mlflow": "not logged",
    }


def test_report_md_has_one_table_of_every_model_and_metric_at_5_10_20(tmp_path: Path) -> None:
    report = make_report()
    text = write_report_md(report, tmp_path / "report.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| model | precision@5"))
    for name in ("precision", "recall", "ndcg", "map", "hit_rate", "mrr"):
        for k in (5, 10, 20):
            assert f"| {name}@{k} |" in header
    row = next(line for line in text.splitlines() if line.startswith("| als |"))
    cells = row.strip("| ").split(" | ")
    # Columns are metric-major: precision@5, precision@10, precision@20, recall@5, ...
    assert cells[1:4] == [f"{report['at_k'][k]['als']['precision_at_k']:.4f}" for k in ("5", "10", "20")]
    assert "SAMPLED" not in text
    assert "16 | 0.1 | 0.2000 +- 0.0100" in text  # the cross-validation mean +- std
    assert "![training_curves](training_curves.png)" in text
    # The repeat / explore table, one row per model, and TIFU-KNN's grid with its choice.
    assert "| model | recall_rep@10 | recall_expl@10 | repeat share@10 | users (rep) | users (expl) |" in text
    assert "| als | 0.4100 | 0.0210 | 0.9000 | 6 | 5 |" in text
    assert "| 7 | 0.9 | 0.9 | 100 | 0.1 | 0.3100 | 0.7000 | 1.0 |" in text
    assert "chosen by validation: 7 groups, within-group decay 0.9, group decay 0.9, 100 neighbours, alpha 0.1" in text


def test_report_without_tifu_or_repeat_explore_has_neither_section(tmp_path: Path) -> None:
    report = {**make_report(), "tifu_knn_tuning": None, "repeat_explore": {}}
    text = write_report_md(report, tmp_path / "report.md").read_text()
    assert "TIFU-KNN tuning" not in text and "Repeat / explore" not in text
    assert plot_repeat_explore(report, tmp_path / "re.png") is None


def test_sampled_report_is_labelled(tmp_path: Path) -> None:
    text = write_report_md(make_report(sampled=100), tmp_path / "report.md").read_text()
    assert text.splitlines()[0].startswith("# toy: SAMPLED (100 negatives)")
    assert "Metrics below are SAMPLED" in text and "MAP (full list)" not in text


def test_plots_are_written_and_curves_need_a_history(tmp_path: Path) -> None:
    report = make_report()
    assert plot_accuracy_vs_coverage(report, tmp_path / "a.png").stat().st_size > 0
    assert plot_repeat_explore(report, tmp_path / "re.png").stat().st_size > 0
    assert plot_training_curves(report, tmp_path / "t.png").stat().st_size > 0
    assert plot_training_curves({**report, "training": {}}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_mlflow_gets_every_metric(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    config = load_config(None, [f"paths.checkpoints={tmp_path}/checkpoints", "dataset.name=synthetic"])
    report = make_report()
    (tmp_path / "report.md").write_text("x")
    where = log_evaluation(config, report, tmp_path, [tmp_path / "report.md"])
    run_id, uri = where.split()[1], where.split(" at ")[1]
    run = MlflowClient(uri).get_run(run_id)
    expected = evaluation_metrics(report)
    assert run.data.metrics == pytest.approx(expected)
    assert expected["als.ndcg_20"] == report["at_k"]["20"]["als"]["ndcg_at_k"]
    assert expected["als.recall_rep"] == report["repeat_explore"]["als"]["recall_rep"]
    assert expected["mean_pool.users_expl"] == 5
    assert run.data.tags["recspark_run_id"] == "r1" and run.data.params["als.rank"] == "16"
    assert run.data.params["tifu.alpha"] == "0.1" and run.data.params["tifu.group_count"] == "7"
    assert [a.path for a in MlflowClient(uri).list_artifacts(run_id, "evaluation")] == ["evaluation/report.md"]
    # NaN metrics (no queries) are not sent: MLflow would store them as NaN silently.
    nan_report = copy.deepcopy(report)
    nan_report["at_k"]["5"]["als"]["ndcg_at_k"] = float("nan")
    assert "als.ndcg_5" not in evaluation_metrics(nan_report)
