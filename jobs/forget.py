"""Forget: people, named by the shop's user ids, erased from every table of the data set (GDPR art. 17).

    spark-submit jobs/forget.py --conf-file conf/local.yaml --user-id 1001 --user-id 1002
    spark-submit jobs/forget.py --conf-file conf/local.yaml --ids-file erasure-requests.txt

Deletes their rows from bronze, silver, gold, recommendations, evaluation predictions and the
identity map, then VACUUMs (``privacy.erasure_retention_hours``, or ``--retention-hours``; 0 by
default: time travel to the versions before the erasure is lost) and appends an audit row without
the ids. Run it while no other job uses the lakehouse. Details: recspark/pipeline/forget.py.
"""
from __future__ import annotations

import argparse

from recspark.config import add_config_arguments
from recspark.pipeline.forget import forget, read_ids_file
from recspark.utils.jobs import run_job


def main(argv: list[str] | None = None) -> dict:
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
    return run_job("forget", lambda spark, config: forget(spark, config, ids, args.retention_hours), config_args)


if __name__ == "__main__":
    main()
