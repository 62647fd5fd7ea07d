"""ETL scaling benchmark: ingest + prepare + features on 1M, 5M and 20M synthetic events (local[2]).

Prints events per second for each size, the driver's memory (RSS of this Python process and the
driver JVM's peak heap use, which in local mode includes the executors' work), and as its last line
``exponent=<x>``: the slope of log(time) against log(events). 1.0 is linear scaling; the goal is
<= 1.1 with the driver's memory flat across sizes.

    .venv/bin/python bench/etl.py [--sizes 1000000 5000000 20000000]
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time

import psutil

from recspark.config import load_config
from recspark.datasets import synthetic
from recspark.pipeline.features import build_features
from recspark.pipeline.ingest import ingest
from recspark.pipeline.prepare import prepare
from recspark.session import get_spark


def _heap_pools(spark) -> list:
    management = spark.sparkContext._jvm.java.lang.management.ManagementFactory
    return [pool for pool in management.getMemoryPoolMXBeans() if str(pool.getType()) == "Heap memory"]


def reset_jvm_peak(spark) -> None:
    for pool in _heap_pools(spark):
        pool.resetPeakUsage()


def jvm_peak_heap_mb(spark) -> float:
    """The driver JVM's peak heap use since the last reset (local mode: executors share this JVM)."""
    return sum(pool.getPeakUsage().getUsed() for pool in _heap_pools(spark)) / 2**20


def slope(xs: list[float], ys: list[float]) -> float:
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="recspark-bench-") as root:
        for n_events in args.sizes:
            config = load_config(["conf/local.yaml"], [
                "dataset.name=synthetic", f"dataset.synthetic_events={n_events}",
                f"paths.lakehouse={root}/{n_events}", "features.min_item_count=5",
            ])
            spark = get_spark(config.spark)
            reset_jvm_peak(spark)
            started = time.perf_counter()
            sources = synthetic.read_sources(spark, n_events, config.dataset.synthetic_seed)
            ingest(spark, sources, config, f"bench-{n_events}")
            prepare(spark, config)
            build_features(spark, config)
            seconds = time.perf_counter() - started
            peak_heap = jvm_peak_heap_mb(spark)
            rss = psutil.Process().memory_info().rss / 2**20
            results.append((n_events, seconds))
            print(f"events={n_events:>11,}  seconds={seconds:8.1f}  events/s={n_events / seconds:>9,.0f}  "
                  f"driver_python_rss_mb={rss:,.0f}  jvm_peak_heap_mb={peak_heap:,.0f}", flush=True)
    # Least-squares slope over every size; with two sizes it is the slope between them.
    print(f"exponent={slope([math.log(n) for n, _ in results], [math.log(t) for _, t in results]):.3f}")


if __name__ == "__main__":
    main()
