"""Ingest: the configured raw sources -> bronze Delta tables (events, items, users, quarantine).

    spark-submit jobs/ingest.py --conf-file conf/local.yaml [--set dataset.name=ml-1m]
"""
from recspark.entrypoints import ingest as main

if __name__ == "__main__":
    main()
