"""The one place that builds a SparkSession.

On Databricks or under ``spark-submit`` a session already exists and is reused as it is. Locally a
session is built with Delta Lake configured from jars resolved once by ``make setup`` (so no test or
job run touches the network); without them it falls back to resolving Delta from Maven at start.
"""
from __future__ import annotations

import atexit
import glob
import importlib.metadata
import importlib.util
import logging
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

from pyspark.sql import SparkSession

from recspark.config import SparkConfig

log = logging.getLogger(__name__)

# The jar must match the delta-spark Python package. 4.4.1 is on PyPI but its jar is not on Maven
# Central (checked 2026-11-27: 404), so both are pinned to 4.4.0.
DELTA_PACKAGE = f"io.delta:delta-spark_4.0_2.13:{importlib.metadata.version('delta-spark')}"
JARS_DIR = Path(os.environ.get("RECSPARK_JARS_DIR", Path(__file__).resolve().parent.parent / ".jars"))

# A job without --verbose: Spark's own log lines from ERROR up only, from the JVM's first line on
# (setLogLevel comes too late for the start-up warnings), in Spark's format, stack traces in full.
# The PySpark gateway's own logger set to the root's level keeps Spark from switching a Python
# driver to WARN at start ("Setting default log level to WARN").
QUIET_LOG4J2 = """\
rootLogger.level = error
logger.pygateway.name = org.apache.spark.api.python.PythonGatewayServer
logger.pygateway.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
"""


def quiet_log4j2_file() -> Path:
    """The quiet log4j2 configuration as a file the driver JVM can read at start."""
    path = Path(tempfile.gettempdir()) / "recspark-log4j2-quiet.properties"
    if not path.is_file() or path.read_text() != QUIET_LOG4J2:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(QUIET_LOG4J2)
        os.replace(tmp, path)
    return path


def _below_warning(record: logging.LogRecord) -> bool:
    """A logging filter: only warnings and errors pass."""
    return record.levelno >= logging.WARNING


def mlflow_migration_loggers() -> list[str]:
    """The loggers of MLflow's database migrations: alembic loads each ``versions/<name>.py`` as module
    ``<name>_py`` (found without importing MLflow)."""
    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        return []
    versions = Path(next(iter(spec.submodule_search_locations))) / "store" / "db_migrations" / "versions"
    return sorted(f"{path.stem}_py" for path in versions.glob("*.py") if path.stem != "__init__")


def set_log_level(spark: SparkSession, verbose: bool) -> None:
    """Spark's (and py4j's) own logging: WARN with ``verbose``, else ERROR; quiet also keeps out
    TensorFlow's C++ info lines (unless TF_CPP_MIN_LOG_LEVEL is set), the driver's FutureWarnings and
    DeprecationWarnings, Horovod's launch commands (:func:`logs_warnings`) and the Python libraries'
    notices (:func:`set_library_log_levels`). Errors always show in full."""
    spark.sparkContext.setLogLevel("WARN" if verbose else "ERROR")
    set_library_log_levels(verbose)
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # The libraries' notices about their own future (Petastorm on pyarrow, pandas): not ours to act on.
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)


def set_library_log_levels(verbose: bool) -> None:
    """The Python logging of py4j, Petastorm, MLflow and alembic: warnings with ``verbose``, else
    errors (py4j, Petastorm) or warnings (MLflow, alembic) only, and no MLflow progress bars."""
    logging.getLogger("py4j").setLevel(logging.WARNING if verbose else logging.ERROR)
    # Petastorm's advice on its cache's file sizes (it writes the files itself): not the user's to act on.
    logging.getLogger("petastorm").setLevel(logging.WARNING if verbose else logging.ERROR)
    # MLflow's SQLite store announces its table set-up at every client (INFO lines of mlflow and of
    # alembic, whose logging MLflow configures from a file on each call, so a filter, not a level),
    # and a fresh store its migrations (loggers of their own, set to INFO when alembic loads them).
    for name in ("alembic.runtime.migration", *mlflow_migration_loggers()):
        if verbose:
            logging.getLogger(name).removeFilter(_below_warning)
        else:
            logging.getLogger(name).addFilter(_below_warning)  # adding it twice keeps one
    if not verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        # Its tqdm bar at every artifact download (the registered model's files, read back at export).
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        logging.getLogger("mlflow").setLevel(logging.WARNING)


