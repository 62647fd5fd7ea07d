"""The whole pipeline in one Spark application: ingest, prepare, features, train, evaluate, score,
summary on one session (one JVM start, not seven), cached data released between stages. Each
stage keeps its own entry point (jobs/<stage>.py) for spark-submit and Databricks tasks.

    python jobs/pipeline.py --conf-file conf/local.yaml                     # every stage (make run)
    python jobs/pipeline.py --conf-file conf/local.yaml --from features     # features .. summary
    python jobs/pipeline.py --conf-file conf/local.yaml --stages train,evaluate --verbose
"""
from __future__ import annotations

import argparse

from recspark.config import Config
from recspark.session import get_spark
from recspark.stages import STAGES, run_pipeline, select_stages
from recspark.utils.jobs import job_parser, parse_job_args


def parse_args(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace, list[str]]:
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


def main(argv: list[str] | None = None) -> None:
    config, args, stages = parse_args(argv)
    run_pipeline(get_spark(config.spark, verbose=args.verbose), config, stages)


if __name__ == "__main__":
    main()
