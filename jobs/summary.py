"""Summary of a whole run: every table's row count, the metrics, and where the outputs are.

    python jobs/summary.py --conf-file conf/local.yaml
"""
from recspark.entrypoints import summary as main

if __name__ == "__main__":
    main()
