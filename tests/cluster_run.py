"""The small generated shop's whole pipeline on a multi-process Spark cluster, in its own process
(tests/test_cluster.py starts it: one SparkContext per process, and the suite's is local[2]).

    python tests/cluster_run.py <master> <out.json>

Run from the folder the outputs go to: the paths are relative, as in conf/local.yaml, while every
executor runs in a working directory of its own, so anything an executor reads by a path the
driver did not make absolute fails here. Writes the stage summaries and what tells the processes
apart (the executors Spark knows, each Python worker's ancestry against the driver JVM's pid) as JSON.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pyspark.sql import functions as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shop and settings of test_pipeline
from test_pipeline import pipeline_overrides, shop  # noqa: E402

from recspark import constants as C  # noqa: E402
from recspark.config import load_config  # noqa: E402
from recspark.session import get_spark  # noqa: E402
from recspark.stages import ingest_stage, run_pipeline  # noqa: E402


def ancestors(_: object) -> list[tuple[int, str]]:
    """This process and its ancestors (from /proc), nearest first: (pid, command name)."""
    chain, pid = [], os.getpid()
    while pid > 1 and len(chain) < 8:
        with open(f"/proc/{pid}/stat") as stat:
            head, rest = stat.read().rsplit(")", 1)
        chain.append((pid, head.split("(", 1)[1]))
        pid = int(rest.split()[1])
    return chain


def main(master: str, out: str) -> None:
    # test_pipeline's small shop and stages, on the cluster.
    config = load_config(None, [*pipeline_overrides("."), f"spark.master={master}", "spark.shuffle_partitions=2",
                                "spark.driver_memory=2g", "spark.extra={spark.ui.enabled: false}",
                                # What this test is about is where the stages run, not the models or
                                # baselines (test_pipeline covers those): the cheapest model, one baseline.
                                "train.models=[mean_pool]", "train.epochs=1", "evaluate.baselines=[most_popular]"])
    spark = get_spark(config.spark)
    summaries = run_pipeline(spark, config, bodies={"ingest": lambda session, conf: ingest_stage(session, conf, shop(session))})
    sc = spark.sparkContext
    recommendations = spark.read.format("delta").load(config.recommendations_path)
    per_user = recommendations.groupBy(C.USER_ID).agg(F.count("*").alias("n")).agg(
        F.count("*").alias("users"), F.min("n").alias("min"), F.max("n").alias("max")).first().asDict()
    report = {
        "master": sc.master,
        "summaries": summaries,
        "executors": [info.host() + ":" + str(info.port()) for info in sc._jsc.sc().statusTracker().getExecutorInfos()],
        "driver_jvm_pid": int(spark._jvm.java.lang.ProcessHandle.current().pid()),
        "driver_python_pid": os.getpid(),
        "python_workers": sc.parallelize(range(4), 4).map(ancestors).collect(),
        "recommendations_per_user": per_user,
        "cwd": os.getcwd(),
    }
    Path(out).write_text(json.dumps(report, indent=2, default=str))
    spark.stop()


if __name__ == "__main__":
    main(*sys.argv[1:3])
