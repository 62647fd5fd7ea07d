"""MLflow tracking of training runs: parameters, per-epoch metrics, data versions, the model, its version.

The driver logs once a run has finished (Horovod's rank 0 returns everything it needs), so worker
processes never talk to the tracking server. The default store is SQLite under
``paths.checkpoints`` (git-ignored) with artifacts beside it; ``tracking.uri`` overrides it
(``databricks`` on Databricks). Each run's exported model is registered under
``tracking.registered_model`` or ``recspark-<dataset>-<model>``, one new version per run.
"""
from __future__ import annotations

import dataclasses
import numbers
import re
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from recspark import constants as C
from recspark.config import TrackingConfig

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
MODEL_ARTIFACT_PATH = "model"
# The MLflow pyfunc of the export (recspark.serving), the registered version when the model has one.
PYFUNC_ARTIFACT_PATH = "pyfunc"
# Parameter values are configuration scalars or short lists of them; anything longer is not a
# configuration value (and MLflow would reject values over 6000 characters anyway).
MAX_PARAM_CHARS = 500
# A parameter whose key names an identity column could carry a person's id: refused outright.
FORBIDDEN_KEY_PARTS = (C.USER_ID, "user_ids", "email")


@dataclasses.dataclass
class TrackedRun:
    """Where a training run was logged: print these to find it again."""

    tracking_uri: str
    experiment_id: str
    run_id: str
    registered_model: str
    model_version: int


def _mlflow() -> Any:
    """Imports mlflow on first use: stages that do not track never pay for it. (MLflow 3.1.4's SQL store
    does not import with SQLAlchemy 2.1, hence the sqlalchemy pin in requirements.txt.)"""
    import mlflow

    return mlflow


def tracking_uri(tracking: TrackingConfig, checkpoints_dir: str | Path) -> str:
    """``tracking.uri`` when set, else a SQLite store under the checkpoints folder (absolute path)."""
    if tracking.uri:
        return tracking.uri
    folder = Path(checkpoints_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / DB_FILE}"


def registered_model_name(tracking: TrackingConfig, dataset: str, model: str, schema: str | None = None) -> str:
    """``tracking.registered_model`` or ``recspark-<dataset>-<model>``; with ``schema``
    (``catalog.schema``, :attr:`Config.registry_schema`) a name without dots goes into it, its
    characters other than letters, digits and ``_`` as ``_`` (Unity Catalog's three-level names)."""
    name = tracking.registered_model or f"recspark-{dataset}-{model}"
    if schema is None or "." in name:
        return name
    return f"{schema}.{re.sub(r'[^A-Za-z0-9_]', '_', name)}"


