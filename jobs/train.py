"""Train: gold training examples -> Petastorm -> Horovod (2 ranks) -> TensorFlow model.

    spark-submit jobs/train.py --conf-file conf/local.yaml [--set train.epochs=5]
"""
from recspark.entrypoints import train as main

if __name__ == "__main__":
    main()