def logs_warnings(spark: SparkSession | None = None) -> bool:
    """Whether Spark's log level lets warnings through (a job run with ``--verbose``); libraries that
    print on their own (Horovod's launcher) follow it. Without a session: True."""
    from pyspark import SparkContext

    context = spark.sparkContext if spark is not None else SparkContext._active_spark_context
    if context is None:
        return True
    level = context._jvm.org.apache.logging.log4j.LogManager.getRootLogger().getLevel()
    return level.isLessSpecificThan(context._jvm.org.apache.logging.log4j.Level.WARN)


def delta_jars(jars_dir: Path = JARS_DIR) -> list[str]:
    return sorted(glob.glob(str(jars_dir / "*.jar")))


def is_local_master(master: str) -> bool:
    """``local`` / ``local[n]`` / ``local[*]``: driver and executor in one JVM. Everything else
    (``local-cluster[...]``, ``spark://``, ``yarn``, ``k8s://``) has executors of their own."""
    return master == "local" or master.startswith("local[")


LOCAL_CLUSTER = re.compile(r"local-cluster\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]")


def executor_settings(config: SparkConfig) -> dict[str, str]:
    """What executors of their own need to run this driver's code: the Python that imports the same
    ``recspark`` (its directory first on PYTHONPATH, so a checkout wins over an installed copy, as on
    the driver), legacy Keras for TensorFlow in their Python workers and Horovod ranks, and their
    memory (``spark.executor_memory``; on ``local-cluster[n,cores,MB]`` by default each worker's MB,
    since every worker runs one executor). Delta's jars reach them through ``spark.jars``.
    Empty for a local master."""
    if is_local_master(config.master):
        return {}
    source = str(Path(__file__).resolve().parent.parent)
    python_path = os.pathsep.join(dict.fromkeys(filter(None, [source, *os.environ.get("PYTHONPATH", "").split(os.pathsep)])))
    settings = {
        "spark.executorEnv.PYTHONPATH": python_path,
        "spark.executorEnv.TF_USE_LEGACY_KERAS": "1",
        "spark.executorEnv.PYTHONUNBUFFERED": "1",
    }
    memory = config.executor_memory
    cluster = LOCAL_CLUSTER.fullmatch(config.master)
    if memory is None and cluster is not None:
        memory = f"{cluster.group(3)}m"
    if memory is not None:
        settings["spark.executor.memory"] = memory
    return settings


def local_cluster_home() -> Path:
    """A SPARK_HOME for ``local-cluster`` masters: the installed Spark's folders linked, and a ``work``
    folder of its own under the temporary folder. Its in-process workers run each executor in
    ``$SPARK_HOME/work/<app>/<executor>``, with a copy of every ``spark.jars`` jar (170 MB a run with
    Delta's), which would otherwise land inside the installed pyspark package (the venv)."""
    from pyspark.find_spark_home import _find_spark_home

    installed = Path(_find_spark_home()).resolve()
    home = Path(tempfile.gettempdir()) / "recspark-spark-home"
    (home / "work").mkdir(parents=True, exist_ok=True)
    for entry in installed.iterdir():
        link = home / entry.name
        if entry.name != "work" and not link.exists():
            try:
                link.symlink_to(entry)
            except FileExistsError:  # another job made it first
                pass
    return home


def _drop_executor_jars(app_dir: Path) -> None:
    """At exit: the executors' copies of the jars go; their stdout and stderr logs stay."""
    for jar in app_dir.glob("*/*.jar"):
        jar.unlink(missing_ok=True)


