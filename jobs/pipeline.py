"""The whole pipeline in one Spark application: ingest, prepare, features, train, evaluate, score,
summary on one session (one JVM start, not seven), cached data released between stages. Each
stage keeps its own entry point (jobs/<stage>.py) for spark-submit, and a console script of the
wheel (recspark.entrypoints) for Databricks tasks.

    python jobs/pipeline.py --conf-file conf/local.yaml                     # every stage (make run)
    python jobs/pipeline.py --conf-file conf/local.yaml --from features     # features .. summary
    python jobs/pipeline.py --conf-file conf/local.yaml --stages train,evaluate --verbose
"""
from recspark.entrypoints import pipeline as main
from recspark.entrypoints import pipeline_args as parse_args  # noqa: F401 - tests/test_jobs.py

if __name__ == "__main__":
    main()
