"""Evaluate: the trained model and the popularity baseline on the test split -> reports/<dataset>/.

    spark-submit jobs/evaluate.py --conf-file conf/local.yaml
"""
from recspark.entrypoints import evaluate as main

if __name__ == "__main__":
    main()
