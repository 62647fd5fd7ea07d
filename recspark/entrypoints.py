"""The jobs' main functions, one per stage, as the wheel's console scripts (setup.py
``entry_points``): ``recspark-ingest`` ... ``recspark-score``, ``recspark-pipeline``, ``recspark-summary``
and ``recspark-forget``. A Databricks ``python_wheel_task`` calls them by name; ``jobs/<stage>.py``
calls the same function under ``spark-submit``. Each takes the arguments every job takes
(``--conf-file``, ``--set``, ``--verbose``: recspark.utils.jobs) from ``argv`` or the command line,
and fails on a bad configuration before Spark starts.
"""
from __future__ import annotations

import argparse

from recspark.config import Config, add_config_arguments
from recspark.pipeline.forget import forget as erase
from recspark.pipeline.forget import read_ids_file
from recspark.session import get_spark
from recspark.stages import (STAGES, evaluate_stage, features_stage, ingest_stage, prepare_stage, run_pipeline,
                             score_stage, select_stages, summary_stage, train_stage)
from recspark.utils.jobs import job_parser, parse_job_args, run_job


def ingest(argv: list[str] | None = None) -> dict:
    """The configured raw sources -> bronze Delta tables (events, items, users, quarantine)."""
    return run_job("ingest", ingest_stage, argv)


def prepare(argv: list[str] | None = None) -> dict:
    """Bronze -> silver (deduplicated, typed, missing values filled, user ids pseudonymised)."""
    return run_job("prepare", prepare_stage, argv)


def features(argv: list[str] | None = None) -> dict:
    """Silver -> gold (vocabulary, behaviour sequences, split, training examples)."""
    return run_job("features", features_stage, argv)


def train(argv: list[str] | None = None) -> dict:
    """Gold training examples -> Petastorm -> Horovod ranks on the executors -> TensorFlow models."""
    return run_job("train", train_stage, argv, heartbeat=False)  # rank 0 prints every epoch


def evaluate(argv: list[str] | None = None) -> dict:
    """The trained models and the baselines on the test split -> reports/<dataset>/."""
    return run_job("evaluate", evaluate_stage, argv)


def score(argv: list[str] | None = None) -> dict:
    """Every user's top-K items with score and confidence -> the Delta `recommendations` table."""
    return run_job("score", score_stage, argv)


def summary(argv: list[str] | None = None) -> dict:
    """Every table's row count, the metrics, and where the outputs are."""
    return run_job("summary", summary_stage, argv)


def pipeline_args(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace, list[str]]:
    """The configuration, the arguments and the stages to run (in pipeline order); exits with a
    usage error on an unknown stage or a bad configuration, before Spark starts."""
    parser = job_parser("recspark pipeline: every stage in one Spark application")
    names = ", ".join(STAGES)
    parser.add_argument("--stages", type=lambda text: [s for s in text.replace(",", " ").split() if s],
                        metavar="A,B", help=f"only these stages, run in pipeline order ({names})")
    parser.add_argument("--from", dest="start", metavar="STAGE", help="start at this stage (default: ingest)")
    parser.add_argument("--to", dest="stop", metavar="STAGE", help="stop after this stage (default: summary)")
    config, args = parse_job_args(parser, argv)
    try:
        stages = select_stages(args.stages, start=args.start, stop=args.stop)
    except ValueError as error:
        parser.error(str(error))
        raise  # unreachable: parser.error exits
    return config, args, stages


def pipeline(argv: list[str] | None = None) -> dict[str, dict]:
    """Every stage (or ``--stages`` / ``--from`` / ``--to``) in one Spark application."""
    config, args, stages = pipeline_args(argv)
    return run_pipeline(get_spark(config.spark, verbose=args.verbose), config, stages)


def forget(argv: list[str] | None = None) -> dict:
    """People, named by the shop's user ids, erased from every table of the data set."""
    parser = add_config_arguments(argparse.ArgumentParser(description="recspark forget"))
    parser.add_argument("--user-id", action="append", default=[], help="a shop user id to forget (repeatable)")
    parser.add_argument("--ids-file", help="a file of shop user ids to forget, one per line")
    parser.add_argument("--retention-hours", type=float, default=None,
                        help="VACUUM retention (default: privacy.erasure_retention_hours)")
    args = parser.parse_args(argv)
    ids = list(args.user_id) + (read_ids_file(args.ids_file) if args.ids_file else [])
    if not ids:
        parser.error("name at least one --user-id or an --ids-file")
    # The configuration arguments again, for the parsing every job shares (and its errors).
    config_args = ([arg for path in args.conf_file for arg in ("--conf-file", path)]
                   + [arg for value in args.overrides for arg in ("--set", value)])
    return run_job("forget", lambda spark, config: erase(spark, config, ids, args.retention_hours), config_args)


# console-script name -> function: setup.py's entry_points and the bundle's tasks are made from this.
CONSOLE_SCRIPTS = {f"recspark-{fn.__name__}": fn for fn in
                   (ingest, prepare, features, train, evaluate, score, summary, pipeline, forget)}
