"""The whole pipeline on a multi-process cluster: Spark's local-cluster mode, two executor JVMs of one
core each with their own Python workers, beside the driver (the mode `make run MASTER=...` uses;
README "Running on a cluster"). The small generated shop of test_pipeline.py runs end to end in a
process of its own (tests/cluster_run.py), with relative paths, so that:

- Delta's jars reach the executors through spark.jars (every stage reads and writes Delta there);
- the executors' Python workers import this checkout's recspark and run TensorFlow with legacy
  Keras (spark.executorEnv.*): the scoring UDFs run there;
- train's two Horovod ranks are Spark tasks on the executors: with one core each, both ranks can
  only run at once on two different executors, and horovod.spark.run needs them at once;
- the Petastorm cache and the model folder are absolute paths every executor reads, though each
  executor works in a folder of its own.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_pipeline import K, USERS

MASTER = "local-cluster[2,1,1024]"
SCRIPT = Path(__file__).resolve().parent / "cluster_run.py"


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("cluster")
    out = root / "report.json"
    run = subprocess.run([sys.executable, str(SCRIPT), MASTER, str(out)], cwd=root, capture_output=True, text=True,
                         timeout=2400, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
    assert run.returncode == 0, f"cluster run failed ({run.returncode}):\n{run.stdout[-6000:]}\n{run.stderr[-6000:]}"
    return {"root": root, "stdout": run.stdout, **json.loads(out.read_text())}


def test_every_stage_ran_on_the_cluster(cluster_run: dict) -> None:
    assert cluster_run["master"] == MASTER
    assert list(cluster_run["summaries"]) == ["ingest", "prepare", "features", "train", "evaluate", "score", "summary"]
    for stage in cluster_run["summaries"]:
        assert f"== recspark {stage} (synthetic) done in" in cluster_run["stdout"]
        assert f"on {MASTER}" in cluster_run["stdout"]
    assert "2 Horovod ranks" in cluster_run["summaries"]["train"]["mean_pool"]


def test_executors_are_processes_of_their_own(cluster_run: dict) -> None:
    """The driver and two executors; every Python worker's nearest JVM is an executor's, not the
    driver's (local-cluster starts the executor JVMs from the driver's, so it is further up)."""
    assert len(cluster_run["executors"]) == 3
    for chain in cluster_run["python_workers"]:
        jvms = [pid for pid, command in chain if command == "java"]
        assert jvms and jvms[0] != cluster_run["driver_jvm_pid"], f"a Python worker of the driver's JVM: {chain}"


def test_every_user_got_k_recommendations(cluster_run: dict) -> None:
    assert cluster_run["recommendations_per_user"] == {"users": USERS, "min": K, "max": K}


def test_outputs_are_under_the_run_folder(cluster_run: dict) -> None:
    """Relative paths resolved against the driver's folder: no executor wrote into its own."""
    root = Path(cluster_run["root"])
    assert Path(cluster_run["cwd"]) == root
    assert (root / "lakehouse" / "synthetic" / "recommendations" / "_delta_log").is_dir()
    assert (root / "checkpoints" / "synthetic" / "mean_pool" / "model.keras").is_file()
    assert (root / "reports" / "synthetic" / "metrics.json").is_file()
