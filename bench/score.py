"""Scoring benchmark: users/s of the Spark scorer against NumPy in one process, and a worker's peak memory.

A generated model and catalogue (issue #13, "Speed and memory"): a ``mean_pool`` model of
``--dim`` (64) dimensions over the default item layout (66 reserved indices, then ``--items``
items), saved to a temporary folder, and ``--users`` generated histories of ``--length`` items in a
Spark DataFrame (``local[2]``). Measured in one run:

a. **Spark**: ``recspark.scoring.recommend_indices`` (the score stage's UDF: model loaded once per
   Python worker, item side cached, blocked top-K) for every user, top ``--k`` (100) over the whole
   catalogue, written to Spark's ``noop`` sink; users/s over the timed run. A warm-up run on a few
   users first loads the model and its item matrix in the (reused) Python workers, so the rate is
   the steady state; the warm-up time is printed too.
b. **NumPy**: the same arithmetic in this one process with NumPy float32: user vectors (random,
   ``--dim``) times the same item matrix plus bias, ``argpartition`` for the top ``--k``, and a sort of
   those, ``--batch-size`` users at a time over ``--numpy-users`` users: this machine's limit.
c. **memory**: the peak RSS of any one Spark Python worker (psutil, polled every 0.1 s) while (a)
   runs, and again in a separate short run at ``--memory-items`` items (``--memory-users`` users),
   printed with the size of the item-side arrays a worker holds (the model's two item tables and
   the plan's copy), so that what grows with the catalogue beyond the item matrix shows.

The last line is ``ratio=<a/b>`` (goal >= 0.7). The issue's full size is ``--users 1000000 --items
100000 --memory-items 1000000``; the defaults are small enough for a few minutes on a shared
2-core machine. Numbers from a loaded machine are not measurements: the load average is printed
before and after.

    .venv/bin/python bench/score.py [--users 20000] [--items 20000] [--memory-items 100000]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before anything imports TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up notices (also in Spark's workers)

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from _common import MB, REPO, Interrupted, load_line, print_header, raise_on_termination  # noqa: E402

sys.path.insert(0, str(REPO))
FIRST = 66  # the default layout: PAD, unknown, 64 hashed buckets


class WorkerPeak:
    """Polls this process's descendants and keeps the peak RSS of any one Spark Python worker."""

    def __init__(self, seconds: float = 0.1) -> None:
        self.seconds, self.peak, self._stop = seconds, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            for process in me.children(recursive=True):
                try:
                    if "pyspark" in " ".join(process.cmdline()):
                        self.peak = max(self.peak, process.memory_info().rss)
                except psutil.Error:  # it exited between the listing and the read
                    pass
            self._stop.wait(self.seconds)

    def __enter__(self) -> "WorkerPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def save_model(folder: Path, items: int, dim: int, length: int) -> Path:
    """A mean_pool model over FIRST + ``items`` indices, saved as the scorer loads it."""
    from recspark.config import TrainConfig
    from recspark.models import ModelSpec, build_model

    num_items = FIRST + items
    model = build_model("mean_pool", ModelSpec(num_items=num_items, max_seq_len=length, first_item_idx=FIRST),
                        TrainConfig(embedding_dim=dim, seed=7))
    # Random biases, so that the ranking is not the product alone.
    model.output_bias.assign(np.random.default_rng(1).normal(size=num_items).astype(np.float32))
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    (folder / "model_meta.json").write_text(json.dumps({"num_items": num_items, "max_seq_len": length,
                                                        "inputs": list(model.INPUTS)}))
    return folder


def histories(spark, users: int, items: int, length: int, partitions: int):
    """``users`` rows of user_id, ``length`` random items each, and no seen item."""
    from pyspark.sql import functions as F

    steps = [(F.rand(seed=j) * items).cast("int") + FIRST for j in range(length)]
    return (spark.range(0, users, numPartitions=partitions)
            .select(F.concat(F.lit("u"), F.col("id").cast("string")).alias("user_id"), F.array(*steps).alias("history"),
                    F.array().cast("array<int>").alias("seen_idx")))


def spark_rate(spark, model_dir: Path, users: int, items: int, args) -> tuple[float, float, int]:
    """(users/s of the timed run, warm-up seconds, worker peak RSS): the scorer over every user."""
    from recspark.scoring import recommend_indices

    def run(n: int) -> float:
        df = histories(spark, n, items, args.length, args.partitions)
        started = time.perf_counter()
        (recommend_indices(df, str(model_dir), args.k, exclude_seen=False, batch_size=args.batch_size,
                           item_block=args.item_block)
         .write.format("noop").mode("overwrite").save())
        return time.perf_counter() - started

    with WorkerPeak() as peak:
        warm = run(max(args.partitions, 2) * 4)
        seconds = run(users)
    return users / seconds, warm, peak.peak