def get_spark(config: SparkConfig | None = None, *, verbose: bool = False) -> SparkSession:
    """Returns the active SparkSession, or builds a local one with Delta Lake configured.

    Without ``verbose`` Spark logs errors only and shows no console progress bars (the jobs print
    their own lines); an existing session keeps its settings except the log level.
    """
    active = SparkSession.getActiveSession()
    if active is None and "DATABRICKS_RUNTIME_VERSION" in os.environ:
        # A Databricks task (python_wheel_task): the cluster's session, as the runtime configured it
        # (Delta, Unity Catalog); Delta's OSS catalog settings below would replace Databricks' own.
        active = SparkSession.builder.getOrCreate()
    if active is not None:
        set_log_level(active, verbose)
        return active
    config = config or SparkConfig()
    # Spark's Python workers must run the same interpreter as the driver (the project's venv).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    # Under spark-submit the JVM is already running with the submitter's --master, memory and
    # jars (pass Delta's with --jars or --packages); setting them here would override or miss.
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    builder = (
        SparkSession.builder.appName(config.app_name)
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.shuffle.partitions", str(config.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.databricks.delta.snapshotPartitions", "2")
        .config("spark.ui.showConsoleProgress", "true" if verbose else "false")
    )
    cluster_home = None
    if not submitted:
        builder = builder.master(config.master).config("spark.driver.memory", config.driver_memory)
        if LOCAL_CLUSTER.fullmatch(config.master):
            cluster_home = local_cluster_home()
            os.environ["SPARK_HOME"] = str(cluster_home)
        for key, value in executor_settings(config).items():
            builder = builder.config(key, value)
        jars = delta_jars()
        if jars:
            builder = builder.config("spark.jars", ",".join(jars))
        else:
            log.warning("no Delta jars in %s (run `make setup`); resolving %s from Maven", JARS_DIR, DELTA_PACKAGE)
            builder = builder.config("spark.jars.packages", DELTA_PACKAGE)
    if not verbose:
        # Python workers (the scoring UDFs) get it through spark.executorEnv: TensorFlow then starts
        # quietly there as in the driver and the ranks (recspark.utils.native_log).
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        builder = builder.config("spark.executorEnv.TF_CPP_MIN_LOG_LEVEL", os.environ["TF_CPP_MIN_LOG_LEVEL"])
    extra = dict(config.extra)
    if not submitted:  # under spark-submit the driver JVM has started already
        # Threads of 4 MB stacks (the JVM's default is 1 MB): in local mode the tasks run in the driver,
        # and deserialising a task of a long lineage (ALS's iterations) recurses deeply; a fresh JVM,
        # still interpreting with large frames, overflowed it once (exit code 50 in the first test of
        # a CI run, 2026-12-04).
        java_options = ["-Xss4m", str(extra.pop("spark.driver.extraJavaOptions", ""))]
        if not verbose:
            java_options.insert(0, f"-Dlog4j2.configurationFile={quiet_log4j2_file().as_uri()}")
        builder = builder.config("spark.driver.extraJavaOptions", " ".join(filter(None, java_options)))
    for key, value in extra.items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    if cluster_home is not None:
        atexit.register(_drop_executor_jars, cluster_home / "work" / spark.sparkContext.applicationId)
    set_log_level(spark, verbose)
    return spark


def resolve_delta_jars(jars_dir: Path = JARS_DIR) -> list[str]:
    """Downloads Delta Lake and its dependencies once into ``jars_dir`` (used by ``make setup``)."""
    if delta_jars(jars_dir):
        return delta_jars(jars_dir)
    ivy = jars_dir / "ivy"
    spark = (
        SparkSession.builder.master("local[1]")
        .config("spark.jars.packages", DELTA_PACKAGE)
        .config("spark.jars.ivy", str(ivy))
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.stop()
    for jar in glob.glob(str(ivy / "jars" / "*.jar")):
        os.replace(jar, jars_dir / Path(jar).name)
    jars = delta_jars(jars_dir)
    if not any("delta-spark" in Path(jar).name for jar in jars):
        raise RuntimeError(f"resolving {DELTA_PACKAGE} into {jars_dir} gave no delta-spark jar")
    return jars


if __name__ == "__main__":
    for jar in resolve_delta_jars():
        print(jar)
