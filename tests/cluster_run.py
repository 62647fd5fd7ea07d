"""The small generated shop's whole pipeline on a multi-process Spark cluster, in its own process
(tests/test_pipeline.py starts it: one SparkContext per process, and the suite's is local[2]).

    python tests/cluster_run.py <master> <out.json>

Run from the folder the outputs go to: the paths are relative, as in conf/local.yaml, while every
executor runs in a working directory of its own, so anything an executor reads by a path the
driver did not make absolute fails here. Writes the stage summaries and what tells the processes
apart (the executors Spark knows, each Python worker's ancestry against the driver JVM's pid) as JSON,
with the tables as they stood after features (test_pipeline's rerun compares them).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shop and settings of test_pipeline
from conftest import INTERPRETED_EVALUATION  # noqa: E402
from test_pipeline import pipeline_overrides, shop, snapshot  # noqa: E402

from recspark.config import load_config  # noqa: E402
from recspark.session import get_spark  # noqa: E402
from recspark.stages import ingest_stage, run_pipeline, select_stages  # noqa: E402


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
    # test_pipeline's small run, on the cluster; its tests read the outputs.
    config = load_config(None, [*pipeline_overrides("."), f"spark.master={master}", "spark.shuffle_partitions=2",
                                "spark.driver_memory=2g"])
    config.spark.extra.update({"spark.ui.enabled": "false", **INTERPRETED_EVALUATION})
    spark = get_spark(config.spark)
    shop_ingest = {"ingest": lambda session, conf: ingest_stage(session, conf, shop(session))}
    summaries = run_pipeline(spark, config, select_stages(stop="features"), bodies=shop_ingest)
    tables = snapshot(spark, config)
    summaries.update(run_pipeline(spark, config, select_stages(start="train")))
    sc = spark.sparkContext
    report = {
        "master": sc.master,
        "summaries": summaries,
        "executors": [info.host() + ":" + str(info.port()) for info in sc._jsc.sc().statusTracker().getExecutorInfos()],
        "driver_jvm_pid": int(spark._jvm.java.lang.ProcessHandle.current().pid()),
        "driver_python_pid": os.getpid(),
        "python_workers": sc.parallelize(range(4), 4).map(ancestors).collect(),
        "cwd": os.getcwd(),
        "tables": tables,
    }
    Path(out).write_text(json.dumps(report, indent=2, default=str))
    spark.stop()


if __name__ == "__main__":
    main(*sys.argv[1:3])
