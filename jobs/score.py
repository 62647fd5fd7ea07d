"""Score: every user's top-K items with score and confidence -> the Delta `recommendations` table.

    spark-submit jobs/score.py --conf-file conf/local.yaml
"""
from recspark.entrypoints import score as main

if __name__ == "__main__":
    main()
