"""`make run` from an empty lakehouse, timed stage by stage, against copying the raw data into Delta.

    python bench/run.py                               # Complete Journey, the default run
    python bench/run.py --dataset ml-1m --set train.epochs=1
    make bench-run                                    # the same as the first line

Two processes, one after the other, each with its own JVM:

1. the baseline: the data set's raw readers (``recspark.datasets.load_sources``) written unchanged
   into Delta tables, with no validation, cleaning or features: the least any ingest can cost here;
2. ``jobs/pipeline.py`` with the configuration `make run` uses (conf/local.yaml, the data set's
   layer), its lakehouse, reports and checkpoints in an empty folder of their own.

Why a ratio: this machine is shared, and both figures move together with its load, so the
ratio survives a noisy machine where the absolute seconds do not (README "Benchmarks"). The
absolute figure is printed too: the goal of issue 12 is `make run` within 12 minutes on an
idle 2-core machine. The last line is ``ratio=<pipeline seconds / baseline seconds>``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, load_line, print_header, raise_on_termination

BASELINE = """
import sys
from recspark.datasets import load_sources
from recspark.entrypoints import pipeline_args
from recspark.session import get_spark

config, _, _ = pipeline_args(sys.argv[1:-1])
spark = get_spark(config.spark)
sources = load_sources(spark, config)
for name in ("events", "items", "users"):
    df = getattr(sources, name)
    if df is not None:
        df.write.format("delta").mode("overwrite").save(f"{sys.argv[-1]}/{name}")
"""  # timed from outside (run()), JVM start included, as the pipeline's run is


def conf_args(dataset: str, sets: list[str], root: Path) -> list[str]:
    """The Makefile's CONF for ``dataset``, with every output under ``root``."""
    layer = REPO / "conf" / "datasets" / f"{dataset}.yaml"
    args = ["--conf-file", str(REPO / "conf" / "local.yaml")]
    args += ["--conf-file", str(layer)] if layer.is_file() else ["--set", f"dataset.name={dataset}"]
    for key in ("lakehouse", "reports", "checkpoints"):
        args += ["--set", f"paths.{key}={root / key}"]
    for item in sets:
        args += ["--set", item]
    return args


def run(command: list[str], log: Path) -> float:
    """Runs ``command`` with its output in ``log``; its seconds, or SystemExit with the log's tail."""
    started = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "TF_USE_LEGACY_KERAS": "1", "PYTHONUNBUFFERED": "1"}).returncode
    seconds = time.perf_counter() - started
    if code != 0:
        tail = log.read_text().splitlines()[-30:]
        raise SystemExit(f"{' '.join(command[:3])} ... failed with exit code {code}:\n" + "\n".join(tail))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="completejourney")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a configuration override, as `make run SET=...`")
    parser.add_argument("--workdir", type=Path, help="where the run's folders go (default: a temporary folder, removed)")
    args = parser.parse_args()
    raise_on_termination()
    print_header(f"bench/run.py: make run on {args.dataset} from an empty lakehouse")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="recspark-bench-run-"))
    if workdir.exists() and any(workdir.iterdir()):
        raise SystemExit(f"--workdir {workdir} is not empty: the run must start from an empty lakehouse")
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        conf = conf_args(args.dataset, args.set, workdir)
        baseline = run([sys.executable, "-c", BASELINE, *conf, str(workdir / "baseline")], workdir / "baseline.log")
        print(f"baseline (raw readers -> Delta, its own JVM): {baseline:.1f} s", flush=True)
        print(load_line("after the baseline"), flush=True)
        total = run([sys.executable, "jobs/pipeline.py", *conf], workdir / "pipeline.log")
        stages = {}  # reports/<run name>/stage_seconds.json: the run name may differ from the data set's
        for path in (workdir / "reports").glob("*/stage_seconds.json"):
            stages.update(json.loads(path.read_text()))
        summary = [line for line in (workdir / "pipeline.log").read_text().splitlines() if line.startswith("   test ")]
        print(f"make run (jobs/pipeline.py, one JVM): {total:.1f} s = {total / 60:.1f} min (goal: 12 min idle)")
        for stage, seconds in stages.items():
            print(f"  {stage:<9} {seconds:8.1f} s")
        print("\n".join(summary))
        print(load_line("after"))
        print(f"ratio={total / baseline:.2f}")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
