"""Each pipeline stage as one function ``(spark, config) -> summary``; the jobs are thin wrappers.

The summary is what a person wants at the end of a stage: what was written, how many rows, where.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import REFIT_DIR, SERVE_DIR, Config
from recspark.datasets import RawSources, load_sources
from recspark.evaluation.evaluate import evaluate, model_run, with_original_user_id
from recspark.pipeline.features import SEQUENCES, build_features
from recspark.pipeline.ingest import ingest
from recspark.pipeline.prepare import IDENTITY_MAP, prepare
from recspark.pipeline.privacy import identity_map_key
from recspark.scoring import recommend_indices, require_columns, require_model_inputs
from recspark.utils.delta import read_table, row_count, table_exists, table_version
from recspark.utils.jobs import StageFn, new_run_id, release_cached, run_stage, write_json
from recspark.vectors import ITEM_VECTORS, SIMILAR_ITEMS, USER_VECTORS, vector_table_path, write_vector_tables


def _reconciled(log: list[dict]) -> dict:
    summary = {}
    for row in log:
        name = row[C.SOURCE_FILE].rsplit("/", 1)[-1]
        summary[f"{row['entity']} <- {name}"] = (
            f"read {row['rows_read']:,} = accepted {row['rows_accepted']:,} + quarantined "
            f"{row['rows_quarantined']:,} (table: {row['table_rows_inserted']:,} new rows)")
    return summary


def ingest_stage(spark: SparkSession, config: Config, sources: RawSources | None = None) -> dict:
    """Events, items and users into bronze; with ``feedback.path`` also the feedback files."""
    run_id = new_run_id(config)
    summary = _reconciled(ingest(spark, sources or load_sources(spark, config), config, run_id))
    if config.feedback.path:
        summary.update(_reconciled(ingest_feedback_files(spark, config, run_id)))
    summary["bronze"] = config.table_path(C.BRONZE, "")
    return summary


def ingest_feedback_files(spark: SparkSession, config: Config, run_id: str) -> list[dict]:
    """The files of ``feedback.path`` into bronze feedback (``dataset.columns.feedback`` maps names)."""
    from recspark.datasets.files import column_mapping, read_path
    from recspark.feedback import ingest_feedback

    raw = read_path(spark, config.feedback.path, C.FEEDBACK, column_mapping(config.dataset.columns).get(C.FEEDBACK))
    return ingest_feedback(spark, config, raw, run_id)


def refresh_feedback(spark: SparkSession, config: Config) -> dict:
    """Bronze feedback -> silver feedback (joined to its runs, pseudonymised), its responses into
    silver events, and gold served_metrics; nothing without bronze feedback."""
    from recspark.feedback import merge_response_events, refresh_silver_feedback
    from recspark.served_metrics import write_served_metrics

    if not table_exists(spark, config.table_path(C.BRONZE, C.FEEDBACK)):
        return {}
    inserted = refresh_silver_feedback(spark, config)["numTargetRowsInserted"]
    events = merge_response_events(spark, config)
    runs = write_served_metrics(spark, config)
    return {"silver feedback": f"{inserted:,} new rows -> {config.table_path(C.SILVER, C.FEEDBACK)}",
            "response events": f"{events:,} new silver events",
            "served metrics": f"{len(runs)} runs -> {config.table_path(C.GOLD, C.SERVED_METRICS)}, "
                              f"{config.reports_dir / 'served_metrics.md'}"}


def feedback_stage(spark: SparkSession, config: Config) -> dict:
    """jobs/feedback.py: the feedback files of ``feedback.path`` into bronze, then :func:`refresh_feedback`."""
    summary = _reconciled(ingest_feedback_files(spark, config, new_run_id(config))) if config.feedback.path else {}
    return {**summary, **(refresh_feedback(spark, config) or {"feedback": "no bronze feedback (feedback.path unset)"})}


def _counted(spark: SparkSession, paths: dict[str, str]) -> dict:
    return {name: f"{row_count(spark, path):,} rows -> {path}" for name, path in paths.items()}


def prepare_stage(spark: SparkSession, config: Config) -> dict:
    """Silver from bronze; with bronze feedback also silver feedback, its response events, served metrics."""
    summary = _counted(spark, prepare(spark, config))
    return {**summary, **refresh_feedback(spark, config)}


def features_stage(spark: SparkSession, config: Config) -> dict:
    return _counted(spark, build_features(spark, config))


def spec_params(spec) -> dict:
    """The model spec's sizes as MLflow parameters: its per-item arrays (popularity counts, the feature
    models' item tables) are data, not parameters, and would overflow MLflow's value limit."""
    def scalars(values: dict) -> dict:
        return {key: value for key, value in values.items() if not isinstance(value, (dict, list))}

    return {**scalars(spec.to_dict()), **{f"features_{key}": value for key, value in scalars(spec.features or {}).items()}}


def model_train_params(config: Config, model: str) -> dict:
    """The train settings ``model`` was trained with (its per_model values applied) as MLflow parameters."""
    settings = dataclasses.asdict(config.train.for_model(model))
    settings.pop("per_model")
    # train.privacy's keys as train.privacy.<key> (MLflow parameters are flat values); off, only that it is off.
    privacy = settings.pop("privacy")
    settings.update({f"privacy.{key}": value for key, value in privacy.items() if privacy["enabled"] or key == "enabled"})
    return settings


def privacy_tracking(result) -> tuple[dict, dict]:
    """MLflow (params, metrics) of a DP-SGD run's spent budget (``TrainResult.privacy``): the
    accounting as parameters ``dp.*``, the spent epsilon as metric ``dp_epsilon``; empty without DP."""
    if result.privacy is None:
        return {}, {}
    params = {key: value for key, value in result.privacy.items() if key != "epsilon"}
    return {"dp": params}, {"dp_epsilon": [result.privacy["epsilon"]]}


def result_warm_start(model_dir: Path) -> str | None:
    """Where the export in ``model_dir`` was warm-started from and how its item rows moved
    (``vocabulary``: by item id), from its model_meta.json; None for a run from scratch."""
    import json

    meta_path = Path(model_dir) / "model_meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return f"{meta['warm_start_from']} ({meta.get('warm_start_items')})" if meta.get("warm_start_from") else None


def train_stage(spark: SparkSession, config: Config) -> dict:
    """Trains every model of ``train.models`` in turn on the same gold tables."""
    from recspark.models import loss_inputs, model_examples_table, model_inputs, model_spec  # TensorFlow only where needed
    from recspark.models.early_stopping import collect_validation_set
    from recspark.models.training import train_distributed
    from recspark.serving import export_pyfunc
    from recspark.feedback import feedback_tags, feedback_used
    from recspark.tracking import log_training_run

    examples_paths = {model: config.table_path(C.GOLD, model_examples_table(model)) for model in config.train.models}
    vocab_path = config.table_path(C.GOLD, C.ITEM_VOCAB)
    queries_path = config.table_path(C.GOLD, C.EVAL_QUERIES)
    spec = model_spec(spark, config)
    num_items = spec.num_items
    run_id = new_run_id(config)
    # The Delta versions read: part of each run's fingerprint (resume) and of its MLflow record.
    versions = {path: table_version(spark, path)
                for path in dict.fromkeys([*examples_paths.values(), vocab_path, queries_path])}
    summary: dict = {C.RUN_ID: run_id}
    category_path = config.table_path(C.GOLD, C.CATEGORY_VOCAB)
    category_vocab = read_table(spark, category_path) if table_exists(spark, category_path) else None
    feedback = feedback_used(spark, config)  # the responses that reached these gold tables, if any
    refit_path = config.table_path(C.GOLD, C.REFIT_BASKETS)
    serve_path = config.table_path(C.GOLD, C.SERVE_BASKETS)
    for model in config.train.models:
        print(f"train: {config.train.describe(model)} (* = train.per_model.{model})", flush=True)
        model_dir = config.model_dir(model)
        settings = config.train.for_model(model)
        # The fits after this one (the tested refit, then the serving fit) and so the one that
        # serves: only that one is exported as a pyfunc (a Spark pass over the gold tables each).
        refits = (settings.refit and model_examples_table(model) == C.TRAIN_BASKETS
                  and table_exists(spark, refit_path))
        serving_fit = refits and table_exists(spark, serve_path)
        examples = read_table(spark, examples_paths[model])
        queries = read_table(spark, queries_path)
        # The loss's columns too: gold built before them (e.g. ``ignored``) fails here, naming the table.
        require_columns(examples, [*model_inputs(model), *loss_inputs(settings)], examples_paths[model])
        require_columns(queries, model_inputs(model), queries_path)
        validation = collect_validation_set(
            queries, read_table(spark, vocab_path), inputs=model_inputs(model), max_users=config.train.validation_users,
            exclude_seen=config.evaluate.exclude_seen, seed=config.train.seed)
        # The rows whose shown-and-ignored items the loss reads (recorded: which feedback training used).
        ignored_rows = (examples.filter(F.exists(C.IGNORED, lambda i: i >= config.features.first_item_idx)).count()
                        if loss_inputs(settings) else None)
        result = train_distributed(
            spark, examples, model=model, spec=spec,
            train_config=settings, model_dir=str(model_dir),
            cache_url=config.petastorm_cache_url, validation=validation,
            data_versions={Path(path).name: version for path, version in versions.items()},
            # Saved in the export; a warm start maps the previous export's rows through them.
            item_vocab=read_table(spark, vocab_path), category_vocab=category_vocab,
        )
        dp_params, dp_metrics = privacy_tracking(result)
        tracked = log_training_run(
            config.tracking, checkpoints_dir=config.paths.checkpoints, dataset=config.run_name, model=model,
            schema=config.registry_schema,
            params={"train": model_train_params(config, model), "model": spec_params(spec), **dp_params},
            metrics={"loss": result.history, "val_ndcg_at_10": result.val_ndcg_history, **dp_metrics},
            table_versions=versions,
            model_dir=model_dir, tags={C.RUN_ID: run_id, "resumed_from_epoch": str(result.initial_epoch),
                                       "best_epoch": str(result.best_epoch), "launcher": result.launcher,
                                       **feedback_tags(feedback),
                                       **({} if ignored_rows is None else {"ignored_rows": str(ignored_rows)})},
            pyfunc_dir=None if refits else export_pyfunc(spark, config, model, model_dir, run_id))
        write_json(model_dir / "run.json", {
            C.RUN_ID: run_id,
            "dataset": config.run_name,
            "model": model,
            "num_items": num_items,
            "table_versions": versions,
            "feedback": feedback,
            "ignored_negatives": None if ignored_rows is None else {
                "weight": settings.ignored_weight, "rows": ignored_rows},
            "warm_start_from": result_warm_start(model_dir),
            "seconds": round(result.seconds, 1),
            "config": config.to_dict(),
            "mlflow": {"run_id": tracked.run_id, "registered_model": tracked.registered_model,
                       "version": tracked.model_version, "tracking_uri": tracked.tracking_uri},
        })
        summary[model] = (f"{config.train.num_proc} Horovod ranks, {num_items - config.features.first_item_idx:,} items, "
                          f"{result.seconds:.1f}s, loss per epoch "
                          + ", ".join(f"{loss:.4f}" for loss in result.history)
                          + (f", resumed after epoch {result.initial_epoch}" if result.initial_epoch else "")
                          + (f", val NDCG@10 best {max(result.val_ndcg_history):.4f} at epoch {result.best_epoch}"
                             if result.val_ndcg_history else "")
                          + (f", DP epsilon={result.privacy['epsilon']} delta={result.privacy['delta']:.3g}"
                             if result.privacy else "")
                          + f" -> {model_dir}; MLflow run {tracked.run_id}, "
                            f"{tracked.registered_model} v{tracked.model_version}")
        if refits:
            # The epochs early stopping chose (all of them without validation), now on train +
            # validation (the version evaluate tests), then on every period with the serving
            # vocabulary (the version score serves: nothing is left to test it on).
            epochs = result.best_epoch or len(result.history)
            summary[f"{model} refit"] = refit(
                spark, config, model, spec, epochs, run_id=run_id, examples_path=refit_path,
                data_versions={**versions, refit_path: table_version(spark, refit_path)},
                item_vocab=read_table(spark, vocab_path), category_vocab=category_vocab, served=not serving_fit)
            serving_vocab_path = config.table_path(C.GOLD, C.SERVING_ITEM_VOCAB)
            if serving_fit:
                serving_vocab = read_table(spark, serving_vocab_path)
                summary[f"{model} serving fit"] = refit(
                    spark, config, model,
                    serving_spec(spec, serving_vocab, read_table(spark, config.table_path(C.GOLD, C.SERVING_SEQUENCES))),
                    epochs, run_id=run_id,
                    examples_path=serve_path, fit_on=C.FIT_ON_ALL,
                    data_versions={**versions, serve_path: table_version(spark, serve_path),
                                   serving_vocab_path: table_version(spark, serving_vocab_path)},
                    item_vocab=serving_vocab, category_vocab=category_vocab)
    return summary


def serving_spec(spec, serving_vocab: DataFrame, serving_sequences: DataFrame):
    """``spec`` sized for the serving vocabulary (the training one plus the later periods' items,
    appended: every other setting, and every training index, stays). The popularity sampler's
    counts become every period's: an appended item has no training count, and with none it would
    never be drawn as a negative and its expected count as a target would be 0."""
    last = serving_vocab.agg(F.max(C.ITEM_IDX)).first()[0]
    num_items = max(spec.num_items, int(last) + 1)
    counts = None
    if spec.item_counts is not None:  # one count per vocabulary item, as model_spec collects them
        counts = [0] * num_items
        steps = serving_sequences.select(F.explode(C.ITEM_IDX).alias(C.ITEM_IDX))
        for row in (steps.filter(F.col(C.ITEM_IDX) >= spec.first_item_idx).groupBy(C.ITEM_IDX)
                    .agg(F.count(F.lit(1)).alias("n")).collect()):
            counts[row[C.ITEM_IDX]] = int(row["n"])
    return dataclasses.replace(spec, num_items=num_items, item_counts=counts)


def refit(spark: SparkSession, config: Config, model: str, spec, epochs: int, *, run_id: str, examples_path: str,
          data_versions: dict, item_vocab: DataFrame, category_vocab: DataFrame | None,
          fit_on: str = C.FIT_ON_REFIT, served: bool = True) -> str:
    """Fits ``model`` again from scratch for the ``epochs`` validation chose, with the same settings,
    on ``examples_path``: gold refit_baskets (``fit_on`` train + validation, into
    ``<model_dir>/refit``: the validation weeks are the latest a shop has, and the model tested on
    the weeks after them should have learned them), or gold serve_baskets with the serving
    vocabulary (``fit_on`` all events, into ``<model_dir>/serve``: the model that serves has learned
    the test weeks too, and their new items have rows of their own). Registered in MLflow as the
    model's next version and tagged ``fit_on``; the serving fit is the last version, the served one.
    Only a ``served`` fit is exported as a pyfunc. Returns the summary line."""
    from recspark.models.training import train_distributed
    from recspark.serving import export_pyfunc
    from recspark.tracking import log_training_run

    folder = config.model_dir(model) / (SERVE_DIR if fit_on == C.FIT_ON_ALL else REFIT_DIR)
    # No validation (it is now training data) and no warm start: the same recipe as the chosen model.
    settings = dataclasses.replace(config.train.for_model(model), epochs=epochs, early_stopping_patience=0,
                                   warm_start=False)
    print(f"train: {model} refit on {fit_on} for {epochs} epoch(s) -> {folder}", flush=True)
    result = train_distributed(
        spark, read_table(spark, examples_path), model=model, spec=spec, train_config=settings,
        model_dir=str(folder), cache_url=config.petastorm_cache_url, validation=None,
        data_versions={Path(path).name: version for path, version in data_versions.items()},
        item_vocab=item_vocab, category_vocab=category_vocab)
    dp_params, dp_metrics = privacy_tracking(result)
    tracked = log_training_run(
        config.tracking, checkpoints_dir=config.paths.checkpoints, dataset=config.run_name, model=model,
        schema=config.registry_schema,
        params={"train": {**model_train_params(config, model), "epochs": epochs, "early_stopping_patience": 0},
                "model": spec_params(spec), **dp_params},
        metrics={"loss": result.history, **dp_metrics}, table_versions=data_versions, model_dir=folder,
        tags={C.RUN_ID: run_id, "fit_on": fit_on, "launcher": result.launcher},
        pyfunc_dir=export_pyfunc(spark, config, model, folder, run_id) if served else None)
    write_json(folder / "run.json", {
        C.RUN_ID: run_id, "dataset": config.run_name, "model": model, "fit_on": fit_on, "epochs": epochs,
        "num_items": spec.num_items, "table_versions": data_versions, "config": config.to_dict(),
        "mlflow": {"run_id": tracked.run_id, "registered_model": tracked.registered_model,
                   "version": tracked.model_version, "tracking_uri": tracked.tracking_uri},
    })
    return (f"{epochs} epoch(s) on {Path(examples_path).name}, {spec.num_items - config.features.first_item_idx:,} "
            f"items, {result.seconds:.1f}s, loss per epoch " + ", ".join(f"{loss:.4f}" for loss in result.history)
            + (f", DP epsilon={result.privacy['epsilon']} delta={result.privacy['delta']:.3g}" if result.privacy else "")
            + f" -> {folder}; {tracked.registered_model} v{tracked.model_version}"
            + (" (served)" if fit_on == C.FIT_ON_ALL else " (tested)"))


def evaluate_stage(spark: SparkSession, config: Config) -> dict:
    report = evaluate(spark, config)
    summary = {"test users": f"{report['users']:,}", "protocol": report["protocol"]}
    for model, metrics in report["models"].items():
        summary[model] = ", ".join(f"{name.replace('_at_k', '@' + str(report['k']))}={value:.4f}"
                                   for name, value in metrics.items())
    summary["report"] = str(config.reports_dir / report[C.RUN_ID])
    summary["predictions"] = report["predictions_table"]
    return summary


def _four(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.4f}"


def score_stage(spark: SparkSession, config: Config) -> dict:
    """Every user's top-K with score, confidence and reason, written as this run's partition of the
    `recommendations` table (a re-run replaces it; the latest ``score.keep_runs`` runs are kept)."""
    import datetime as dt

    from recspark.calibration import ensure_calibration
    from recspark.feedback import as_of_time, dismissed_items, with_dismissed_excluded
    from recspark.vocabulary import saved_item_vocabulary, to_saved_vocabulary, vocabularies_differ
    from recspark.pipeline.item_features import ITEM_FEATURES
    from recspark.recommendations import (basket_items, blocked_items, bought_with, popular_items, recommendation_rows,
                                          with_reasons, write_run)

    model = config.scoring_model
    # The refit on every period when train made one (else the tested refit on train + validation,
    # else the chosen model); its calibration map is the one fitted on validation for the chosen
    # model (recspark.calibration.ensure_calibration): a refit has seen validation, so its own
    # scores there would look better calibrated than they are.
    model_dir = str(config.served_model_dir(model))
    run = model_run(config, model, served=True)
    run_id = config.score.run_id or run[C.RUN_ID]
    first_item = config.features.first_item_idx
    histories_path = config.table_path(C.GOLD, C.SERVING_HISTORIES)
    histories = require_model_inputs(read_table(spark, histories_path), model_dir, histories_path)
    # The serving side of gold: every period, the training vocabulary plus the later items.
    vocab = read_table(spark, config.table_path(C.GOLD, C.SERVING_ITEM_VOCAB))
    sequences_path = config.table_path(C.GOLD, C.SERVING_SEQUENCES)
    baskets = (basket_items(read_table(spark, sequences_path), first_item) if table_exists(spark, sequences_path)
               else None)
    identity = read_table(spark, config.table_path(C.BRONZE, IDENTITY_MAP))
    features_path = config.table_path(C.GOLD, ITEM_FEATURES)
    item_features = read_table(spark, features_path) if table_exists(spark, features_path) else None
    # A model trained on another vocabulary (the tested refit or any model without a serving fit,
    # which know the training period's; the loop's frozen reference) reads its own indices.
    saved_vocab = saved_item_vocabulary(spark, model_dir)
    translated = saved_vocab is not None and vocabularies_differ(vocab, saved_vocab)
    if translated:
        histories, item_features, baskets = to_saved_vocabulary(histories, item_features, vocab, saved_vocab,
                                                                config.features.item_layout, baskets)
        vocab = saved_vocab
    # Items a user dismissed lately: left out of that user's list through the scorer's own exclusion.
    exclude_seen, as_of = config.evaluate.exclude_seen, as_of_time(config)
    feedback_path = config.table_path(C.SILVER, C.FEEDBACK)
    dismissing = config.feedback.dismiss_days > 0 and table_exists(spark, feedback_path)
    if dismissing:
        dismissed = dismissed_items(read_table(spark, feedback_path), as_of, config.feedback.dismiss_days)
        histories = with_dismissed_excluded(histories, dismissed, vocab, exclude_seen)
        exclude_seen = True
    blocked = (blocked_items(item_features, first_item, config.score.exclude_categories,
                             config.score.include_categories) if item_features is not None else {})
    never = sorted(set().union(*blocked.values())) if blocked else []
    # Fitted on validation (by train's export, normally); its test ECE is evaluate's, when it ran.
    calibration = ensure_calibration(spark, config, model, run.get(C.RUN_ID)) if config.score.calibrate else None
    # The user's own repeat profile rides along for the reasons (every model's serving row has it).
    top = recommend_indices(histories, model_dir, config.score.k, exclude_seen, config.score.batch_size,
                            never_recommend=never, item_block=config.score.item_block,
                            keep=[c for c in (C.REPEAT_ITEMS, C.REPEAT_FEATURES) if c in histories.columns],
                            calibration=calibration, min_confidence=config.score.min_confidence)
    popular = popular_items(item_features, first_item) if item_features is not None else None
    # The lists are read twice (the reasons pair baskets with them): scored once, kept until written.
    top = top.persist()
    together = (bought_with(top, baskets, vocab, first_item)
                if C.REPEAT_ITEMS in top.columns and baskets is not None else None)
    generated_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    key = identity_map_key(config.privacy.secret_scope)
    rows = recommendation_rows(with_reasons(top, popular, together), vocab, run_id=run_id, model_name=model,
                               model_version=(run.get("mlflow") or {}).get("version"), generated_at=generated_at)
    try:
        written = write_run(with_original_user_id(rows, identity, key), config.recommendations_path, run_id,
                            config.score.keep_runs)
    finally:
        top.unpersist()
    path = config.recommendations_path
    this_run = read_table(spark, path).filter(F.col(C.RUN_ID) == run_id).count()
    vectors = write_vector_tables(spark, config, histories, model_dir, vocab, never=never,
                                  to_shop_ids=lambda df: with_original_user_id(df, identity, key), run_id=run_id,
                                  model_name=model, generated_at=generated_at)
    return {"recommendations": f"{this_run:,} rows (top {config.score.k} per user) of run {run_id} -> {path}",
            **vectors,
            "never recommended": ", ".join(f"{name} {len(items):,} items" for name, items in blocked.items()) or "none",
            "runs deleted": ", ".join(written["deleted_runs"]) or "none",
            "confidence": (f"isotonic calibration on {calibration.pairs:,} validation pairs (bought rate "
                           f"{calibration.positive_rate:.4f}), ECE validation "
                           f"{_four(calibration.ece_validation)} (out of fold), "
                           f"test {_four(calibration.ece_test)} (measured by evaluate; its report has the "
                           f"reliability diagram); min_confidence {config.score.min_confidence}"
                           if calibration is not None else
                           f"softmax share (not calibrated); min_confidence {config.score.min_confidence}"),
            "dismissed items": (f"kept out for {config.feedback.dismiss_days:g} days before {as_of:%Y-%m-%d %H:%M}"
                                if dismissing else "none (no silver feedback, or feedback.dismiss_days = 0)"),
            "model": f"{model_dir} ({run.get('fit_on', C.FIT_ON_TRAIN)})",
            "item indices": ("translated from gold's serving vocabulary to the model's own (it was trained on "
                             "another)" if translated else "gold's serving vocabulary (the model's own)"),
            C.RUN_ID: run_id}


LAYERS = {
    C.BRONZE: (C.EVENTS, C.ITEMS, C.USERS, C.FEEDBACK, C.QUARANTINE, IDENTITY_MAP, C.RUN_LOG),
    C.SILVER: (C.EVENTS, C.ITEMS, C.USERS, C.FEEDBACK, "bots"),
    C.GOLD: ("split_info", C.ITEM_VOCAB, C.CATEGORY_VOCAB, SEQUENCES, C.TRAIN_EXAMPLES, C.TRAIN_WINDOWS, C.TRAIN_BASKETS,
             C.REFIT_BASKETS, C.EVAL_QUERIES, C.SERVING_ITEM_VOCAB, C.SERVING_SEQUENCES, C.SERVE_BASKETS,
             C.SERVING_HISTORIES, "user_features", "item_features", C.FEATURE_STATS, C.SERVED_METRICS),
}


def summary_stage(spark: SparkSession, config: Config) -> dict:
    """Every table's row count, the test metrics, and where the outputs are."""
    import json

    paths = {f"{layer}/{table}": config.table_path(layer, table) for layer, tables in LAYERS.items() for table in tables}
    paths["recommendations"] = config.recommendations_path
    paths.update({name: vector_table_path(config, name) for name in (USER_VECTORS, ITEM_VECTORS, SIMILAR_ITEMS)})
    summary = {name: f"{row_count(spark, path):>12,} rows  {path}" for name, path in paths.items()
               if table_exists(spark, path)}
    metrics_file = config.reports_dir / "metrics.json"
    if metrics_file.exists():
        report = json.loads(metrics_file.read_text())
        for model, metrics in report["models"].items():
            summary[f"test {model}"] = (f"HR@{report['k']}={metrics['hit_rate_at_k']:.4f} "
                                        f"NDCG@{report['k']}={metrics['ndcg_at_k']:.4f}")
        summary["report"] = str(config.reports_dir / report[C.RUN_ID])
    for model in config.train.models:
        tested, served = config.fitted_model_dir(model), config.served_model_dir(model)
        summary[f"model {model}"] = str(tested) if tested == served else f"tested {tested}, served {served}"
    return summary


