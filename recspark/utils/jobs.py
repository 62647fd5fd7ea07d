"""Plumbing shared by the thin job entry points: arguments, session, run id, one stage's lines.

Every job (and ``jobs/pipeline.py``) prints one line when a stage starts (``== <stage> ...``), a
heartbeat while a long stage runs, and the ``== recspark <stage> done`` summary when it ends;
Spark's own logging stays at ERROR unless ``--verbose``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from pyspark.sql import SparkSession

from recspark.config import Config, ConfigError, add_config_arguments, load_config
from recspark.session import get_spark

StageFn = Callable[[SparkSession, Config], dict]
STAGE_SECONDS_FILE = "stage_seconds.json"
HEARTBEAT_SECONDS = 60.0


def new_run_id(config: Config) -> str:
    return f"{config.run_name}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"


def job_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every job accepts: ``--conf-file``, ``--set`` and ``--verbose``."""
    parser = add_config_arguments(argparse.ArgumentParser(description=description))
    parser.add_argument("--verbose", action="store_true",
                        help="Spark's warnings and console progress bars (default: Spark errors only)")
    return parser


def parse_job_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    """The validated Config and the parsed arguments; exits naming the key on a bad configuration,
    before any Spark session starts."""
    args = parser.parse_args(argv)
    try:
        return load_config(args.conf_file, args.overrides), args
    except ConfigError as error:
        parser.error(str(error))
        raise  # unreachable: parser.error exits


def _stage_seconds_path(config: Config) -> Path:
    return config.reports_dir / STAGE_SECONDS_FILE


def last_stage_seconds(config: Config) -> dict[str, float]:
    """Each stage's duration in the last run of this data set (empty before the first): the
    start line's estimate of the time a stage takes."""
    try:
        return {str(k): float(v) for k, v in json.loads(_stage_seconds_path(config).read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def _record_stage_seconds(config: Config, stage: str, seconds: float) -> None:
    times = last_stage_seconds(config)
    times[stage] = round(seconds, 1)
    try:
        write_json(_stage_seconds_path(config), times)
    except OSError:  # a read-only reports directory costs the next run its estimate, nothing else
        pass


def short_duration(seconds: float) -> str:
    """``42s``, ``3m05s``: for progress lines."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Heartbeat:
    """Prints a line every ``interval`` seconds while a stage runs: elapsed time, the expected time
    left (from the last run) and what Spark is doing (the active stage's tasks done). Stops with the
    stage; reads only Spark's status tracker, so it adds no Spark job."""

    def __init__(self, spark: SparkSession, stage: str, expected: Optional[float], interval: float = HEARTBEAT_SECONDS):
        self.spark, self.stage, self.expected, self.interval = spark, stage, expected, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{stage}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        text = f"   {self.stage}: {short_duration(elapsed)} elapsed"
        if self.expected is not None:
            left = self.expected - elapsed
            text += f", ~{short_duration(left)} left (last run {short_duration(self.expected)})" if left > 0 else \
                f", longer than the last run ({short_duration(self.expected)})"
        return text + self.spark_activity()

    def spark_activity(self) -> str:
        try:
            tracker = self.spark.sparkContext.statusTracker()
            stages = [info for info in (tracker.getStageInfo(i) for i in tracker.getActiveStageIds()) if info]
        except Exception:  # noqa: BLE001 - a heartbeat must never fail the stage
            return ""
        if not stages:
            return ""
        done = sum(info.numCompletedTasks for info in stages)
        total = sum(info.numTasks for info in stages)
        return f"; Spark: {done}/{total} tasks of {len(stages)} active stage{'s' if len(stages) > 1 else ''}"

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            print(self.line(), flush=True)


def release_cached(spark: SparkSession) -> None:
    """Drops every cached DataFrame and persisted RDD, so the next stage in the same application
    starts with the executors' memory free (each stage unpersists its own; this catches the rest)."""
    spark.catalog.clearCache()
    for rdd in spark.sparkContext._jsc.getPersistentRDDs().values():
        rdd.unpersist(False)


def print_summary(stage: str, config: Config, summary: dict, seconds: float, master: str) -> None:
    """The ``== recspark <stage> done`` block: what was written, how many rows, where."""
    print(f"\n== recspark {stage} ({config.run_name}) done in {seconds:.1f} s on {master}")
    width = max((len(str(key)) for key in summary), default=0)
    for key, value in summary.items():
        print(f"   {str(key) + ':':<{width + 1}} {value}")
    print(flush=True)


def stage_started(config: Config, stage: str) -> None:
    """The stage's start line, with its time in the last run when there was one."""
    expected = last_stage_seconds(config).get(stage)
    print(f"== {stage} ({config.run_name})" + (f", last run {short_duration(expected)}" if expected is not None else "") + " ...",
          flush=True)


def run_stage(spark: SparkSession, config: Config, stage: str, body: StageFn, *, heartbeat: bool = True,
              started: Optional[float] = None) -> tuple[dict, float]:
    """Runs one stage: its start line (unless ``started``, the ``perf_counter`` time the caller
    started it at and printed the line), a heartbeat while it runs (``heartbeat``; training prints
    its own epoch lines), its summary, and its time recorded for the next run's estimate. Returns
    the summary and the seconds it took."""
    expected = last_stage_seconds(config).get(stage)
    if started is None:
        stage_started(config, stage)
        started = time.perf_counter()
    try:
        if heartbeat:
            with Heartbeat(spark, stage, expected):
                summary = body(spark, config)
        else:
            summary = body(spark, config)
    except BaseException:
        print(f"\n== recspark {stage} ({config.run_name}) FAILED after {time.perf_counter() - started:.1f} s "
              "(the error follows)", flush=True)
        raise
    seconds = time.perf_counter() - started
    _record_stage_seconds(config, stage, seconds)
    print_summary(stage, config, summary, seconds, spark.sparkContext.master)
    return summary, seconds


def run_job(stage: str, body: StageFn, argv: list[str] | None = None, *, heartbeat: bool = True) -> dict:
    """One stage as its own application: parses arguments (failing before Spark starts on a bad
    key), starts or reuses the session, runs ``body`` and prints its summary (``heartbeat``: see
    :func:`run_stage`)."""
    config, args = parse_job_args(job_parser(f"recspark {stage}"), argv)
    stage_started(config, stage)
    started = time.perf_counter()  # as before: the job's time includes starting Spark
    spark = get_spark(config.spark, verbose=args.verbose)
    summary, _ = run_stage(spark, config, stage, body, heartbeat=heartbeat, started=started)
    return summary


def write_json(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return path
