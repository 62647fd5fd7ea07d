"""The closed loop replayed week by week (``make loop``): held-back weeks revealed as responses to
the lists served before them; warm-started, frozen and retrained models side by side.

    python jobs/loop.py --conf-file conf/local.yaml --conf-file conf/datasets/completejourney.yaml --conf-file conf/loop.yaml
"""
from recspark.loop import run_loop
from recspark.utils.jobs import run_job


def main() -> None:
    # The loop prints a line per step and training its epochs: no heartbeat on top.
    run_job("loop", run_loop, heartbeat=False)


if __name__ == "__main__":
    main()
