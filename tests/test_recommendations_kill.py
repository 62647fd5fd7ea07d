"""A SIGKILL in the middle of a run's write leaves the table's previous version readable, and the
re-run completes: a driver process (its own JVM) re-writes a run through write_run with a slow
transformation, is killed (with its JVM) once some of its data files exist but before its commit,
and this session then reads the old rows and re-runs the write."""
from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from pyspark.sql import SparkSession

from recspark import constants as C
from recspark.recommendations import write_run

SCHEMA = ("user_id string, rank int, item_id string, score float, confidence float, reason string, run_id string, "
          "model_name string, model_version string, generated_at timestamp")

CHILD = textwrap.dedent('''
    import sys, time
    from pyspark.sql import functions as F
    from recspark.config import SparkConfig
    from recspark.recommendations import write_run
    from recspark.session import get_spark

    path = sys.argv[1]
    spark = get_spark(SparkConfig(master="local[2]", app_name="kill-test", shuffle_partitions=2, driver_memory="1g",
                                  extra={"spark.ui.enabled": "false"}))

    @F.udf("string")
    def slow(value):
        time.sleep(0.02)  # so that the tasks end, and write their files, well before the commit
        return value

    rows = (spark.range(0, 800, numPartitions=4)
            .select(F.concat(F.lit("new-"), F.col("id").cast("string")).alias("user_id"), F.lit(1).alias("rank"),
                    slow(F.lit("item")).alias("item_id"), F.lit(1.0).cast("float").alias("score"),
                    F.lit(0.5).cast("float").alias("confidence"), F.lit("why").alias("reason"),
                    F.lit("run-b").alias("run_id"), F.lit("m").alias("model_name"), F.lit("2").alias("model_version"),
                    F.current_timestamp().alias("generated_at")))
    print("writing", flush=True)
    write_run(rows, path, "run-b", keep_runs=0)
    print("committed", flush=True)
''')


def _rows(spark: SparkSession, path: str) -> list[tuple]:
    return sorted((r[C.RUN_ID], r[C.USER_ID], r[C.ITEM_ID]) for r in spark.read.format("delta").load(path).collect())


def test_sigkill_during_the_write_leaves_the_previous_version_and_the_rerun_completes(
        spark: SparkSession, tmp_path: Path) -> None:
    path = str(tmp_path / "recommendations")
    at = dt.datetime(2026, 12, 1)
    for run, users in (("run-a", ["a1", "a2"]), ("run-b", ["b1"])):
        rows = [(u, 1, "x", 1.0, 0.5, "why", run, "m", "1", at) for u in users]
        write_run(spark.createDataFrame(rows, SCHEMA), path, run, keep_runs=0)
    before = _rows(spark, path)
    log = Path(path) / "_delta_log"
    commits = sorted(log.glob("*.json"))
    partition = Path(path) / "run_id=run-b"
    old_files = set(partition.glob("*.parquet"))

    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    # Its own process group, so that the kill takes its JVM too.
    child = subprocess.Popen([sys.executable, str(script), path], env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed_mid_write = False
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and child.poll() is None:
            if set(partition.glob("*.parquet")) - old_files:
                # New data files, and still no new commit: the middle of the write.
                killed_mid_write = sorted(log.glob("*.json")) == commits
                os.killpg(child.pid, signal.SIGKILL)
                break
            time.sleep(0.1)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        output = child.communicate(timeout=60)[0]
    assert killed_mid_write, f"the child was not caught between its data files and its commit:\n{output[-3000:]}"
    assert "committed" not in output

    # The previous version, exactly; the killed write's files are there but belong to no version.
    assert sorted(log.glob("*.json")) == commits
    assert _rows(spark, path) == before
    # The re-run of run-b completes and replaces only run-b.
    rows = [(u, 1, "y", 1.0, 0.5, "why", "run-b", "m", "2", at) for u in ("b7", "b8", "b9")]
    write_run(spark.createDataFrame(rows, SCHEMA), path, "run-b", keep_runs=0)
    assert _rows(spark, path) == [("run-a", "a1", "x"), ("run-a", "a2", "x"),
                                  ("run-b", "b7", "y"), ("run-b", "b8", "y"), ("run-b", "b9", "y")]