def flatten_params(sections: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """``{"train": {"epochs": 3}}`` -> ``{"train.epochs": "3"}``, refusing anything but config values.

    Raises ValueError for a key that names an identity column, a value that is not a scalar or a
    short list of scalars (nested structures and long strings are data, not configuration): the
    parameters of a run are public to whoever reads the tracking server, and must never hold a
    raw user id.
    """
    params: dict[str, str] = {}
    for section, values in sections.items():
        for key, value in values.items():
            name = f"{section}.{key}"
            if any(part in key.lower() for part in FORBIDDEN_KEY_PARTS):
                raise ValueError(f"parameter {name!r} names an identity column: not logged")
            items = value if isinstance(value, (list, tuple)) else [value]
            if not all(v is None or isinstance(v, (str, bool, numbers.Number)) for v in items):
                raise ValueError(f"parameter {name!r} is not a configuration value: {type(value).__name__}")
            text = ",".join(str(v) for v in items) if isinstance(value, (list, tuple)) else str(value)
            if len(text) > MAX_PARAM_CHARS:
                raise ValueError(f"parameter {name!r} has {len(text)} characters: not a configuration value")
            params[name] = text
    return params


def _experiment_id(client: Any, name: str, uri: str, checkpoints_dir: str | Path) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # With the local SQLite store, artifacts go next to the database (MLflow's default would be
    # ./mlruns under whatever directory the job happened to start in).
    location = (Path(checkpoints_dir).resolve() / ARTIFACTS_DIR).as_uri() if uri.startswith("sqlite:") else None
    return client.create_experiment(name, artifact_location=location)


def log_training_run(
    tracking: TrackingConfig,
    *,
    checkpoints_dir: str | Path,
    dataset: str,
    model: str,
    params: Mapping[str, Mapping[str, Any]],
    metrics: Mapping[str, list[float]],
    table_versions: Mapping[str, int],
    model_dir: str | Path,
    tags: Optional[Mapping[str, str]] = None,
    pyfunc_dir: str | Path | None = None,
    schema: str | None = None,
) -> TrackedRun:
    """Logs one finished training run and registers its exported model; returns the run and version.

    ``params``: sections of configuration values (e.g. ``{"train": ..., "model": ...}``), see
    :func:`flatten_params`; ``metrics``: per-epoch series (step = epoch, 1-based);
    ``table_versions``: Delta table path -> version of every gold table the run read; the files
    directly in ``model_dir`` (the export, not the checkpoints) become the ``model`` artifacts;
    ``pyfunc_dir`` (recspark.serving.save_pyfunc), when given, is logged as ``pyfunc`` and is what
    the registered version points to (``mlflow models serve -m models:/<name>/<version>`` serves it);
    ``schema``: see :func:`registered_model_name`.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    flat = flatten_params(params)
    uri = tracking_uri(tracking, checkpoints_dir)
    client = MlflowClient(uri, registry_uri=tracking.registry_uri)
    experiment_id = _experiment_id(client, tracking.experiment, uri, checkpoints_dir)
    run_tags = {"dataset": dataset, "model": model, **(tags or {})}
    for path, version in table_versions.items():
        run_tags[f"data.{Path(path).name}.path"] = str(path)
    data_params = {f"data.{Path(path).name}.version": str(version) for path, version in table_versions.items()}

    run = client.create_run(experiment_id, tags=run_tags, run_name=f"{dataset}-{model}")
    run_id = run.info.run_id
    try:
        from mlflow.entities import Metric, Param

        all_params = {**flat, **data_params}
        client.log_batch(run_id, params=[Param(k, v) for k, v in sorted(all_params.items())])
        now = int(time.time() * 1000)
        series = [Metric(name, float(value), now, step) for name, values in metrics.items()
                  for step, value in enumerate(values, start=1)]
        for start in range(0, len(series), 1000):  # MLflow's batch limit
            client.log_batch(run_id, metrics=series[start:start + 1000])
        for file in sorted(Path(model_dir).iterdir()):
            if file.is_file() and not file.name.startswith("."):
                client.log_artifact(run_id, str(file), MODEL_ARTIFACT_PATH)
        vocab = Path(model_dir) / "vocab"
        if vocab.is_dir():  # the vocabularies the model was trained with travel with it (warm start reads them)
            client.log_artifacts(run_id, str(vocab), f"{MODEL_ARTIFACT_PATH}/vocab")
        if pyfunc_dir is not None:
            client.log_artifacts(run_id, str(pyfunc_dir), PYFUNC_ARTIFACT_PATH)
        name = registered_model_name(tracking, dataset, model, schema)
        try:
            client.create_registered_model(name)
        except MlflowException as error:
            if "RESOURCE_ALREADY_EXISTS" not in str(error.error_code):
                raise
        source = (f"{client.get_run(run_id).info.artifact_uri}/"
                  f"{PYFUNC_ARTIFACT_PATH if pyfunc_dir is not None else MODEL_ARTIFACT_PATH}")
        version = client.create_model_version(name, source=source, run_id=run_id)
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return TrackedRun(tracking_uri=uri, experiment_id=experiment_id, run_id=run_id, registered_model=name,
                      model_version=int(version.version))
