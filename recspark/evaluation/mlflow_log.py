"""The evaluation report in MLflow: one run per evaluation, beside the training runs.

Uses the project's tracking set-up (:mod:`recspark.tracking`: the same URI, SQLite by default, and
experiment). Logged: every model's metrics at every K (``<model>.<metric>_<K>``, since MLflow
names cannot hold ``@``), the beyond-accuracy and repeat / explore numbers, the ALS and TIFU-KNN
choices, the protocol as a tag, and the report's files (metrics.json, report.md, the PNG plots) as
artifacts.
"""
from __future__ import annotations

from pathlib import Path

from recspark import constants as C
from recspark.config import Config


def evaluation_metrics(report: dict) -> dict[str, float]:
    """The report's numbers as flat MLflow metric names (NaN values are left out)."""
    metrics = {}
    for k, per_model in report["at_k"].items():
        for model, values in per_model.items():
            for name, value in values.items():
                metrics[f"{model}.{name.replace('_at_k', '')}_{k}"] = value
    for section in ("beyond_accuracy", "repeat_explore"):
        for model, values in (report.get(section) or {}).items():
            for name, value in values.items():
                metrics[f"{model}.{name}"] = value
    return {name: float(value) for name, value in metrics.items() if value == value}


def log_evaluation(config: Config, report: dict, run_dir: Path, files: list[Path]) -> str:
    """Logs ``report`` and ``files`` to MLflow; returns "run <id> at <uri>"."""
    from recspark import tracking

    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    uri = tracking.tracking_uri(config.tracking, config.paths.checkpoints)
    client = MlflowClient(uri)
    experiment_id = tracking._experiment_id(client, config.tracking.experiment, uri, config.paths.checkpoints)
    sampled = report.get("sampled_negatives")
    tags = {"dataset": report["dataset"], "stage": "evaluate", "recspark_run_id": report[C.RUN_ID],
            "protocol": report["protocol"][:5000], "sampled": str(bool(sampled))}
    run = client.create_run(experiment_id, tags=tags, run_name=f"{report['dataset']}-evaluate")
    run_id = run.info.run_id
    try:
        params = {"k": report["k"], "sampled_negatives": sampled, "exclude_seen": config.evaluate.exclude_seen}
        if report.get("als_tuning"):
            chosen = report["als_tuning"]["chosen"]
            params.update({"als.rank": chosen["rank"], "als.reg_param": chosen["reg_param"],
                           "als.chosen_by": report["als_tuning"]["chosen_by"]})
        params.update({f"fit_on.{name}": fit for name, fit in (report.get("fit_on") or {}).items()})
        if report.get("tifu_knn_tuning"):
            params.update({f"tifu.{name}": value for name, value in report["tifu_knn_tuning"]["chosen"].items()})
        client.log_batch(run_id, params=[Param(name, str(value)) for name, value in sorted(params.items())])
        series = [Metric(name, value, 0, 0) for name, value in sorted(evaluation_metrics(report).items())]
        for start in range(0, len(series), 1000):  # MLflow's batch limit
            client.log_batch(run_id, metrics=series[start:start + 1000])
        for file in files:
            client.log_artifact(run_id, str(file), "evaluation")
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return f"run {run_id} at {uri}"
