"""Prepare: bronze -> silver (deduplicated, typed, missing values filled, user ids pseudonymised).

    spark-submit jobs/prepare.py --conf-file conf/local.yaml
"""
from recspark.entrypoints import prepare as main

if __name__ == "__main__":
    main()