def numpy_rate(model_dir: Path, users: int, args) -> float:
    """users/s of the same arithmetic in this process: float32 product, argpartition, sort of the top k."""
    from recspark.models.training import load_model
    from recspark.scoring import build_plan

    plan = build_plan(load_model(model_dir)[0])
    items, bias = plan.item_vectors[FIRST:], plan.item_bias[FIRST:]
    vectors = np.random.default_rng(3).normal(size=(users, items.shape[1])).astype(np.float32)
    started = time.perf_counter()
    for start in range(0, users, args.batch_size):
        logits = vectors[start:start + args.batch_size] @ items.T + bias
        top = np.argpartition(-logits, args.k - 1, axis=1)[:, :args.k]
        scores = np.take_along_axis(logits, top, axis=1)
        np.take_along_axis(top, np.argsort(-scores, axis=1), axis=1)
    return users / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000, help="users scored through Spark")
    parser.add_argument("--items", type=int, default=20_000, help="catalogue items (besides the 66 reserved)")
    parser.add_argument("--memory-items", type=int, default=100_000, help="catalogue of the memory check")
    parser.add_argument("--memory-users", type=int, default=2_000, help="users of the memory check")
    parser.add_argument("--numpy-users", type=int, default=0, help="users of the NumPy run (default: --users, "
                                                                    "at most 50,000)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--length", type=int, default=20, help="history length")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=512, help="score.batch_size")
    parser.add_argument("--item-block", type=int, default=4096, help="score.item_block")
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    raise_on_termination()
    print_header("bench/score.py")
    print(f"users {args.users:,}, items {args.items:,} (+{FIRST} reserved), dim {args.dim}, top {args.k}, "
          f"batch {args.batch_size}, item block {args.item_block}, memory check at {args.memory_items:,} items", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-score-"))
    spark = None
    try:
        from recspark.config import SparkConfig
        from recspark.session import get_spark

        spark = get_spark(SparkConfig(master="local[2]", app_name="bench-score", shuffle_partitions=4,
                                      driver_memory="4g", extra={"spark.ui.enabled": "false",
                                                                 "spark.ui.showConsoleProgress": "false"}))
        model_dir = save_model(work / "model", args.items, args.dim, args.length)
        spark_users_s, warm, worker_peak = spark_rate(spark, model_dir, args.users, args.items, args)
        print(f"(a) Spark UDF: {spark_users_s:,.0f} users/s ({args.users:,} users; warm-up {warm:.1f} s); "
              f"Python worker peak RSS {worker_peak / MB:,.0f} MB", flush=True)
        numpy_users = args.numpy_users or min(args.users, 50_000)
        numpy_users_s = numpy_rate(model_dir, numpy_users, args)
        print(f"(b) NumPy, one process: {numpy_users_s:,.0f} users/s ({numpy_users:,} users)", flush=True)
        shutil.rmtree(model_dir)
        memory_dir = save_model(work / "memory-model", args.memory_items, args.dim, args.length)
        # A fresh worker per catalogue: the cached plans of the first model would count otherwise.
        spark.stop()
        spark = get_spark(SparkConfig(master="local[2]", app_name="bench-score-memory", shuffle_partitions=4,
                                      driver_memory="4g", extra={"spark.ui.enabled": "false",
                                                                 "spark.ui.showConsoleProgress": "false"}))
        _, _, memory_peak = spark_rate(spark, memory_dir, args.memory_users, args.memory_items, args)
        item_arrays = 3 * (FIRST + args.memory_items) * args.dim * 4  # embedding, output kernel, plan's copy
        print(f"(c) Python worker peak RSS at {args.memory_items:,} items: {memory_peak / MB:,.0f} MB; item-side "
              f"arrays {item_arrays / MB:,.0f} MB (model tables and the plan's matrix); at {args.items:,} items: "
              f"{worker_peak / MB:,.0f} MB", flush=True)
        print(load_line("after"))
        print(f"ratio={spark_users_s / numpy_users_s:.3f}")
    except Interrupted as stop:
        print(f"stopped by {stop}", flush=True)
    finally:
        if spark is not None:
            spark.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
