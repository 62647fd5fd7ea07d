"""The job plumbing: jobs/pipeline.py's stage selection and arguments, every job's --verbose, and
Spark's log level (ERROR unless --verbose) on a real session. Fast: no stage runs here."""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from types import ModuleType

import pytest
from pyspark.sql import SparkSession

from recspark.config import Config, load_config
from recspark.session import logs_warnings
from recspark.stages import STAGES, select_stages
from recspark.utils.jobs import job_parser, last_stage_seconds, release_cached, run_job

ROOT = Path(__file__).resolve().parent.parent
CONF = ["--conf-file", str(ROOT / "conf" / "local.yaml")]


def job_module(name: str) -> ModuleType:
    """jobs/<name>.py as a module (jobs/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"job_{name}", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_stage_of_make_run_has_its_own_job_and_the_pipeline_runs_them_in_order() -> None:
    assert list(STAGES) == ["ingest", "prepare", "features", "train", "evaluate", "score", "summary"]
    makefile = (ROOT / "Makefile").read_text()
    stages_line = next(line for line in makefile.splitlines() if line.startswith("STAGES :="))
    assert stages_line.split(":=")[1].split() + ["summary"] == list(STAGES)
    assert "jobs/pipeline.py" in makefile
    for stage in STAGES:
        assert (ROOT / "jobs" / f"{stage}.py").is_file()


@pytest.mark.parametrize("kwargs, expected", [
    ({}, list(STAGES)),
    ({"start": "features"}, ["features", "train", "evaluate", "score", "summary"]),
    ({"stop": "features"}, ["ingest", "prepare", "features"]),
    ({"start": "train", "stop": "score"}, ["train", "evaluate", "score"]),
    ({"stages": ["score", "train"]}, ["train", "score"]),  # pipeline order, whatever the order given
    ({"stages": ["summary"]}, ["summary"]),
])
def test_stage_selection(kwargs: dict, expected: list[str]) -> None:
    assert select_stages(**kwargs) == expected


@pytest.mark.parametrize("kwargs, message", [
    ({"stages": ["train", "fetaures"]}, "unknown stage 'fetaures'"),
    ({"start": "scoring"}, "unknown stage 'scoring'"),
    ({"start": "score", "stop": "train"}, "comes after"),
    ({"stages": ["train"], "start": "ingest"}, "not both"),
])
def test_bad_stage_selection_names_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select_stages(**kwargs)


def test_pipeline_arguments() -> None:
    pipeline = job_module("pipeline")
    config, args, stages = pipeline.parse_args(CONF + ["--from", "features", "--set", "train.epochs=1"])
    assert isinstance(config, Config) and config.train.epochs == 1
    assert stages == ["features", "train", "evaluate", "score", "summary"] and not args.verbose
    _, args, stages = pipeline.parse_args(CONF + ["--stages", "evaluate,train", "--verbose"])
    assert stages == ["train", "evaluate"] and args.verbose
    assert pipeline.parse_args(CONF + ["--stages", "ingest prepare"])[2] == ["ingest", "prepare"]
    assert pipeline.parse_args(CONF)[2] == list(STAGES)


@pytest.mark.parametrize("argv", [["--stages", "trian"], ["--from", "score", "--to", "ingest"],
                                  ["--stages", "train", "--from", "ingest"], ["--set", "train.epoch=1"]])
def test_bad_pipeline_arguments_exit_with_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        job_module("pipeline").parse_args(CONF + argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_every_job_accepts_verbose() -> None:
    assert job_parser("any").parse_args(["--verbose"]).verbose
    assert not job_parser("any").parse_args([]).verbose


def root_log_level(spark: SparkSession) -> str:
    return str(spark.sparkContext._jvm.org.apache.logging.log4j.LogManager.getRootLogger().getLevel())


def test_a_job_logs_spark_errors_only_unless_verbose(spark: SparkSession, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    overrides = [f"paths.reports={tmp_path}/reports", f"paths.lakehouse={tmp_path}/lakehouse"]
    argv = CONF + [arg for override in overrides for arg in ("--set", override)]
    seen = []

    def body(session: SparkSession, config: Config) -> dict:
        seen.append((session, root_log_level(session)))
        return {"rows": "none"}

    spark.sparkContext.setLogLevel("WARN")
    try:
        assert run_job("summary", body, argv) == {"rows": "none"}
        assert seen[-1] == (spark, "ERROR")  # the job reuses the session, quiet from before its body runs
        assert not logs_warnings(spark)  # Horovod's launcher follows: no launch commands printed
        # Petastorm's advice on its own cache files is not printed either.
        assert not logging.getLogger("petastorm.spark.spark_dataset_converter").isEnabledFor(logging.WARNING)
        # Nor MLflow's store set-up (alembic's INFO lines pass no more, its warnings still do).
        record = logging.LogRecord("alembic.runtime.migration", logging.INFO, __file__, 1, "Context impl", None, None)
        assert not logging.getLogger("alembic.runtime.migration").filter(record)
        record.levelno = logging.WARNING
        assert logging.getLogger("alembic.runtime.migration").filter(record)
        out = capsys.readouterr().out
        assert out.startswith("== summary (completejourney) ...\n")
        assert "== recspark summary (completejourney) done in" in out and "rows: none" in out
        # The next run's start line says how long this one took.
        assert set(last_stage_seconds(load_config(None, overrides))) == {"summary"}
        run_job("summary", body, argv + ["--verbose"])
        assert seen[-1][1] == "WARN" and logs_warnings(spark)
        assert logging.getLogger("petastorm.spark.spark_dataset_converter").isEnabledFor(logging.WARNING)
        assert "== summary (completejourney), last run " in capsys.readouterr().out
    finally:
        spark.sparkContext.setLogLevel("ERROR")


def test_release_cached_drops_cached_dataframes_and_persisted_rdds(spark: SparkSession) -> None:
    df = spark.range(10).persist()
    df.count()
    rdd = spark.sparkContext.parallelize(range(10)).persist()
    rdd.count()
    cache_manager = spark._jsparkSession.sharedState().cacheManager()
    assert not cache_manager.isEmpty() and len(spark.sparkContext._jsc.getPersistentRDDs()) > 0
    release_cached(spark)
    assert cache_manager.isEmpty() and len(spark.sparkContext._jsc.getPersistentRDDs()) == 0


def test_a_failing_stage_says_so_and_raises_its_error(spark: SparkSession, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    def body(session: SparkSession, config: Config) -> dict:
        raise ValueError("no events at all")

    with pytest.raises(ValueError, match="no events at all"):
        run_job("prepare", body, CONF + ["--set", f"paths.reports={tmp_path}/reports"])
    assert "== recspark prepare (completejourney) FAILED after" in capsys.readouterr().out
    spark.sparkContext.setLogLevel("ERROR")


def test_run_pipeline_runs_the_selected_stages_in_order_with_replaced_bodies(spark: SparkSession, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    """What tests/test_pipeline.py relies on: the selected stages run in order on the one session,
    a stage's function can be replaced (the shop's own ingest), and the closing line times each."""
    from recspark.stages import run_pipeline

    config = load_config([str(ROOT / "conf" / "local.yaml")], [f"paths.reports={tmp_path}/reports"])
    ran = []

    def fake(name: str):
        def body(session: SparkSession, conf: Config) -> dict:
            assert session is spark and conf is config
            spark.range(3).persist().count()  # left cached on purpose: released after the stage
            ran.append(name)
            return {"stage": name}
        return body

    summaries = run_pipeline(spark, config, select_stages(stop="prepare"),
                             bodies={"ingest": fake("ingest"), "prepare": fake("prepare")})
    assert ran == ["ingest", "prepare"] and summaries == {"ingest": {"stage": "ingest"}, "prepare": {"stage": "prepare"}}
    assert spark._jsparkSession.sharedState().cacheManager().isEmpty()
    out = capsys.readouterr().out
    assert out.index("== ingest (completejourney) ...") < out.index("== prepare (completejourney) ...")
    assert "== recspark pipeline (completejourney) done in" in out.splitlines()[-1]
    assert "ingest" in out.splitlines()[-1] and "prepare" in out.splitlines()[-1]


@pytest.mark.parametrize("verbose", [False, True])
def test_a_fresh_mlflow_store_sets_up_quietly_unless_verbose(tmp_path: Path, verbose: bool) -> None:
    """A brand-new SQLite store runs MLflow's migrations, whose modules log INFO lines on loggers of
    their own; a quiet job shows none of them (a process of its own: a fresh store, fresh loggers)."""
    import subprocess
    import sys

    script = ("from recspark.session import set_library_log_levels; "
              f"set_library_log_levels({verbose}); import mlflow; "
              f"mlflow.MlflowClient('sqlite:///{tmp_path}/mlflow.db').search_experiments()")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "mlflow.db").exists()
    assert ("Migration complete" in run.stderr) == verbose, run.stderr[-3000:]


@pytest.mark.parametrize("verbose", [False, True])
def test_mlflow_downloads_show_no_progress_bar_unless_verbose(tmp_path: Path, verbose: bool) -> None:
    """make run's console lost its lines to MLflow's "Downloading artifacts" bars (the export reads the
    logged model back); a quiet job turns them off (a process of its own: the setting is an environment
    variable). The bars are tqdm's, which set-up does not install, so the test reads the setting MLflow
    decides by rather than only the console."""
    import subprocess
    import sys

    script = ("import os, pathlib; os.environ.pop('MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR', None); "
              "from recspark.session import set_library_log_levels; "
              f"set_library_log_levels({verbose}); import mlflow; "
              "from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR as BAR; "
              "print('bars', BAR.get()); "
              f"mlflow.set_tracking_uri('sqlite:///{tmp_path}/mlflow.db'); "
              f"files = pathlib.Path('{tmp_path}/files'); files.mkdir(); "
              "[(files / f'{i}.txt').write_text('x') for i in range(3)]; "
              "run = mlflow.start_run(); mlflow.log_artifacts(str(files), 'a'); mlflow.end_run(); "
              f"mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path='{tmp_path}/out')")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(list((tmp_path / "out").rglob("*.txt"))) == 3
    assert f"bars {verbose}" in run.stdout.splitlines(), run.stdout
    if not verbose:
        assert "Downloading artifacts" not in run.stderr, run.stderr[-3000:]
