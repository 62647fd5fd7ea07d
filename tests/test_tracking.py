"""MLflow tracking against a real SQLite store in a temporary folder: run, params, metrics, versions."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from recspark.config import TrackingConfig, load_config
from recspark.stages import model_train_params
from recspark.tracking import (DB_FILE, MODEL_ARTIFACT_PATH, _mlflow, flatten_params, log_training_run,
                               registered_model_name, tracking_uri)


def _model_dir(tmp_path):
    model_dir = tmp_path / "model"
    (model_dir / "state").mkdir(parents=True)
    (model_dir / "model.keras").write_bytes(b"weights")
    (model_dir / "model_meta.json").write_text(json.dumps({"best_epoch": 2}))
    (model_dir / "state" / "epoch-001.npz").write_bytes(b"checkpoint, not an artifact")
    (model_dir / "vocab" / "item_vocab.parquet").mkdir(parents=True)
    (model_dir / "vocab" / "item_vocab.parquet" / "part-0.parquet").write_bytes(b"vocabulary rows")
    return model_dir


def test_default_uri_is_sqlite_under_checkpoints(tmp_path):
    assert tracking_uri(TrackingConfig(), tmp_path / "ck") == f"sqlite:///{(tmp_path / 'ck' / DB_FILE).resolve()}"
    assert tracking_uri(TrackingConfig(uri="databricks"), tmp_path) == "databricks"
    assert registered_model_name(TrackingConfig(), "ml-1m", "sasrec") == "recspark-ml-1m-sasrec"
    assert registered_model_name(TrackingConfig(registered_model="main.recs.m"), "ml-1m", "sasrec") == "main.recs.m"
    # Unity Catalog: into the configured schema, a three-level name of letters, digits and _.
    assert registered_model_name(TrackingConfig(), "ml-1m", "sasrec", "main.recs") == "main.recs.recspark_ml_1m_sasrec"
    assert (registered_model_name(TrackingConfig(registered_model="recspark-cj-loop-warm-repeatnet"), "cj", "repeatnet",
                                  "main.recs") == "main.recs.recspark_cj_loop_warm_repeatnet")
    assert registered_model_name(TrackingConfig(registered_model="other.recs.m"), "cj", "x", "main.recs") == "other.recs.m"


def test_the_catalog_configuration_names_the_registry_schema():
    assert load_config(None, ["dataset.name=synthetic"]).registry_schema is None
    config = load_config([str(Path(__file__).resolve().parent.parent / "conf" / "databricks.yaml")], ["dataset.name=synthetic"])
    assert config.registry_schema == f"{config.paths.catalog}.{config.paths.schema}"
    assert config.tracking.registry_uri == "databricks-uc"


def test_params_refuse_anything_but_config_values():
    flat = flatten_params({"train": {"epochs": 3, "hidden_units": [128, 64], "softmax": "full", "resume": True}})
    assert flat == {"train.epochs": "3", "train.hidden_units": "128,64", "train.softmax": "full", "train.resume": "True"}
    with pytest.raises(ValueError, match="identity column"):
        flatten_params({"data": {"user_id": "u123"}})
    with pytest.raises(ValueError, match="not a configuration value"):
        flatten_params({"data": {"sample": {"u1": [1, 2]}}})
    with pytest.raises(ValueError, match="characters"):
        flatten_params({"data": {"ids": ["user-%05d" % i for i in range(200)]}})


def test_run_logged_and_model_version_increments(tmp_path):
    tracking = TrackingConfig(experiment="tests")
    checkpoints = tmp_path / "checkpoints"
    model_dir = _model_dir(tmp_path)
    train = model_train_params(load_config(overrides=["train.epochs=3"]), "mean_pool")  # as the train stage logs
    versions = {str(tmp_path / "gold" / "train_examples"): 4, str(tmp_path / "gold" / "eval_queries"): 7}
    runs = [log_training_run(
        tracking, checkpoints_dir=checkpoints, dataset="synthetic", model="mean_pool",
        params={"train": train, "model": {"embedding_dim": 8, "inputs": ["history"]}},
        metrics={"loss": [2.0, 1.5, 1.2], "val_ndcg_at_10": [0.1, 0.3 + i, 0.2]}, table_versions=versions,
        model_dir=model_dir, tags={"resumed_from_epoch": "0"}) for i in range(2)]

    assert (checkpoints / DB_FILE).is_file()
    assert [r.model_version for r in runs] == [1, 2] and runs[0].run_id != runs[1].run_id
    mlflow = _mlflow()
    client = mlflow.MlflowClient(runs[0].tracking_uri)
    run = client.get_run(runs[1].run_id)
    assert run.info.status == "FINISHED" and run.info.experiment_id == runs[1].experiment_id
    params = run.data.params
    assert params["train.epochs"] == "3" and params["model.embedding_dim"] == "8" and params["model.inputs"] == "history"
    assert params["data.train_examples.version"] == "4" and params["data.eval_queries.version"] == "7"
    assert run.data.tags["dataset"] == "synthetic" and run.data.tags["resumed_from_epoch"] == "0"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_ndcg_at_10")] == [
        (1, 0.1), (2, 1.3), (3, 0.2)]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [2.0, 1.5, 1.2]
    artifacts = sorted(a.path for a in client.list_artifacts(run.info.run_id, MODEL_ARTIFACT_PATH))
    assert artifacts == [f"{MODEL_ARTIFACT_PATH}/model.keras", f"{MODEL_ARTIFACT_PATH}/model_meta.json",
                         f"{MODEL_ARTIFACT_PATH}/vocab"]
    # The saved vocabularies go with the model (a warm start from a registered version needs them).
    vocab = [a.path for a in client.list_artifacts(run.info.run_id, f"{MODEL_ARTIFACT_PATH}/vocab/item_vocab.parquet")]
    assert vocab == [f"{MODEL_ARTIFACT_PATH}/vocab/item_vocab.parquet/part-0.parquet"]
    # The artifacts live beside the database, not in ./mlruns of the current directory.
    assert (checkpoints / "mlartifacts").is_dir()
    version = client.get_model_version(runs[1].registered_model, str(runs[1].model_version))
    assert version.run_id == runs[1].run_id and runs[1].registered_model == "recspark-synthetic-mean_pool"


def test_feature_model_spec_logs_sizes_not_item_tables() -> None:
    """A towers/dnn spec carries per-item tables: MLflow gets its sizes, and the guard accepts them."""
    from recspark.models import ModelSpec
    from recspark.stages import spec_params

    spec = ModelSpec(num_items=4, max_seq_len=3, item_counts=[0, 0, 5, 2], first_item_idx=2,
                     features={"user_vector_dim": 4, "num_categories": 3, "tables": {"category_idx": [0, 1, 2, 2]}})
    params = spec_params(spec)
    assert params["features_user_vector_dim"] == 4 and params["num_items"] == 4
    assert not any(isinstance(value, (dict, list)) for value in params.values())
    flat = flatten_params({"model": params})
    assert flat["model.features_num_categories"] == "3"
