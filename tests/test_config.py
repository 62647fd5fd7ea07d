"""Configuration: YAML layering, --set overrides, and errors that name the key before Spark starts."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recspark.config import ConfigError, load_config, parse_override

ROOT = Path(__file__).resolve().parent.parent


def test_files_layer_in_order_and_overrides_win(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("train:\n  epochs: 4\n  learning_rate: 0.01\nfeatures:\n  max_seq_len: 20\n")
    extra = tmp_path / "extra.yaml"
    extra.write_text("train:\n  epochs: 6\n")
    config = load_config([str(base), str(extra)], ["features.max_seq_len=30", "dataset.name=ml-1m"])
    assert (config.train.epochs, config.train.learning_rate) == (6, 0.01)
    assert config.features.max_seq_len == 30
    assert config.dataset.name == "ml-1m"
    assert config.table_path("gold", "item_vocab") == "lakehouse/ml-1m/gold/item_vocab"


def test_int_is_accepted_for_float() -> None:
    assert load_config(None, ["train.learning_rate=1"]).train.learning_rate == 1.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epoch=3", "unknown configuration key 'train.epoch'"),
        ("trainer.epochs=3", "unknown configuration key 'trainer'"),
        ("train.epochs=three", "train.epochs: expected int"),
        ("train.epochs=0", "train.epochs: must be > 0"),
        ("train.epochs=true", "train.epochs: expected int"),
        ("dataset.name=imdb", "dataset.name: 'imdb' is not one of"),
        ("ingest.min_event_ts=yesterday", "ingest.min_event_ts: not an ISO date"),
        ("train", "expected section.key=value"),
        ("features.target_horizon_days=0", "features.target_horizon_days: must be > 0"),
        ("evaluate.tifu_alphas=[]", "evaluate.tifu_vector_settings, evaluate.tifu_neighbours, evaluate.tifu_alphas"),
        ("evaluate.tifu_alphas=[1.5]", "evaluate.tifu_neighbours must be >= 1 and evaluate.tifu_alphas in"),
        ("evaluate.tifu_vector_settings=[[7, 0.9]]", "evaluate.tifu_vector_settings: each must be"),
        ("evaluate.tifu_vector_settings=[[7, 0.9, 0]]", "evaluate.tifu_vector_settings: each must be"),
        ("evaluate.tifu_similarity_items=0", "evaluate.tifu_similarity_items: null or >= 1"),
        ("evaluate.baselines=[most_popular,alss]", "evaluate.baselines: name at least one of"),
        ("evaluate.baselines=[]", "evaluate.baselines: name at least one of"),
        ("train.ignored_weight=-1", "train.ignored_weight: must be >= 0"),
        ("train.ignored_weight=1", "train.ignored_weight: only next-basket models"),  # the default models: sasrec
        ("feedback.ignored_days=0", "feedback.ignored_days: must be > 0"),
        ("loop.variants=[warm,warm_ignored,hot]", "loop.variants: distinct names from"),
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_file_names_file_and_key(tmp_path: Path) -> None:
    conf = tmp_path / "bad.yaml"
    conf.write_text("score:\n  topk: 5\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown configuration key 'score\.topk'"):
        load_config([str(conf)])


def test_parse_override_reads_yaml_values() -> None:
    assert parse_override("ingest.event_types=[view, click]") == {"ingest": {"event_types": ["view", "click"]}}


def test_job_fails_before_spark_starts() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "ingest.py"), "--conf-file", str(ROOT / "conf" / "local.yaml"),
         "--set", "train.batchsize=3"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "unknown configuration key 'train.batchsize'" in result.stderr
    assert "SparkContext" not in result.stderr and "log4j" not in result.stderr


def test_per_model_train_settings_replace_the_shared_ones_for_that_model_only() -> None:
    config = load_config(overrides=["train.batch_size=256", "train.models=[sasrec,towers]",
                                    "train.per_model={sasrec: {batch_size: 64, learning_rate: 0.001}}"])
    sasrec, towers = config.train.for_model("sasrec"), config.train.for_model("towers")
    assert (sasrec.batch_size, sasrec.learning_rate, sasrec.epochs) == (64, 0.001, config.train.epochs)
    assert (towers.batch_size, towers.learning_rate) == (256, config.train.learning_rate)
    assert sasrec.per_model == {} and config.train.batch_size == 256


@pytest.mark.parametrize("override, named", [
    ("train.per_model={sasrec: {batch_sise: 64}}", "train.per_model.sasrec.batch_sise"),
    ("train.per_model={sasrec: {num_proc: 4}}", "train.per_model.sasrec.num_proc"),
    ("train.per_model={sasrec: {batch_size: '64'}}", "train.per_model.sasrec.batch_size"),
    ("train.per_model={sasrec: {epochs: 0}}", "train.per_model.sasrec.epochs"),
])
def test_bad_per_model_train_settings_name_the_key(override: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(overrides=[override])


def test_the_parameters_logged_for_a_model_are_its_own_flat_settings() -> None:
    from recspark.stages import model_train_params
    from recspark.tracking import flatten_params

    config = load_config(overrides=["train.per_model={sasrec: {batch_size: 64}}"])
    params = flatten_params({"train": model_train_params(config, "sasrec")})
    assert params["train.batch_size"] == "64" and not any(key.startswith("train.per_model") for key in params)


def test_set_merges_into_per_model_instead_of_replacing_it(tmp_path: Path) -> None:
    layer = tmp_path / "layer.yaml"
    layer.write_text("train:\n  per_model:\n    sasrec: {batch_size: 64, learning_rate: 0.001, epochs: 5}\n")
    config = load_config([str(layer)], ["train.per_model.sasrec.epochs=1"])
    assert config.train.per_model["sasrec"] == {"batch_size": 64, "learning_rate": 0.001, "epochs": 1}


def test_command_line_shared_value_wins_over_a_file_per_model_value(tmp_path: Path, capsys) -> None:
    layer = tmp_path / "layer.yaml"
    layer.write_text("train:\n  epochs: 3\n  per_model:\n    sasrec: {batch_size: 64, epochs: 5}\n")
    config = load_config([str(layer)], ["train.epochs=1"])
    sasrec = config.train.for_model("sasrec")
    assert (sasrec.epochs, sasrec.batch_size) == (1, 64)
    assert "replaces train.per_model.sasrec.epochs=5" in capsys.readouterr().err
    # A per-model value given on the command line itself is kept.
    config = load_config([str(layer)], ["train.epochs=1", "train.per_model.sasrec.epochs=2"])
    assert config.train.for_model("sasrec").epochs == 2


@pytest.mark.parametrize("override, named", [
    ("train.models=[sasrec, tower]", "train.models: unknown model 'tower'"),
    ("train.per_model={sasrek: {epochs: 2}}", "train.per_model: unknown model 'sasrek'"),
    ("train.per_model={sasrec: {sampler: zipf}}", "train.per_model.sasrec.sampler: 'zipf' is not one of"),
    ("train.per_model={towers: {dropout: 1.5}}", "train.per_model.towers.dropout: must be in"),
    ("train.softmax=partial", "train.softmax: 'partial' is not one of"),
    ("train.num_heads=0", "train.num_heads: must be > 0"),
])
def test_model_names_and_every_effective_value_are_checked(override: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.").replace("[", r"\[").replace("(", r"\(")):
        load_config(overrides=[override])


def test_describe_marks_the_per_model_values() -> None:
    config = load_config(overrides=["train.per_model={sasrec: {batch_size: 64}}", "train.batch_size=256"])
    line = config.train.describe("sasrec")
    assert "batch_size=64*" in line and f"epochs={config.train.epochs}," in line


def test_a_variant_shares_bronze_and_silver_and_owns_the_rest() -> None:
    config = load_config([str(ROOT / "conf" / "local.yaml"), str(ROOT / "conf" / "datasets" / "completejourney-nbr.yaml")])
    assert config.table_path("silver", "events") == "lakehouse/completejourney/silver/events"
    assert config.table_path("gold", "item_vocab") == "lakehouse/completejourney-nbr/gold/item_vocab"
    # Absolute: executors (Horovod ranks, scoring UDFs) read it from working folders of their own.
    assert config.model_dir("repeatnet") == Path.cwd() / "checkpoints" / "completejourney-nbr" / "repeatnet"
    assert str(config.reports_dir) == "reports/completejourney-nbr"


def test_the_tested_and_served_models_are_refits_of_the_same_run_only(tmp_path: Path) -> None:
    import json

    config = load_config(None, [f"paths.checkpoints={tmp_path}"])
    chosen = config.model_dir("repeatnet")
    assert config.fitted_model_dir("repeatnet") == chosen  # nothing trained yet
    (chosen / "refit").mkdir(parents=True)
    (chosen / "run.json").write_text(json.dumps({"run_id": "r2"}))
    (chosen / "refit" / "run.json").write_text(json.dumps({"run_id": "r1"}))
    assert config.fitted_model_dir("repeatnet") == chosen  # a refit left from an older run is not used
    (chosen / "refit" / "run.json").write_text(json.dumps({"run_id": "r2"}))
    assert config.fitted_model_dir("repeatnet") == chosen / "refit"
    # What serves: the refit on every period, of the same run only; else the tested one.
    assert config.served_model_dir("repeatnet") == chosen / "refit"
    (chosen / "serve").mkdir()
    (chosen / "serve" / "run.json").write_text(json.dumps({"run_id": "r1"}))
    assert config.served_model_dir("repeatnet") == chosen / "refit"
    (chosen / "serve" / "run.json").write_text(json.dumps({"run_id": "r2"}))
    assert config.served_model_dir("repeatnet") == chosen / "serve"
    assert config.fitted_model_dir("repeatnet") == chosen / "refit"
