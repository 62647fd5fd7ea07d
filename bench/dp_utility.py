"""Privacy-utility: one model trained without DP and with train.privacy at several target epsilons
on the same gold tables, with each setting's validation NDCG@10, training time and (``--test``) its
test metrics beside the report's baselines.

Per setting the real train stage (``recspark.stages.train_stage``) runs with its own
``paths.checkpoints`` (``<checkpoints>/dp-utility/<label>``, MLflow store included), early stopping
off (``train.early_stopping_patience=0``: validation NDCG is recorded every epoch, not used to stop)
and no refit (``train.refit=false``): a strict guarantee covers only what the DP steps saw, so every
setting is tested as trained on the training period. The gold tables are built first when missing
(ingest, prepare, features). The validation NDCG@10 is on up to ``train.validation_users`` users'
held-out sessions after each epoch.

``--test`` runs the real evaluation on the test split for each setting (the report's protocol, into
``<reports>/dp-utility/<label>``; no calibration): the first setting's evaluation ranks the
configuration's baselines too (they read no model, so once is enough), the others only the model.
``--dp-epochs`` gives the DP settings their own epoch count: a DP epoch is ceil(1 / q) steps in which
every user is sampled once in expectation and gives one clipped gradient, a far smaller pass than a
plain epoch over every row.

    .venv/bin/python bench/dp_utility.py --conf-file conf/local.yaml --set dataset.name=synthetic \\
        --set train.models=[sasrec] --set train.epochs=2 [--epsilons 1 4 8] [--test] [--dp-epochs N]
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from pathlib import Path

from pyspark.sql import SparkSession

from recspark import constants as C
from recspark.config import Config, DPConfig, add_config_arguments, load_config
from recspark.evaluation.evaluate import save_figure
from recspark.session import get_spark
from recspark.stages import evaluate_stage, features_stage, ingest_stage, prepare_stage, train_stage
from recspark.utils.delta import table_exists

TEST_METRICS = ("ndcg_at_k", "hit_rate_at_k", "recall_at_k")
RESULTS_FILE, PLOT_FILE = "privacy_utility.json", "privacy_utility.png"


def setting_config(base: Config, label: str, privacy: DPConfig, epochs: int | None) -> Config:
    """``base`` with this setting's privacy, epochs (DP settings with --dp-epochs) and own
    checkpoints and reports folders."""
    model = base.train.models[0]
    per_model = dict(base.train.per_model)
    if epochs is not None:
        per_model[model] = {**per_model.get(model, {}), "epochs": epochs}
    folder = label.replace(" ", "-")
    return dataclasses.replace(
        base,
        paths=dataclasses.replace(base.paths,
                                  checkpoints=str(Path(base.paths.checkpoints) / "dp-utility" / folder),
                                  reports=str(Path(base.paths.reports) / "dp-utility" / folder)),
        train=dataclasses.replace(base.train, privacy=privacy, per_model=per_model))


def tested_metrics(spark: SparkSession, config: Config, with_baselines: bool) -> dict:
    """The report's test metrics of this setting's model (and of the baselines when asked), read
    from the metrics.json its evaluation wrote."""
    config = dataclasses.replace(
        config, score=dataclasses.replace(config.score, calibrate=False),
        evaluate=config.evaluate if with_baselines else dataclasses.replace(config.evaluate, baselines=[]))
    summary = evaluate_stage(spark, config)
    return json.loads((Path(summary["report"]) / "metrics.json").read_text())["models"]


def plot_privacy_utility(results: dict, path: Path) -> Path:
    """Test NDCG@10 per setting (bars, with their values) against the baselines (horizontal lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = results["settings"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.bar([s["setting"] for s in settings], [s["test"]["ndcg_at_k"] for s in settings], color="tab:blue")
    for x, setting in enumerate(settings):
        ax.annotate(f"{setting['test']['ndcg_at_k']:.4f}", (x, setting["test"]["ndcg_at_k"]),
                    textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
    # Every baseline gets a line (make compare ranks six): the styles repeat rather than run out.
    for (name, metrics), style in zip(results["baselines"].items(), itertools.cycle(("--", ":", "-."))):
        ax.axhline(metrics["ndcg_at_k"], color="grey", linestyle=style, label=f"{name} {metrics['ndcg_at_k']:.4f}")
    ax.set_ylabel("test NDCG@10")
    ax.set_title(f"{results['dataset']}: {results['model']} with user-level DP-SGD", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    return save_figure(fig, path)


def main() -> None:
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 4.0, 1.0])
    parser.add_argument("--test", action="store_true", help="evaluate every setting on the test split")
    parser.add_argument("--dp-epochs", type=int, default=None, help="epochs of the DP settings")
    args = parser.parse_args()
    base = load_config(args.conf_file, [*args.overrides, "train.early_stopping_patience=0", "train.refit=false"])
    model = base.train.models[0]
    spark = get_spark(base.spark)
    if not table_exists(spark, base.table_path(C.GOLD, C.MODEL_EXAMPLES[model])):
        for stage in (ingest_stage, prepare_stage, features_stage):
            print(f"dp_utility: {stage.__name__} ...", flush=True)
            stage(spark, base)
    rows, baselines = [], {}
    settings = [("no DP", DPConfig(), None)] + [
        (f"epsilon {eps:g}", DPConfig(enabled=True, target_epsilon=eps), args.dp_epochs) for eps in args.epsilons]
    for label, privacy, epochs in settings:
        config = setting_config(base, label, privacy, epochs)
        print(f"dp_utility: {model}, {label}", flush=True)
        started = time.time()
        train_stage(spark, config)
        seconds = time.time() - started
        meta = json.loads((config.model_dir(model) / "model_meta.json").read_text())
        tested = {}
        if args.test:
            print(f"dp_utility: {model}, {label}: evaluation on test", flush=True)
            tested = tested_metrics(spark, config, with_baselines=not baselines)
            baselines = baselines or {name: values for name, values in tested.items() if name != model}
        rows.append((label, meta, seconds, tested.get(model, {})))
    settings_line = base.train.for_model(model)
    print(f"\n{base.run_name}, {model}, {base.train.num_proc} ranks, batch {settings_line.batch_size} per rank, "
          f"learning rate {settings_line.learning_rate}:\n")
    tested_columns = "| test NDCG@10 | test HR@10 | test recall@10 " if args.test else ""
    print("| setting | epsilon spent (delta) | noise multiplier | epochs | steps | val NDCG@10 per epoch "
          f"{tested_columns}| training s | stage s |")
    print("|---" * (8 + 3 * args.test) + "|")
    for label, meta, seconds, tested in rows:
        dp = meta.get("privacy")
        spent = f"{dp['epsilon']} ({dp['delta']:.2g})" if dp else "-"
        history = meta.get("val_ndcg_history", [])
        test_cells = "".join(f"| {tested[name]:.4f} " for name in TEST_METRICS) if args.test else ""
        print(f"| {label} | {spent} | {dp['noise_multiplier'] if dp else '-'} | {len(history)} | "
              f"{dp['steps'] if dp else meta['steps_per_epoch'] * meta['epochs_trained']} | "
              + ", ".join(f"{v:.4f}" for v in history)
              + f" {test_cells}| {meta['training_seconds']:.0f} | {seconds:.0f} |")
    for name, values in baselines.items():
        cells = "".join(f"| {values[metric]:.4f} " for metric in TEST_METRICS)
        print(f"| {name} (baseline, train + validation) | - | - | - | - | - {cells}| - | - |")
    if args.test:
        results = {"dataset": base.run_name, "model": model, "baselines": baselines, "settings": [
            {"setting": label, "privacy": meta.get("privacy"), "val_ndcg_history": meta.get("val_ndcg_history", []),
             "training_seconds": meta["training_seconds"], "stage_seconds": round(seconds, 1), "test": tested}
            for label, meta, seconds, tested in rows]}
        folder = Path(base.paths.reports) / "dp-utility" / base.run_name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / RESULTS_FILE).write_text(json.dumps(results, indent=2))
        print(f"\nresults: {folder / RESULTS_FILE}, plot: {plot_privacy_utility(results, folder / PLOT_FILE)}")


if __name__ == "__main__":
    main()