# The stages in pipeline order (``make run`` and jobs/pipeline.py run them all in one application).
STAGES: dict[str, StageFn] = {
    "ingest": ingest_stage,
    "prepare": prepare_stage,
    "features": features_stage,
    "train": train_stage,
    "evaluate": evaluate_stage,
    "score": score_stage,
    "summary": summary_stage,
}
# Stages that print their own progress (training: rank 0's epoch lines) get no heartbeat.
OWN_PROGRESS = ("train",)


def select_stages(stages: Sequence[str] | None = None, *, start: str | None = None, stop: str | None = None) -> list[str]:
    """The stages to run, in pipeline order: ``stages`` (names, in any order), or every stage from
    ``start`` through ``stop`` (both optional: all by default). Unknown names raise ValueError."""
    names = list(STAGES)
    for name in [*(stages or []), *(n for n in (start, stop) if n)]:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r} (stages: {', '.join(names)})")
    if stages:
        if start or stop:
            raise ValueError("give either the stages or a range (start / stop), not both")
        return [name for name in names if name in stages]
    first = names.index(start) if start else 0
    last = names.index(stop) if stop else len(names) - 1
    if first > last:
        raise ValueError(f"stage {start!r} comes after {stop!r} (order: {', '.join(names)})")
    return names[first:last + 1]


def run_pipeline(spark: SparkSession, config: Config, stages: Sequence[str] | None = None,
                 bodies: Mapping[str, StageFn] | None = None) -> dict[str, dict]:
    """Runs ``stages`` (default: all, in pipeline order) one after another on the same session, each
    with its start line, heartbeat and summary, releasing cached data between stages; closes with
    each stage's time. ``bodies`` replaces stage functions by name (a test's own ingest sources).
    Returns each stage's summary."""
    bodies = {**STAGES, **(bodies or {})}
    summaries: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    for stage in select_stages(stages):
        summaries[stage], seconds[stage] = run_stage(spark, config, stage, bodies[stage],
                                                     heartbeat=stage not in OWN_PROGRESS)
        release_cached(spark)
    print(f"== recspark pipeline ({config.run_name}) done in {sum(seconds.values()):.1f} s: "
          + ", ".join(f"{stage} {value:.1f} s" for stage, value in seconds.items()), flush=True)
    return summaries
