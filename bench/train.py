"""Training benchmark: examples/s of Horovod training (1 and 2 ranks), of the Petastorm feed alone, peak memory.

On the MovieLens-1M gold tables (``lakehouse/ml-1m``, read only; ``conf/local.yaml`` +
``conf/datasets/ml-1m.yaml``, ``local[2]``), in this one process (the driver) and its Spark JVM:

1. **training**, once per rank count (``--ranks``, default 1 and 2): the first
   ``steps x batch_size x ranks`` rows of the model's gold table (``model_examples_table``:
   ``train_windows`` for SASRec, ``train_examples`` for the others; the model's input columns and
   target) go through the train stage's own path, ``recspark.models.training.train_distributed``:
   a Petastorm converter, ``horovod.spark.run`` through ``launcher.horovod_launcher``, the real
   ``_train_fn`` (tf-keras model, ``hvd.DistributedOptimizer``, broadcast, checkpoints, export) for
   one epoch of exactly ``--steps`` steps per rank, without validation/early stopping.
   **Start-up and compile time are excluded** from the rate: rank 0 records the wall-clock time at
   the end of every training batch (ranks are in lockstep through the gradient allreduce), and the
   rate is ``(steps - warmup) x batch_size x ranks`` examples over the time from the end of batch
   ``warmup`` to the end of the last batch. What falls outside: Spark materialising the Petastorm
   cache, Horovod's launch and Gloo rendezvous, TensorFlow import, model build, the Petastorm
   reader start, the first ``--warmup-steps`` steps (the tf.function trace/compile is the first),
   and the checkpoint and export after the last batch. The end-to-end rate (all of it) is printed
   alongside for context.
   The batch end times come from the library's own hook: ``train_distributed(...,
   record_batch_times=True)`` returns rank 0's as ``TrainResult.batch_end_times``.
2. **feed alone**: a converter made the same way (``recspark.feed.make_converter`` over the same
   rows and columns as the 2-rank run, one file per rank), read in this process by
   ``recspark.feed.training_batches`` with the training's batch size, shuffling queue and reader
   threads, as shard 0 of 1 (all of it): Petastorm reading, batching and the conversion map of
   training, no model. It reads the rows ``--feed-passes`` times (Petastorm repeats them, as in
   training) so that the timed window is not a fraction of a second. Same warm-up exclusion (the
   first ``--warmup-steps`` batches).
3. **memory**: a thread polls this process and all its descendants (the Spark JVM, Spark's Python
   workers, Horovod's task services and every rank process) every 0.25 s and keeps the peak of
   their summed RSS, per phase and overall, with the breakdown at that peak. Summed RSS counts
   pages shared between processes once per process (forked Spark workers, the libraries every
   rank maps): an upper bound. The summed PSS (shared pages split between their processes, from
   ``/proc/<pid>/smaps_rollup``) at the same moment is printed next to it as the closer figure.
   Goal: under 8 GB (summed RSS).

Gold tables built with another ``features.oov_buckets`` than the configuration's (e.g. before
hashed buckets existed) are benchmarked as they are: the script uses their count, and says so.

The last line is ``feed_ratio=<x>``: feed examples/s divided by the training examples/s of the
**2-rank** run (of the largest rank count run, if 2 is not among ``--ranks``). Goal >= 3: the data
is never what training waits for. The feed is measured alone on the whole (shared) machine, the
way the training runs are.

    .venv/bin/python bench/train.py [--steps 150] [--warmup-steps 10] [--ranks 1 2] [--feed-passes 3]
                                    [--set train.batch_size=256]
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before anything imports TensorFlow

import psutil  # noqa: E402

from _common import MB, REPO, Interrupted, load_line, print_header, raise_on_termination  # noqa: E402

DEFAULT_CONF_FILES = [str(REPO / "conf" / "local.yaml"), str(REPO / "conf" / "datasets" / "ml-1m.yaml")]
POLL_SECONDS = 0.25


# ---------------------------------------------------------------------------------------------
# Memory: the summed RSS of this process' tree.


def process_kind(process: psutil.Process, me: int) -> str:
    """Which part of the system a process is, for the breakdown of the peak."""
    if process.pid == me:
        return "driver"
    name, cmdline = process.name(), " ".join(process.cmdline())
    if "java" in name:
        return "jvm"
    if "gloo_exec_fn" in cmdline or "mpirun_exec_fn" in cmdline:
        return "ranks"
    return "other"  # Spark's Python workers, Horovod's task services, shells


class PeakTreeRss(threading.Thread):
    """Polls the RSS of this process and all its descendants; keeps the peak of their sum per phase.

    Why a tree: the JVM, Spark's Python workers and the Horovod ranks are all descendants of the
    driver (ranks: driver -> JVM -> Python worker -> Horovod task service -> rank).
    """

    KINDS = ("driver", "jvm", "ranks", "other")

    def __init__(self, interval: float = POLL_SECONDS):
        super().__init__(daemon=True)
        self.interval = interval
        self.root = psutil.Process()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.phase_peak: dict[str, float] = {}  # summed RSS at the phase's peak, and its breakdown
        self.overall: dict[str, float] = {"total": 0.0}
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.phase_peak = {"total": 0.0, **dict.fromkeys(self.KINDS, 0.0), "processes": 0, "pss": 0.0}

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        sizes = dict.fromkeys(self.KINDS, 0.0)
        count, pss = 0, 0.0
        for process in [self.root, *self.root.children(recursive=True)]:
            try:
                memory = process.memory_full_info()  # rss and pss (smaps_rollup: cheap)
                sizes[process_kind(process, self.root.pid)] += memory.rss / MB
                pss += memory.pss / MB
                count += 1
            except psutil.Error:  # it exited between the listing and the read
                continue
        total = sum(sizes.values())
        with self.lock:
            if total > self.phase_peak["total"]:
                self.phase_peak = {"total": total, **sizes, "processes": count, "pss": pss}
            if total > self.overall["total"]:
                self.overall = {"total": total, **sizes, "processes": count, "pss": pss}

    def take(self) -> dict[str, float]:
        """The peak (MB, with its breakdown) since the previous call, then starts over."""
        self.sample()
        with self.lock:
            peak = dict(self.phase_peak)
        self.reset()
        return peak


def peak_text(peak: dict[str, float]) -> str:
    return (f"{peak['total']:,.0f} MB = driver {peak['driver']:,.0f} + JVM {peak['jvm']:,.0f} + ranks "
            f"{peak['ranks']:,.0f} + other {peak['other']:,.0f} ({peak['processes']:.0f} processes; summed PSS "
            f"{peak['pss']:,.0f} MB)")


# ---------------------------------------------------------------------------------------------
# Rates from batch end times.


def rate(ends: list[float], warmup: int, examples_per_batch: int) -> tuple[float, float, int]:
    """(examples/s, seconds, batches) from the end of batch ``warmup`` to the end of the last one."""
    if not 1 <= warmup < len(ends):
        raise ValueError(f"{len(ends)} batches timed, need more than --warmup-steps={warmup} (>= 1)")
    seconds = ends[-1] - ends[warmup - 1]
    batches = len(ends) - warmup
    return batches * examples_per_batch / seconds, seconds, batches


# ---------------------------------------------------------------------------------------------
# The phases.


def train_once(spark, examples, *, model: str, ranks: int, steps: int, warmup: int, config, spec, workdir: Path,
               log_file: Path) -> dict:
    """One training run of ``steps`` steps per rank on ``ranks`` Horovod processes."""
    from recspark.models.training import train_distributed

    batch_size = config.train.batch_size
    rows = steps * batch_size * ranks  # _steps_per_epoch(rows) == steps: one epoch of exactly `steps`
    train_config = dataclasses.replace(config.train, num_proc=ranks, epochs=1, resume=False, warm_start=False)
    started = time.perf_counter()
    # Horovod's and the ranks' output (the launcher passes sys.stdout) goes to the log, not the table.
    with open(log_file, "a") as log, contextlib.redirect_stdout(log):
        result = train_distributed(
            spark, examples.limit(rows), model=model, spec=spec, train_config=train_config,
            model_dir=str(workdir / "checkpoints" / f"ranks-{ranks}"), cache_url=config.petastorm_cache_url,
            validation=None, record_batch_times=True)
    wall = time.perf_counter() - started
    ends = result.batch_end_times
    examples_per_s, seconds, batches = rate(ends, warmup, batch_size * ranks)
    return {"name": f"train {ranks} rank{'s' if ranks > 1 else ''}", "ranks": ranks, "rows": rows,
            "batches": batches, "seconds": seconds, "examples_per_s": examples_per_s, "wall_s": wall,
            "end_to_end_per_s": rows / wall, "loss": result.history[-1] if result.history else float("nan"),
            "launcher": result.launcher, "steps_timed": len(ends)}


def feed_once(spark, examples, *, model: str, ranks: int, steps: int, warmup: int, config, spec,
              passes: int) -> dict:
    """The 2-rank run's rows and columns through the same Petastorm path, without a model."""
    from recspark.constants import TARGET
    from recspark.feed import make_converter, training_batches
    from recspark.models import model_inputs
    from recspark.models.training import READER_WORKERS, SHUFFLE_CAPACITY

    batch_size = config.train.batch_size
    inputs = model_inputs(model)
    rows = steps * batch_size * ranks
    n_batches = steps * ranks * passes  # steps x ranks batches: one pass over the rows
    started = time.perf_counter()
    converter = make_converter(spark, examples.limit(rows).select(*inputs, TARGET), config.petastorm_cache_url,
                               num_files=ranks)
    ends: list[float] = []
    counted = 0
    try:
        with training_batches(converter, rank=0, size=1, batch_size=batch_size, max_seq_len=spec.max_seq_len,
                              inputs=inputs, shuffling_queue_capacity=SHUFFLE_CAPACITY,
                              workers_count=READER_WORKERS, seed=config.train.seed) as batches:
            for features, target in batches.take(n_batches):
                ends.append(time.time())
                counted += int(target.shape[0])
    finally:
        converter.delete()
    wall = time.perf_counter() - started
    if counted != n_batches * batch_size:  # every batch full: the rate's arithmetic holds
        raise RuntimeError(f"feed gave {counted} examples in {n_batches} batches of {batch_size}")
    examples_per_s, seconds, timed = rate(ends, warmup, batch_size)
    return {"name": "feed alone", "ranks": 0, "rows": rows, "batches": timed, "seconds": seconds,
            "examples_per_s": examples_per_s, "wall_s": wall, "end_to_end_per_s": counted / wall,
            "loss": float("nan"), "launcher": "-", "steps_timed": len(ends)}


