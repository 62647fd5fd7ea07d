"""Train: gold training examples -> Petastorm -> Horovod (2 ranks) -> TensorFlow model.

    spark-submit jobs/train.py --conf-file conf/local.yaml [--set train.epochs=5]
"""
from recspark.stages import train_stage
from recspark.utils.jobs import run_job


def main() -> None:
    run_job("train", train_stage, heartbeat=False)  # rank 0 prints every epoch


if __name__ == "__main__":
    main()
