"""Forget: people, named by the shop's user ids, erased from every table of the data set (GDPR art. 17).

    spark-submit jobs/forget.py --conf-file conf/local.yaml --user-id 1001 --user-id 1002
    spark-submit jobs/forget.py --conf-file conf/local.yaml --ids-file erasure-requests.txt

Deletes their rows from bronze, silver, gold, recommendations, evaluation predictions and the
identity map, then VACUUMs (``privacy.erasure_retention_hours``, or ``--retention-hours``; 0 by
default: time travel to the versions before the erasure is lost) and appends an audit row without
the ids. Run it while no other job uses the lakehouse. Details: recspark/pipeline/forget.py.
"""
from recspark.entrypoints import forget as main

if __name__ == "__main__":
    main()