def oov_buckets_of_gold(spark, config) -> Optional[int]:
    """The ``features.oov_buckets`` the gold item vocabulary was built with, when it differs from the
    configuration's (gold tables built before hashed buckets, or with another count); else None.

    The benchmark reads the gold tables as they are (it must not rebuild them), so it trains with
    the layout they have rather than failing in ``model_spec``.
    """
    from pyspark.sql import functions as F

    from recspark import constants as C
    from recspark.utils.delta import read_table

    if not hasattr(C, "first_vocab_index") or not hasattr(config.features, "oov_buckets"):
        return None  # a library without hashed buckets
    first = read_table(spark, config.table_path(C.GOLD, C.ITEM_VOCAB)).agg(F.min(C.ITEM_IDX)).collect()[0][0]
    if first == C.first_vocab_index(config.features.oov_buckets):
        return None
    buckets = 1 if first == C.ItemLayout(oov_buckets=1).first_item else first - C.FIRST_BUCKET_IDX
    if buckets < 1 or C.first_vocab_index(buckets) != first:
        raise ValueError(f"gold item_vocab starts at item_idx {first}: no features.oov_buckets gives that")
    return buckets


def report(results: list[dict]) -> None:
    print(f"\n{'run':<14} {'rows':>8} {'timed batches':>13} {'timed s':>8} {'examples/s':>10} {'wall s':>7} "
          f"{'end-to-end/s':>12} {'peak RSS MB':>11} {'PSS MB':>7}  RSS at the peak")
    for r in results:
        peak = r["peak"]
        print(f"{r['name']:<14} {r['rows']:>8,} {r['batches']:>13,} {r['seconds']:>8.1f} {r['examples_per_s']:>10,.0f} "
              f"{r['wall_s']:>7.1f} {r['end_to_end_per_s']:>12,.0f} {peak['total']:>11,.0f} {peak['pss']:>7,.0f}  "
              f"driver {peak['driver']:,.0f}, JVM {peak['jvm']:,.0f}, ranks {peak['ranks']:,.0f}, "
              f"other {peak['other']:,.0f} ({peak['processes']:.0f} proc)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150,
                        help="training steps per rank per run (each run trains steps x batch x ranks rows)")
    parser.add_argument("--warmup-steps", type=int, default=10, help="first steps/batches left out of the rate")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="Horovod rank counts to run")
    parser.add_argument("--feed-passes", type=int, default=3, help="passes of the feed over the 2-rank run's rows")
    parser.add_argument("--model", default="sasrec", help="model to train (train.models name)")
    parser.add_argument("--conf-file", action="append", default=[], metavar="YAML",
                        help=f"configuration files (default: {' + '.join(Path(f).name for f in DEFAULT_CONF_FILES)})")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="SECTION.KEY=VALUE",
                        help="configuration override, e.g. train.batch_size=512 (repeatable)")
    args = parser.parse_args()
    if not 1 <= args.warmup_steps < args.steps:
        parser.error("need 1 <= --warmup-steps < --steps (the first step compiles)")

    os.chdir(REPO)  # the configuration's relative paths (lakehouse/) are relative to the repository
    print_header(f"bench/train.py, model {args.model}, ranks {args.ranks}, {args.steps} steps per run "
                 f"({args.warmup_steps} warm-up)")
    raise_on_termination()
    monitor = PeakTreeRss()
    monitor.start()
    results: list[dict] = []
    spark = None
    with tempfile.TemporaryDirectory(prefix="recspark-bench-train-") as root:
        workdir = Path(root)
        log_file = workdir / "horovod.log"
        try:
            from recspark import constants as C
            from recspark.config import load_config
            from recspark.models import model_examples_table, model_inputs, model_spec
            from recspark.session import get_spark
            from recspark.utils.delta import read_table, row_count

            # Checkpoints and the Petastorm cache go to the temporary folder; the gold tables are only read.
            config = load_config(args.conf_file or DEFAULT_CONF_FILES, [
                *args.overrides, f"paths.checkpoints={workdir / 'checkpoints'}",
                f"paths.petastorm_cache={(workdir / 'petastorm').as_uri()}", f"train.models=[{args.model}]"])
            config.spark.extra.update({"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"})
            config.train = config.train.for_model(args.model)
            spark = get_spark(config.spark)
            buckets = oov_buckets_of_gold(spark, config)
            if buckets is not None:
                print(f"note: the gold tables were built with features.oov_buckets={buckets} (the configuration says "
                      f"{config.features.oov_buckets}); benchmarking them as they are, with {buckets}", flush=True)
                config.features.oov_buckets = buckets
            examples_path = config.table_path(C.GOLD, model_examples_table(args.model))
            total = row_count(spark, examples_path)
            spec = model_spec(spark, config)
            needed = args.steps * config.train.batch_size * max(args.ranks)
            print(f"{examples_path}: {total:,} rows; {spec.num_items - 2:,} items; batch {config.train.batch_size}; "
                  f"largest run uses {needed:,} rows; Spark {spark.sparkContext.master}", flush=True)
            if needed > total:
                raise SystemExit(f"--steps {args.steps} needs {needed:,} rows, the table has {total:,}")
            examples = read_table(spark, examples_path).select(*model_inputs(args.model), C.TARGET)
            phase: dict = dict(model=args.model, steps=args.steps, warmup=args.warmup_steps, config=config, spec=spec)
            monitor.take()
            for ranks in args.ranks:
                result = train_once(spark, examples, ranks=ranks, workdir=workdir, log_file=log_file, **phase)
                result["peak"] = monitor.take()
                results.append(result)
                print(f"{result['name']}: {result['examples_per_s']:,.0f} examples/s over {result['batches']} steps "
                      f"({result['seconds']:.1f} s; wall {result['wall_s']:.1f} s; last loss {result['loss']:.4f}; "
                      f"{result['launcher']}); peak {peak_text(result['peak'])}; {load_line('now')}", flush=True)
            reference = 2 if 2 in args.ranks else max(args.ranks)
            feed = feed_once(spark, examples, ranks=reference, passes=args.feed_passes, **phase)
            feed["peak"] = monitor.take()
            results.append(feed)
            print(f"feed alone: {feed['examples_per_s']:,.0f} examples/s over {feed['batches']} batches "
                  f"({feed['seconds']:.1f} s; wall {feed['wall_s']:.1f} s); peak {peak_text(feed['peak'])}; "
                  f"{load_line('now')}", flush=True)
        except (Interrupted, Exception) as error:
            print(f"STOPPED: {type(error).__name__}: {str(error)[:2000]}")
            if log_file.exists():
                print("last lines of the Horovod log:")
                print("\n".join(line[:300] for line in log_file.read_text().splitlines()[-30:]))
            if results:
                report(results)
            print(load_line("after"))
            print("feed_ratio=nan")
            sys.exit(1)
        finally:
            monitor.stopped.set()
            if spark is not None:
                spark.stop()
    report(results)
    train = {r["ranks"]: r for r in results if r["ranks"]}
    if 1 in train and 2 in train:
        print(f"speed-up 2 ranks / 1 rank: {train[2]['examples_per_s'] / train[1]['examples_per_s']:.2f}")
    overall = monitor.overall
    print(f"peak memory of all processes together: {peak_text(overall)}; goal < 8,192 MB: "
          f"{'met' if overall['total'] < 8192 else 'NOT met'}")
    print(load_line("after"))
    reference = 2 if 2 in train else max(train)
    ratio = results[-1]["examples_per_s"] / train[reference]["examples_per_s"]
    print(f"feed / training ({reference} rank{'s' if reference > 1 else ''}): "
          f"{'goal >= 3 met' if ratio >= 3 else 'goal >= 3 NOT met'}")
    print(f"feed_ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
