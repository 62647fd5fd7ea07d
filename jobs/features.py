"""Features: silver -> gold (vocabulary, behaviour sequences, split, training examples).

    spark-submit jobs/features.py --conf-file conf/local.yaml
"""
from recspark.entrypoints import features as main

if __name__ == "__main__":
    main()
