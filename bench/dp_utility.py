"""Privacy-utility, small: one model trained without DP and with train.privacy at several target
epsilons on the same gold tables, validation NDCG@10 and training time of each.

A measured comparison at small scale, not the README's full table (issue #16 item 2 wants NDCG@10 on
the test split of MovieLens-1M and Complete Journey with the report's baselines: long trainings).
Per setting the real train stage (``recspark.stages.train_stage``) runs with its own
``paths.checkpoints`` (``<checkpoints>/dp-utility/<label>``, MLflow store included), early stopping
off (``train.early_stopping_patience=0``: validation NDCG is recorded every epoch, not used to stop)
and no refit; the gold tables are built first when missing (ingest, prepare, features).
The validation NDCG@10 is on up to ``train.validation_users`` users' held-out sessions, the last
epoch's (early stopping off: the export is the best epoch's, which validation chose).

    .venv/bin/python bench/dp_utility.py --conf-file conf/local.yaml --set dataset.name=synthetic \\
        --set train.models=[sasrec] --set train.epochs=2 [--epsilons 1 4 8]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from recspark import constants as C
from recspark.config import DPConfig, add_config_arguments, load_config
from recspark.session import get_spark
from recspark.stages import features_stage, ingest_stage, prepare_stage, train_stage
from recspark.utils.delta import table_exists


def main() -> None:
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 4.0, 1.0])
    args = parser.parse_args()
    base = load_config(args.conf_file, [*args.overrides, "train.early_stopping_patience=0", "train.refit=false"])
    model = base.train.models[0]
    spark = get_spark(base.spark)
    if not table_exists(spark, base.table_path(C.GOLD, C.MODEL_EXAMPLES[model])):
        for stage in (ingest_stage, prepare_stage, features_stage):
            print(f"dp_utility: {stage.__name__} ...", flush=True)
            stage(spark, base)
    rows = []
    settings = [("no DP", DPConfig())] + [(f"epsilon {eps:g}", DPConfig(enabled=True, target_epsilon=eps))
                                          for eps in args.epsilons]
    for label, privacy in settings:
        config = dataclasses.replace(base, paths=dataclasses.replace(
            base.paths, checkpoints=str(Path(base.paths.checkpoints) / "dp-utility" / label.replace(" ", "-"))),
            train=dataclasses.replace(base.train, privacy=privacy))
        print(f"dp_utility: {model}, {label}", flush=True)
        started = time.time()
        train_stage(spark, config)
        meta = json.loads((config.model_dir(model) / "model_meta.json").read_text())
        rows.append((label, meta, time.time() - started))
    print(f"\n{base.run_name}, {model}, {base.train.epochs} epochs, {base.train.num_proc} ranks, batch "
          f"{base.train.batch_size} per rank:\n")
    print("| setting | epsilon spent (delta) | noise multiplier | steps | val NDCG@10 per epoch | training s | stage s |")
    print("|---|---|---|---|---|---|---|")
    for label, meta, seconds in rows:
        dp = meta.get("privacy")
        spent = f"{dp['epsilon']} ({dp['delta']:.2g})" if dp else "-"
        print(f"| {label} | {spent} | {dp['noise_multiplier'] if dp else '-'} | "
              f"{dp['steps'] if dp else meta['steps_per_epoch'] * meta['epochs_trained']} | "
              + ", ".join(f"{v:.4f}" for v in meta.get("val_ndcg_history", []))
              + f" | {meta['training_seconds']:.0f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
