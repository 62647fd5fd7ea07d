"""ETL scaling benchmark: ingest + prepare + features on 1M, 5M and 20M synthetic events (local[2]).

For each size, in a fresh child process (so that every size starts with a fresh driver JVM and its
memory peaks are its own) and a fresh lakehouse folder under a temporary directory (deleted after):

1. generation: the seeded synthetic shop (``recspark.datasets.synthetic``) is written once as
   Parquet; timed separately, not part of the ETL time;
2. baseline: a plain Spark pass over the same generated events, read Parquet -> write Delta with no
   transform, measured in the same run so that ``pipeline/baseline`` compares like with like;
3. ETL: ``ingest`` -> ``prepare`` -> ``build_features`` reading the generated Parquet, timed per stage.

Memory: the driver JVM's peak RSS (psutil, polled in a thread), its peak heap use (JMX memory pools,
reset per phase; in local mode the executors share this JVM, so this includes cached partitions),
its heap still in use after a full GC at the end (what the driver keeps), and the Python driver
process' peak RSS.

The last line is ``exponent=<x>``: the least-squares slope of log(ETL seconds) against log(events)
over the sizes run. 1.0 is linear; the goal is <= 1.1 with the driver's memory flat across sizes.

    .venv/bin/python bench/etl.py [--sizes 1000000 5000000 20000000]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from _common import MB, REPO, Interrupted, load_line, print_header, raise_on_termination

DEFAULT_SIZES = [1_000_000, 5_000_000, 20_000_000]
STAGES = ("ingest", "prepare", "features")


# ---------------------------------------------------------------------------------------------
# Child: one size, one fresh JVM.


class PeakRss(threading.Thread):
    """Polls the RSS of some processes and keeps each one's peak since the last ``take``.

    Why polling: the JVM is another process, so this process' own rusage cannot see it.
    """

    def __init__(self, processes: dict[str, psutil.Process], interval: float = 0.2):
        super().__init__(daemon=True)
        self.processes, self.interval = processes, interval
        self.peaks = dict.fromkeys(processes, 0)
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        with self.lock:
            for name, process in self.processes.items():
                try:
                    self.peaks[name] = max(self.peaks[name], process.memory_info().rss)
                except psutil.Error:
                    pass

    def take(self) -> dict[str, float]:
        """Peaks in MB since the previous call, then starts over."""
        self.sample()
        with self.lock:
            peaks = {name: value / MB for name, value in self.peaks.items()}
            self.peaks = dict.fromkeys(self.processes, 0)
        return peaks


def driver_jvm() -> psutil.Process:
    """The JVM that PySpark launched for this process (spark-submit's java, a descendant)."""
    for child in psutil.Process().children(recursive=True):
        try:
            if "java" in child.name() or any("SparkSubmit" in part for part in child.cmdline()):
                return child
        except psutil.Error:
            continue
    raise RuntimeError("no driver JVM found among this process' children")


class JvmHeap:
    """The driver JVM's heap through JMX (py4j): peak since reset, and in use after a full GC."""

    def __init__(self, spark):
        self.jvm = spark.sparkContext._jvm
        self.pools = [pool for pool in self.jvm.java.lang.management.ManagementFactory.getMemoryPoolMXBeans()
                      if str(pool.getType()) == "Heap memory"]

    def reset_peak(self) -> None:
        for pool in self.pools:
            pool.resetPeakUsage()

    def peak_mb(self) -> float:
        return sum(pool.getPeakUsage().getUsed() for pool in self.pools) / MB

    def retained_mb(self) -> float:
        """Heap in use after a full GC: what the driver still holds, independent of GC laziness."""
        self.jvm.java.lang.System.gc()
        time.sleep(1.0)
        return self.jvm.java.lang.management.ManagementFactory.getMemoryMXBean().getHeapMemoryUsage().getUsed() / MB


def run_one(n_events: int, workdir: Path, result_file: Path) -> None:
    """Generates ``n_events`` synthetic events, then times the baseline and the ETL on them."""
    from recspark import constants as C
    from recspark.config import load_config
    from recspark.datasets import RawSources, synthetic
    from recspark.pipeline.features import SEQUENCES, build_features
    from recspark.pipeline.ingest import ingest
    from recspark.pipeline.prepare import prepare
    from recspark.session import get_spark
    from recspark.utils.delta import row_count

    config = load_config([str(REPO / "conf" / "local.yaml")], [
        "dataset.name=synthetic", f"dataset.synthetic_events={n_events}",
        f"paths.lakehouse={workdir / 'lakehouse'}", "features.min_item_count=5",
    ])
    # The benchmark needs no UI; the progress bar would only clutter the log.
    config.spark.extra.update({"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"})
    spark = get_spark(config.spark)
    heap = JvmHeap(spark)
    monitor = PeakRss({"jvm": driver_jvm(), "python": psutil.Process()})
    monitor.start()
    result: dict = {"size": n_events}

    def say(text: str) -> None:
        print(f"  [{n_events:,}] {text}", flush=True)

    # 1. Generation, written once so that the baseline and the ETL read the same materialised events.
    raw = workdir / "raw"
    started = time.perf_counter()
    sources = synthetic.read_sources(spark, n_events, config.dataset.synthetic_seed)
    for name, df in sources._asdict().items():
        df.write.mode("overwrite").parquet(str(raw / name))
    result["generation_s"] = time.perf_counter() - started
    read = {name: spark.read.parquet(str(raw / name)) for name in sources._fields}
    result["events"] = read["events"].count()  # from the Parquet footers
    say(f"generated {result['events']:,} events in {result['generation_s']:.1f} s")
    result_file.write_text(json.dumps(result))  # partial results, for a run stopped mid-size
    monitor.take()

    # 2. Baseline: the same events read and written as Delta, nothing else.
    heap.reset_peak()
    started = time.perf_counter()
    read["events"].write.format("delta").save(str(workdir / "baseline"))
    result["baseline_s"] = time.perf_counter() - started
    result["baseline_jvm_heap_peak_mb"] = heap.peak_mb()
    result["baseline_jvm_rss_peak_mb"] = monitor.take()["jvm"]
    say(f"baseline (Parquet -> Delta) {result['baseline_s']:.1f} s")
    result["etl_started_epoch"] = time.time()
    result_file.write_text(json.dumps(result))

    # 3. ETL, stage by stage.
    heap.reset_peak()
    sources = RawSources(events=read["events"], items=read["items"], users=read["users"])
    stage_runs = {
        "ingest": lambda: ingest(spark, sources, config, f"bench-{n_events}"),
        "prepare": lambda: prepare(spark, config),
        "features": lambda: build_features(spark, config),
    }
    result["stages_s"] = {}
    for stage, run in stage_runs.items():
        started = time.perf_counter()
        run()
        result["stages_s"][stage] = time.perf_counter() - started
        say(f"{stage} {result['stages_s'][stage]:.1f} s")
        result_file.write_text(json.dumps(result))
    result["etl_s"] = sum(result["stages_s"].values())
    result["jvm_heap_peak_mb"] = heap.peak_mb()
    peaks = monitor.take()
    result["jvm_rss_peak_mb"], result["python_rss_peak_mb"] = peaks["jvm"], peaks["python"]
    result["jvm_heap_retained_mb"] = heap.retained_mb()
    monitor.stopped.set()
    # Output sizes from the Delta logs' statistics (no data file read): a sanity check on the run.
    result["rows"] = {
        name: row_count(spark, config.table_path(layer, table)) for name, layer, table in (
            ("bronze events", C.BRONZE, C.EVENTS), ("silver events", C.SILVER, C.EVENTS),
            ("gold sequences", C.GOLD, SEQUENCES), ("gold train_examples", C.GOLD, C.TRAIN_EXAMPLES))
    }
    say("rows: " + ", ".join(f"{name} {count:,}" for name, count in result["rows"].items()))
    result["complete"] = True
    result_file.write_text(json.dumps(result))
    spark.stop()


# ---------------------------------------------------------------------------------------------
# Parent: one child per size, then the table and the exponent.


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys against xs."""
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)


def log_slope(results: list[dict], seconds) -> float:
    return slope([math.log(r["events"]) for r in results], [math.log(seconds(r)) for r in results])


def report(results: list[dict]) -> None:
    header = (f"{'size':>11} {'events':>11} {'gen s':>7} {'ETL s':>8} {'events/s':>9} {'base s':>7} "
              f"{'ETL/base':>8} {'JVM RSS MB':>10} {'heap pk MB':>10} {'heap kept':>9} {'py RSS MB':>9}")
    print("\n" + header)
    for r in results:
        print(f"{r['size']:>11,} {r['events']:>11,} {r['generation_s']:>7.1f} {r['etl_s']:>8.1f} "
              f"{r['events'] / r['etl_s']:>9,.0f} {r['baseline_s']:>7.1f} {r['etl_s'] / r['baseline_s']:>8.2f} "
              f"{r['jvm_rss_peak_mb']:>10,.0f} {r['jvm_heap_peak_mb']:>10,.0f} {r['jvm_heap_retained_mb']:>9,.0f} "
              f"{r['python_rss_peak_mb']:>9,.0f}")
    for r in results:
        print(f"pipeline/baseline size={r['size']} ratio={r['etl_s'] / r['baseline_s']:.2f}")
    print("stage seconds: " + "; ".join(
        f"{r['size']:,}: " + ", ".join(f"{s} {r['stages_s'][s]:.1f}" for s in STAGES) for r in results))
    if len(results) >= 2:
        print("stage exponents: " + ", ".join(
            f"{s} {log_slope(results, lambda r, s=s: r['stages_s'][s]):.3f}" for s in STAGES)
            + f", baseline {log_slope(results, lambda r: r['baseline_s']):.3f}"
            + f", generation {log_slope(results, lambda r: r['generation_s']):.3f}")
        for key in ("jvm_rss_peak_mb", "jvm_heap_peak_mb", "jvm_heap_retained_mb", "python_rss_peak_mb"):
            values = [r[key] for r in results]
            print(f"memory {key}: largest/smallest size = {values[-1] / values[0]:.2f} "
                  f"(events x{results[-1]['events'] / results[0]['events']:.1f})")


def interrupted_finished(results: list[dict], partial: dict, n_events: int) -> None:
    """Extrapolation and exponent when a size did not finish; the last line says which it is."""
    etl_so_far = time.time() - partial["etl_started_epoch"] if "etl_started_epoch" in partial else None
    if results:
        last = results[-1]
        events = partial.get("events", n_events)
        linear = last["etl_s"] * events / last["events"]
        print(f"extrapolated ETL at {events:,} events: {linear:.0f} s at exponent 1.0 from {last['size']:,}, "
              f"{last['etl_s'] * (events / last['events']) ** 1.1:.0f} s at 1.1"
              + (f"; it had run {etl_so_far:.0f} s of ETL (stages done: {partial.get('stages_s', {})})"
                 if etl_so_far is not None else "; its ETL had not started"))
        if etl_so_far is not None:
            # The unfinished size took at least etl_so_far: the slope to it is a lower bound.
            bound = math.log(etl_so_far / last["etl_s"]) / math.log(events / last["events"])
            print(f"exponent from {last['size']:,} to {events:,} events >= {bound:.3f} (ETL unfinished)")
    if len(results) >= 2:
        print(f"exponent={log_slope(results, lambda r: r['etl_s']):.3f}")
    elif results and etl_so_far is not None:
        print(f"exponent>={bound:.3f}")
    else:
        print("exponent=nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES, help="numbers of events")
    parser.add_argument("--one-size", type=int, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_size:
        run_one(args.one_size, args.workdir, args.result)
        return

    print_header(f"bench/etl.py, sizes {args.sizes}")
    env = dict(os.environ)
    # Pseudonyms need a key; a throw-away one keeps the benchmark from creating a key file.
    env.setdefault("RECSPARK_PSEUDONYM_KEY", secrets.token_hex(32))
    env.setdefault("TF_USE_LEGACY_KERAS", "1")
    raise_on_termination()
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="recspark-bench-") as root:
        for n_events in args.sizes:
            workdir, result_file = Path(root) / str(n_events), Path(root) / f"{n_events}.json"
            log_file = Path(root) / f"{n_events}.stderr.log"
            started = time.perf_counter()
            with open(log_file, "w") as log:
                child = subprocess.Popen(
                    [sys.executable, __file__, "--one-size", str(n_events), "--workdir", str(workdir),
                     "--result", str(result_file)], stderr=log, env=env, cwd=REPO)
                try:
                    code = child.wait()
                except Interrupted as signal_name:
                    child.terminate()  # the JVM exits with it (PySpark's gateway watches its stdin)
                    child.wait()
                    elapsed = time.perf_counter() - started
                    print(f"INTERRUPTED ({signal_name}) during size {n_events:,} after {elapsed:.0f} s "
                          f"(generation + baseline + ETL so far)")
                    partial = json.loads(result_file.read_text()) if result_file.exists() else {}
                    print(f"  partial results of {n_events:,}: {partial}")
                    report(results)
                    print(load_line("after"))
                    interrupted_finished(results, partial, n_events)
                    sys.exit(1)
            shutil.rmtree(workdir, ignore_errors=True)  # disk use stays bounded by one size
            if code != 0:
                print(f"size {n_events:,} FAILED (exit {code}); last lines of its stderr:")
                # Spark's errors carry whole query plans: each line is cut short.
                print("\n".join(line[:300] for line in log_file.read_text().splitlines()[-40:]))
                sys.exit(code)
            results.append(json.loads(result_file.read_text()))
            r = results[-1]
            print(f"events={r['events']:>11,}  etl_seconds={r['etl_s']:8.1f}  events/s={r['events'] / r['etl_s']:>9,.0f}  "
                  f"baseline_s={r['baseline_s']:.1f}  pipeline/baseline={r['etl_s'] / r['baseline_s']:.2f}  "
                  f"jvm_rss_peak_mb={r['jvm_rss_peak_mb']:,.0f}  jvm_heap_peak_mb={r['jvm_heap_peak_mb']:,.0f}  "
                  f"python_rss_peak_mb={r['python_rss_peak_mb']:,.0f}", flush=True)
    report(results)
    print(load_line("after"))
    # Least-squares over every size; with two sizes it is the slope between them.
    if len(results) >= 2:
        print(f"exponent={log_slope(results, lambda r: r['etl_s']):.3f}")
    else:
        print("exponent=nan  # needs at least two sizes")


if __name__ == "__main__":
    main()
