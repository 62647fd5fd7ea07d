"""Evaluation: every model and baseline on the same held-out test split, in the same run.

Protocol: full ranking over every item of the vocabulary by default; with
``evaluate.exclude_seen`` the items the user interacted with before the test period are removed
from every model's ranking alike. ``evaluate.sampled_negatives = n`` switches the metrics to the
sampled protocol of :mod:`recspark.evaluation.sampled`, labelled SAMPLED in every output. Every
model's top-K lists are kept in the Delta table ``evaluation/predictions`` keyed by the original
user id, so anyone can recompute the (full-ranking) metrics.

Baselines: most popular (all time, and over the last ``recent_days`` of training), item-item
co-occurrence, "buy again" (the user's own most frequent items) and TIFU-KNN (decayed basket
frequencies mixed with similar users', :mod:`recspark.evaluation.tifu_knn`), both only when seen
items may be recommended, i.e. without ``exclude_seen``, and ALS with rank and regularisation
chosen on the validation split (or by cross-validation with ``evaluate.cross_validate``), then
refitted on train + validation. TIFU-KNN's settings are chosen on validation as ALS's are; its test
lists use the baskets of train + validation.

Every model's top-K is also split into repeat and explore (:mod:`recspark.evaluation.repeat_explore`):
recall on the held-out items the user had before, recall on the new ones, and the share of re-buys.
"""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Sequence

from pyspark import Broadcast
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.calibration import measure_on_test, plot_reliability, report_section
from recspark.config import Config
from recspark.evaluation import sampled as S
from recspark.evaluation import tifu_knn as T
from recspark.evaluation.baselines import (
    als_top_k, cooccurrence_scores, fit_als, item_cooccurrence, most_popular, recent_popular, recent_popularity,
    repeat_purchase, repeat_purchase_scores, train_interactions,
)
from recspark.evaluation.beyond import beyond_accuracy_by_group
from recspark.evaluation.probability import classification_lines, probability_report
from recspark.evaluation.ranking import ranking_metrics_by_group
from recspark.evaluation.repeat_explore import repeat_explore_by_group
from recspark.evaluation.tuning import cross_validate_als, tifu_grid, tune_als_on_validation, tune_tifu_on_validation
from recspark.pipeline.features import SEQUENCES
from recspark.pipeline.item_features import ITEM_FEATURES
from recspark.pipeline.prepare import IDENTITY_MAP, RAW_USER_ID
from recspark.pipeline.privacy import broadcast_key, decrypt_id, identity_map_key
from recspark.scoring import ranked_list, recommend, require_model_inputs
from recspark.utils.delta import read_table, replace_rows, table_exists
from recspark.utils.jobs import write_json

KEPT_K = 20  # predictions kept for audit: at least the top 20 of every model
REPORT_KS = (5, 10, 20)
BASELINES = C.BASELINES  # report order; evaluate.baselines chooses among them
POPULAR, RECENT_POPULAR, COOCCURRENCE, ALS_NAME, REPEAT, TIFU = BASELINES
# Baselines built on the user's own items: reported only when seen items may be recommended.
REPEAT_BASELINES = (REPEAT, TIFU)
# The history test queries condition on: everything before the test period (as ALS's refit).
TEST_HISTORY_SPLITS = ("train", C.VALIDATION)


def baseline_names(exclude_seen: bool, wanted: Sequence[str] = BASELINES) -> tuple[str, ...]:
    """The baselines of ``wanted`` (``evaluate.baselines``) reported under ``exclude_seen``, in
    report order: "buy again" recommends only seen items (then fills with popular ones), so with
    seen items excluded it would be most_popular under another name; TIFU-KNN is a re-buy baseline
    of the same kind (its strength is the user's own decayed frequencies), reported beside it."""
    return tuple(name for name in BASELINES
                 if name in wanted and not (exclude_seen and name in REPEAT_BASELINES))


def tifu_settings(config: Config) -> dict:
    """TIFU-KNN's grid and similarity pruning, from the ``evaluate.tifu_*`` keys."""
    ev = config.evaluate
    return {"vector_settings": [tuple(s) for s in ev.tifu_vector_settings], "neighbours": list(ev.tifu_neighbours),
            "alphas": list(ev.tifu_alphas), "similarity_items": ev.tifu_similarity_items}


def choose_tifu(sequences: DataFrame, vocab: DataFrame, eval_queries: DataFrame, config: Config) -> dict:
    """TIFU-KNN's group count, decays, neighbours and alpha: best validation NDCG@k over the grid, or
    the grid's only point without a validation pass."""
    ev = config.evaluate
    settings = tifu_settings(config)
    grid = tifu_grid(settings["vector_settings"], settings["neighbours"], settings["alphas"])
    refit = "chosen parameters; user vectors and neighbours from the train + validation baskets, scored on test"
    if len(grid) == 1:
        # Nothing to choose: the validation pass would only report the point's validation score, and
        # on Complete Journey it is about 2 of evaluate's 5 minutes (results/completejourney-20261203-s18).
        return {"selection": "none (one configured point)", "chosen_by": "configuration", "chosen": grid[0],
                "grid": [], "build_seconds": [], "similarity_items": settings["similarity_items"], "seconds": 0.0,
                "refit": refit}
    validation = eval_queries.filter(F.col(C.SPLIT) == C.VALIDATION)
    started = time.perf_counter()
    tuning = tune_tifu_on_validation(sequences, vocab, validation, ev.k, ev.exclude_seen, **settings,
                                     first_item_idx=config.features.first_item_idx)
    tuning.update({"chosen_by": "validation", "similarity_items": settings["similarity_items"],
                   "seconds": round(time.perf_counter() - started, 1), "refit": refit})
    return tuning


def tifu_test_weights(sequences: DataFrame, queries: DataFrame, tuning: dict, config: Config,
                      k: int) -> tuple[DataFrame, DataFrame, list[DataFrame]]:
    """The chosen TIFU-KNN's own and neighbour weights for the test queries, from the baskets before
    the test period (train + validation, as ALS's refit): (all of them, for the sampled protocol's
    candidates; those that can reach a top ``k``, for the full-ranking lists; the persisted
    frames, which the caller unpersists). Vectors and neighbours are persisted because both weight
    sets read them; the uncut weights are recomputed from them only when the sampled protocol runs."""
    chosen = tuning["chosen"]
    baskets = T.history_baskets(sequences, TEST_HISTORY_SPLITS, first_item_idx=config.features.first_item_idx)
    vectors = T.user_vectors(baskets, chosen["group_count"], chosen["within_decay"], chosen["group_decay"]).persist()
    near = T.user_neighbours(vectors, queries, chosen["neighbours"], tuning["similarity_items"]).persist()
    weights = T.own_and_neighbour_weights(vectors, near, queries, chosen["neighbours"])
    listed = (weights if config.evaluate.exclude_seen else
              T.own_and_neighbour_weights(vectors, near, queries, chosen["neighbours"], reachable=(k, chosen["alpha"]))
              ).persist()
    return weights, listed, [listed, vectors, near]


def model_run(config: Config, model: str, served: bool = False) -> dict:
    """The train stage's record of ``model`` as tested (its refit's when there is one), or with
    ``served`` as served (its serving fit's when there is one): run id, table versions,
    configuration, MLflow version."""
    path = (config.served_model_dir(model) if served else config.fitted_model_dir(model)) / "run.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the train stage first")
    return json.loads(path.read_text())


def with_original_user_id(df: DataFrame, identity: DataFrame, key: bytes | Broadcast) -> DataFrame:
    """Pseudonym -> the shop's own user id; only final outputs (predictions, recommendations) do this.

    The identity map holds the raw ids encrypted (``prepare.identity_map``): only the rows of the
    users in ``df`` are decrypted, with ``key`` (``privacy.identity_map_key``), a broadcast of it."""
    if dict(identity.dtypes)[RAW_USER_ID] == "string":  # an identity map written before encryption
        raise ValueError("bronze identity_map holds raw user ids in plain text (written by a recspark before "
                         "they were encrypted): run the prepare stage, which encrypts it in place")
    users = df.select(C.USER_ID).distinct()
    raw = (identity.join(users, C.USER_ID, "left_semi")
           .select(C.USER_ID, decrypt_id(RAW_USER_ID, C.USER_ID, key).alias(RAW_USER_ID)))
    return df.join(raw, C.USER_ID).drop(C.USER_ID).withColumnRenamed(RAW_USER_ID, C.USER_ID)


def item_categories(spark: SparkSession, config: Config) -> DataFrame | None:
    """(item_id, category) for intra-list diversity: gold item_features, else silver items, else None."""
    for path in (config.table_path(C.GOLD, ITEM_FEATURES), config.table_path(C.SILVER, C.ITEMS)):
        if table_exists(spark, path):
            return read_table(spark, path).select(C.ITEM_ID, C.CATEGORY)
    return None


def choose_als(sequences: DataFrame, vocab: DataFrame, eval_queries: DataFrame, config: Config) -> dict:
    """ALS rank and reg_param: best validation NDCG@k over the grids, or, with
    ``evaluate.cross_validate``, best mean NDCG@k over ``cv_folds`` folds (also reported per grid point)."""
    ev = config.evaluate
    params = dict(ranks=ev.als_ranks, reg_params=ev.als_reg_params, max_iter=ev.als_max_iter, alpha=ev.als_alpha,
                  seed=config.train.seed, first_item_idx=config.features.first_item_idx)
    validation = eval_queries.filter(F.col(C.SPLIT) == C.VALIDATION)
    tuning = tune_als_on_validation(sequences, vocab, validation, ev.k, ev.exclude_seen, **params)
    tuning["cross_validation"] = None
    if ev.cross_validate:
        cv = cross_validate_als(sequences, vocab, eval_queries, ev.k, ev.exclude_seen, scheme=ev.cv_scheme,
                                folds=ev.cv_folds, **params)
        tuning["cross_validation"] = cv
        tuning["chosen"] = cv["chosen"]
        tuning["chosen_by"] = "cross_validation"
    else:
        tuning["chosen_by"] = "validation"
    tuning["refit"] = "chosen parameters refitted on train + validation, scored on test"
    return tuning


def evaluate(spark: SparkSession, config: Config) -> dict:
    started = time.perf_counter()
    runs = {model: model_run(config, model) for model in config.train.models}
    run = runs[config.train.models[0]]  # models trained by one train stage share its run id
    ev = config.evaluate
    k = ev.k
    kept = max(KEPT_K, k)
    eval_queries = read_table(spark, config.table_path(C.GOLD, C.EVAL_QUERIES))
    queries = eval_queries.filter(F.col(C.SPLIT) == C.TEST)
    vocab = read_table(spark, config.table_path(C.GOLD, C.ITEM_VOCAB))
    sequences = read_table(spark, config.table_path(C.GOLD, SEQUENCES))

    names = baseline_names(ev.exclude_seen, ev.baselines)
    first_item_idx = config.features.first_item_idx
    als_tuning, als_model, als_users = None, None, None
    if ALS_NAME in names:  # its grid is the costliest baseline: only when asked for (make compare)
        als_tuning = choose_als(sequences, vocab, eval_queries, config)
        chosen = als_tuning["chosen"]
        als_model, als_users = fit_als(train_interactions(sequences, TEST_HISTORY_SPLITS, first_item_idx=first_item_idx),
                                       rank=chosen["rank"], reg_param=chosen["reg_param"], max_iter=ev.als_max_iter,
                                       alpha=ev.als_alpha, seed=config.train.seed)
    cooc = dict(window=ev.cooc_window, neighbours=ev.cooc_neighbours, recent_items=ev.cooc_recent_items,
                first_item_idx=first_item_idx)
    # A model's test lists come from its refit on train + validation when train made one (train.refit).
    fitted = {model: str(config.fitted_model_dir(model)) for model in config.train.models}
    rankings = {
        model: recommend(require_model_inputs(queries, fitted[model], C.EVAL_QUERIES), vocab,
                         fitted[model], kept, ev.exclude_seen, config.score.batch_size)
        for model in config.train.models
    }
    served = config.scoring_model
    calibrated = config.score.calibrate and served in fitted
    if calibrated:  # its lists are read twice (the predictions table, the calibration on test): scored once
        rankings[served] = rankings[served].persist()
    baselines = {
        POPULAR: lambda: most_popular(vocab, queries, kept, ev.exclude_seen),
        RECENT_POPULAR: lambda: recent_popular(sequences, vocab, queries, kept, ev.exclude_seen, ev.recent_days,
                                               first_item_idx=first_item_idx),
        COOCCURRENCE: lambda: item_cooccurrence(sequences, vocab, queries, kept, ev.exclude_seen, **cooc),
        ALS_NAME: lambda: als_top_k(als_model, als_users, vocab, queries, kept, ev.exclude_seen),
        REPEAT: lambda: repeat_purchase(sequences, vocab, queries, kept, splits=TEST_HISTORY_SPLITS,
                                        first_item_idx=first_item_idx),
    }
    rankings.update({name: baselines[name]() for name in names if name in baselines})
    tifu_tuning, tifu_cached, tifu = None, [], None
    if TIFU in names:
        tifu_tuning = choose_tifu(sequences, vocab, eval_queries, config)
        # Vectors and neighbours from the baskets before the test period (train + validation, as ALS's
        # refit), computed once: the full-ranking lists and the sampled protocol both read them.
        weights, listed, tifu_cached = tifu_test_weights(sequences, queries, tifu_tuning, config, kept)
        tifu = (weights, tifu_tuning["chosen"]["alpha"])
        rankings[TIFU] = T.top_k_with_fillers(T.top_candidates(listed, queries, tifu[1], ev.exclude_seen, kept),
                                              vocab, queries, kept, ev.exclude_seen)
    predictions = None
    for name, ranking in rankings.items():
        rows = ranking.select(F.lit(run[C.RUN_ID]).alias(C.RUN_ID), F.lit(name).alias(C.MODEL_NAME), C.USER_ID,
                              C.RANK, C.ITEM_ID, F.col(C.SCORE).cast("float").alias(C.SCORE))
        predictions = rows if predictions is None else predictions.unionByName(rows)
    predictions_path = config.predictions_path  # a Delta folder, or a catalog table with paths.catalog
    identity = read_table(spark, config.table_path(C.BRONZE, IDENTITY_MAP))
    identity_key = broadcast_key(identity_map_key(config.privacy.secret_scope))
    # Re-running the evaluation of one run replaces that run's rows and nothing else.
    replace_rows(with_original_user_id(predictions, identity, identity_key), predictions_path, C.RUN_ID, run[C.RUN_ID])
    print(f"evaluate: test lists of {', '.join(rankings)} written to {predictions_path} "
          f"({time.perf_counter() - started:.0f} s so far)", flush=True)

    stored = read_table(spark, predictions_path).filter(F.col(C.RUN_ID) == run[C.RUN_ID])
    # With the items each user had before the test period: the repeat / explore split needs them.
    relevant = with_original_user_id(queries.select(C.USER_ID, C.RELEVANT, C.SEEN), identity, identity_key)
    ks = sorted({*REPORT_KS, k})
    at_k: dict[int, dict[str, dict[str, float]]] = {kk: {} for kk in ks}
    if ev.sampled_negatives:
        at_k = sampled_evaluation(queries, vocab, sequences, config, ks, names, als_model, als_users, tifu)
    for cached in tifu_cached:
        cached.unpersist()
    categories = item_categories(spark, config)
    names_run = list(rankings)
    # Every model's metrics in one grouped job per family, not one job per model: the lists are grouped
    # by (model, user) once and every test user appears once per model.
    lists = stored.groupBy(C.MODEL_NAME, C.USER_ID).agg(ranked_list().alias(C.PREDICTION))
    # Users a model returned nothing for still count, with an empty list.
    scored = (relevant.withColumn(C.MODEL_NAME, F.explode(F.array(*[F.lit(name) for name in names_run])))
              .join(lists, [C.MODEL_NAME, C.USER_ID], "left")
              .withColumn(C.PREDICTION, F.coalesce(C.PREDICTION, F.array().cast("array<string>")))
              .persist())
    if not ev.sampled_negatives:
        for name, by_k in ranking_metrics_by_group(scored, ks, C.MODEL_NAME, groups=names_run).items():
            for kk, metrics in by_k.items():
                at_k[kk][name] = metrics
    repeat_explore = repeat_explore_by_group(scored, k, C.MODEL_NAME, groups=names_run)
    scored.unpersist()
    beyond = beyond_accuracy_by_group(stored.filter(F.col(C.RANK) <= k), vocab, categories, C.MODEL_NAME,
                                      groups=names_run)
    print(f"evaluate: metrics at k = {ks} measured ({time.perf_counter() - started:.0f} s so far)", flush=True)

    full = "full ranking over all items" + ("; items seen before the test period excluded"
                                            if ev.exclude_seen else "; seen items allowed")
    report = {
        C.RUN_ID: run[C.RUN_ID],
        "dataset": config.run_name,
        "split": C.TEST,
        "k": k,
        "protocol": S.protocol_label(ev.sampled_negatives, config.train.seed, ev.exclude_seen)
        if ev.sampled_negatives else full,
        "sampled_negatives": ev.sampled_negatives,
        "users": relevant.count(),
        "catalogue_items": vocab.count(),
        "models": at_k[k],
        "at_k": {str(kk): value for kk, value in at_k.items()},
        "beyond_accuracy": beyond,
        "beyond_accuracy_protocol": f"top {k} of the full-ranking lists in the predictions table",
        "repeat_explore": repeat_explore,
        "repeat_explore_protocol": (f"top {k} of the full-ranking lists; repeat = held-out items the user had "
                                    "before the test period (train + validation), explore = the others "
                                    "(Li et al., ACM TOIS 2023)"),
        # What each ranker was fitted on before the test period: the learned models' refit (or not), and
        # the baselines, which all read the training and validation periods.
        "fit_on": {**{model: C.FIT_ON_REFIT if Path(fitted[model]) != config.model_dir(model) else C.FIT_ON_TRAIN
                      for model in config.train.models},
                   **{name: C.FIT_ON_REFIT for name in rankings if name not in fitted}},
        "als_tuning": als_tuning,
        "tifu_knn_tuning": tifu_tuning,
        "training": training_histories(config),
        # Probability models (the DNN): sampled (user, item) pairs, threshold from validation; None without one.
        "classification": probability_report(spark, config, eval_queries, vocab),
        "predictions_table": predictions_path,
    }
    run_dir = config.reports_dir / run[C.RUN_ID]
    # The served model's confidence on its own test lists above: the only read of the test split
    # for the calibration (its map is fitted on validation).
    calibration = None
    if calibrated:
        calibration = measure_on_test(spark, config, served, runs[served].get(C.RUN_ID), rankings[served], queries)
        rankings[served].unpersist()
    report["calibration"] = None if calibration is None else {"model": served, **calibration.summary()}
    plots = {"metrics": plot_metrics(report, run_dir / "metrics.png"),
             "metrics_by_k": plot_metrics_by_k(report, run_dir / "metrics_by_k.png"),
             "accuracy_vs_coverage": plot_accuracy_vs_coverage(report, run_dir / "accuracy_coverage.png"),
             "repeat_explore": plot_repeat_explore(report, run_dir / "repeat_explore.png"),
             "training_curves": plot_training_curves(report, run_dir / "training_curves.png"),
             "reliability": (plot_reliability(calibration, run_dir / f"reliability_{served}.png",
                                              f"{served}: P(bought in the next period), isotonic on validation")
                             if calibration is not None else None)}
    report["plots"] = {name: path.name for name, path in plots.items() if path is not None}
    report["evaluation_seconds"] = round(time.perf_counter() - started, 1)
    report["mlflow"] = "pending"
    files = [write_json(run_dir / "metrics.json", report), write_report_md(report, run_dir / "report.md"),
             *(run_dir / name for name in report["plots"].values())]
    report["mlflow"] = log_to_mlflow(config, report, run_dir, files)
    # Written again with where MLflow has them (the logged copies say "pending").
    write_json(run_dir / "metrics.json", report)
    write_json(config.reports_dir / "metrics.json", report)
    write_report_md(report, run_dir / "report.md")
    return report


def sampled_evaluation(queries: DataFrame, vocab: DataFrame, sequences: DataFrame, config: Config, ks: list[int],
                       names: Sequence[str], als_model: object, als_users: DataFrame | None,
                       tifu: tuple[DataFrame, float] | None = None) -> dict[int, dict[str, dict[str, float]]]:
    """``{k: {model: metrics}}`` under the sampled-negatives protocol (see :mod:`recspark.evaluation.sampled`)
    for the learned models and the baselines ``names``; TIFU-KNN when ``tifu`` = (its test weights,
    :func:`tifu_test_weights`, and the chosen alpha) is given."""
    ev = config.evaluate
    candidates = S.sampled_candidates(queries, vocab, ev.sampled_negatives, ev.exclude_seen, config.train.seed).persist()
    ids = vocab.select(C.ITEM_ID, C.ITEM_IDX, C.TRAIN_COUNT)
    total = float(vocab.agg(F.sum(C.TRAIN_COUNT)).first()[0] or 0) + 1.0
    first_item_idx = config.features.first_item_idx

    def recent_scores() -> DataFrame:
        recent = recent_popularity(sequences, vocab, ev.recent_days, first_item_idx=first_item_idx).join(ids, C.ITEM_ID)
        # Recent count first, all-time count as the tie-break, as in the full-ranking list.
        return S.item_scores(candidates, recent.select(C.ITEM_IDX, (F.col(C.SCORE) + F.col("_tiebreak") / total)
                                                       .alias(C.SCORE)))

    def cooc_scores() -> DataFrame:
        cooc = cooccurrence_scores(sequences, queries, ev.exclude_seen, window=ev.cooc_window,
                                   neighbours=ev.cooc_neighbours, recent_items=ev.cooc_recent_items,
                                   first_item_idx=first_item_idx)
        # Co-occurrence ties (and items without any) are ordered by popularity in the full ranking; the
        # fraction count / (total + 1) < 1 does the same here without changing the order of the sums.
        return S.user_item_scores(candidates, cooc.withColumnRenamed("_cooc", C.SCORE)).join(
            F.broadcast(ids), C.ITEM_IDX).select(C.USER_ID, C.ITEM_IDX,
                                                 (F.col(C.SCORE) + F.col(C.TRAIN_COUNT) / total).alias(C.SCORE))

    def repeat_scores() -> DataFrame:
        # Own items score count + 1 + recency (> 1), the rest count / (total + 1) (< 1): the
        # full-ranking order of own items first, then popular fillers.
        own = repeat_purchase_scores(sequences, queries, TEST_HISTORY_SPLITS, first_item_idx=first_item_idx)
        return (candidates.select(C.USER_ID, F.explode(S.CANDIDATES).alias(C.ITEM_IDX))
                .join(F.broadcast(ids), C.ITEM_IDX)
                .join(own.withColumnRenamed(C.SCORE, "_own"), [C.USER_ID, C.ITEM_IDX], "left")
                .select(C.USER_ID, C.ITEM_IDX, F.coalesce("_own", F.col(C.TRAIN_COUNT) / total).alias(C.SCORE)))

    baselines = {
        POPULAR: lambda: S.item_scores(candidates, ids.select(C.ITEM_IDX, F.col(C.TRAIN_COUNT).cast("double")
                                                              .alias(C.SCORE))),
        RECENT_POPULAR: recent_scores,
        COOCCURRENCE: cooc_scores,
        ALS_NAME: lambda: S.als_scores(candidates, als_model, als_users),
        REPEAT: repeat_scores,
    }
    scores = {model: S.keras_scores(candidates, str(config.fitted_model_dir(model))) for model in config.train.models}
    scores.update({name: baselines[name]() for name in names if name in baselines})
    if tifu is not None:
        # Scored items p + 1 (> 1), the rest count / (total + 1) (< 1): the full-ranking order of
        # TIFU-KNN's items first, then popular fillers.
        p = T.predicted_scores(tifu[0], queries, tifu[1], ev.exclude_seen).withColumnRenamed(C.SCORE, "_p")
        scores[TIFU] = (candidates.select(C.USER_ID, F.explode(S.CANDIDATES).alias(C.ITEM_IDX))
                        .join(F.broadcast(ids), C.ITEM_IDX)
                        .join(p, [C.USER_ID, C.ITEM_IDX], "left")
                        .select(C.USER_ID, C.ITEM_IDX,
                                F.coalesce(F.col("_p") + 1.0, F.col(C.TRAIN_COUNT) / total).alias(C.SCORE)))
    at_k: dict[int, dict[str, dict[str, float]]] = {kk: {} for kk in ks}
    for name, model_scores in scores.items():
        for kk, metrics in S.sampled_metrics(candidates, model_scores, ks).items():
            at_k[kk][name] = metrics
    candidates.unpersist()
    return at_k


def training_histories(config: Config) -> dict[str, dict]:
    """Per trained model, the per-epoch ``loss_history`` (and ``val_ndcg_history`` when the model
    recorded one) from its ``model_meta.json``; models without a meta file are left out. With
    ``train.privacy``, also ``privacy``: the spent budget of the export that is tested (the refit's
    when there is one)."""
    histories = {}
    for model in config.train.models:
        path = config.model_dir(model) / "model_meta.json"
        if path.exists():
            meta = json.loads(path.read_text())
            histories[model] = {key: meta[key] for key in ("loss_history", "val_ndcg_history") if meta.get(key)}
            tested = config.fitted_model_dir(model) / "model_meta.json"
            privacy = json.loads(tested.read_text()).get("privacy") if tested.exists() else None
            if privacy:
                histories[model]["privacy"] = privacy
    return histories


def privacy_lines(report: dict) -> list[str]:
    """One line per model trained with ``train.privacy``: its spent (epsilon, delta) and how; nothing
    when no model was (a run without DP reads as before)."""
    lines = []
    for model, history in report.get("training", {}).items():
        dp = history.get("privacy")
        if dp:
            lines.append(f"- {model}: (epsilon={dp['epsilon']}, delta={dp['delta']:.3g}) user-level DP-SGD, "
                         f"{dp['sampling']} sampling q={dp['sampling_rate']:.4g} of {dp['num_users']:,} users, "
                         f"noise multiplier {dp['noise_multiplier']}, clip norm {dp['clip_norm']}, "
                         f"{dp['steps']} steps ({dp['accountant'].upper()} accountant)")
    return ["", "Differential privacy of the tested models (train.privacy):", "", *lines] if lines else []


def log_to_mlflow(config: Config, report: dict, run_dir: Path, files: list[Path]) -> str:
    """Logs the metrics and the report's files to MLflow (see :mod:`recspark.evaluation.mlflow_log`)
    when ``recspark.tracking`` is there. A tracking failure is reported in metrics.json and
    report.md rather than losing the evaluation, which is complete without it."""
    if importlib.util.find_spec("recspark.tracking") is None:
        return "not logged: recspark.tracking is not available"
    from recspark.evaluation.mlflow_log import log_evaluation

    try:
        return "logged: " + log_evaluation(config, report, run_dir, files)
    except Exception as error:  # noqa: BLE001 - recorded in the report, printed
        print(f"WARNING: evaluation not logged to MLflow: {error!r}")
        return f"NOT logged, MLflow failed: {error!r}"[:500]


def _label(report: dict) -> str:
    """'SAMPLED' in front of anything showing metrics computed with sampled negatives."""
    return f"SAMPLED ({report['sampled_negatives']} negatives) " if report.get("sampled_negatives") else ""


def write_report_md(report: dict, path: Path) -> Path:
    """One table of every model x metric at every K, beyond accuracy, the ALS tuning, the plots."""
    ks = list(report["at_k"])
    models = list(report["models"])
    metric_names = [m for m in next(iter(report["models"].values())) if m != "mean_average_precision"]
    has_map = "mean_average_precision" in next(iter(report["models"].values()))
    lines = [f"# {report['dataset']}: {_label(report)}evaluation of run {report[C.RUN_ID]}", "",
             f"Test split, {report['users']:,} users, {report['catalogue_items']:,} items; {report['protocol']}.", ""]
    if report.get("fit_on"):
        lines += ["Fitted on, before the test period: " + "; ".join(f"{name} {fit}" for name, fit in report["fit_on"].items())
                  + " (a learned model's refit keeps the epochs validation chose).", ""]
    if report.get("sampled_negatives"):
        lines += [f"**Metrics below are SAMPLED: each relevant item is ranked against {report['sampled_negatives']} "
                  "sampled negatives, not the full catalogue; they are not comparable with full-ranking numbers.**", ""]
    header = ["model"] + [f"{m.replace('_at_k', '')}@{kk}" for m in metric_names for kk in ks]
    header += ["MAP (full list)"] if has_map else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in models:
        cells = [f"{report['at_k'][kk][model][m]:.4f}" for m in metric_names for kk in ks]
        cells += [f"{report['models'][model]['mean_average_precision']:.4f}"] if has_map else []
        lines.append("| " + " | ".join([model, *cells]) + " |")
    lines += ["", f"Beyond accuracy ({report.get('beyond_accuracy_protocol', 'top K')}; novelty = mean -log2 p(item) "
              "in bits, p from training counts; diversity = share of list pairs of different categories):", "",
              "| model | catalogue coverage | relative popularity | novelty | intra-list diversity |", "|---|---|---|---|---|"]
    for model, values in report["beyond_accuracy"].items():
        lines.append(f"| {model} | {values['catalogue_coverage']:.4f} | {values['relative_popularity']:.2f} | "
                     f"{values['novelty']:.2f} | {values['intra_list_diversity']:.4f} |")
    lines += repeat_explore_lines(report)
    lines += als_tuning_lines(report)
    lines += tifu_tuning_lines(report)
    lines += classification_lines(report.get("classification"))
    lines += privacy_lines(report)
    if report.get("calibration"):
        lines += report_section(report["calibration"]["model"], report["calibration"],
                                report.get("plots", {}).get("reliability"))
    lines += [""] + [f"![{name}]({file})" for name, file in report.get("plots", {}).items()] + [""]
    if "training_curves" not in report.get("plots", {}):
        lines += ["No training curves: no model_meta.json with a loss history was found.", ""]
    lines += [f"Predictions for audit: `{report['predictions_table']}` (run_id = `{report[C.RUN_ID]}`; full-ranking "
              f"top {max(KEPT_K, report['k'])} lists).", "",
              f"Evaluation took {report.get('evaluation_seconds', float('nan')):.0f} s. MLflow: {report.get('mlflow', 'n/a')}.", ""]
    path.write_text("\n".join(lines))
    return path


def als_tuning_lines(report: dict) -> list[str]:
    """The ALS grid on validation and, when run, the cross-validation mean +- std per grid point."""
    tuning = report.get("als_tuning")
    if not tuning:
        return []
    chosen = tuning["chosen"]
    lines = ["", f"ALS tuning ({tuning['selection']}; chosen by {tuning['chosen_by']}: rank {chosen['rank']}, "
             f"reg_param {chosen['reg_param']}; {tuning['refit']}):", "",
             "| rank | reg_param | validation NDCG@k | validation HR@k | fit + score (s) |", "|---|---|---|---|---|"]
    for point in tuning["grid"]:
        lines.append(f"| {point['rank']} | {point['reg_param']} | {point['validation']['ndcg_at_k']:.4f} | "
                     f"{point['validation']['hit_rate_at_k']:.4f} | {point['seconds']} |")
    cv = tuning.get("cross_validation")
    if cv:
        lines += ["", f"Cross-validation ({cv['selection']}, {cv['seconds']} s), mean +- std over folds:", "",
                  "| rank | reg_param | NDCG@k | HR@k | recall@k | MRR@k |", "|---|---|---|---|---|---|"]
        for point in cv["grid"]:
            cells = [f"{point['mean'][m]:.4f} +- {point['std'][m]:.4f}"
                     for m in ("ndcg_at_k", "hit_rate_at_k", "recall_at_k", "mrr_at_k")]
            lines.append("| " + " | ".join([str(point["rank"]), str(point["reg_param"]), *cells]) + " |")
    else:
        lines += ["", "Cross-validation not run (`--set evaluate.cross_validate=true` runs it, "
                  "cv_folds x the grid's ALS fits)."]
    return lines


def repeat_explore_lines(report: dict) -> list[str]:
    """The repeat / explore table: per model, recall on re-bought and on new held-out items, the
    re-buy share of the lists, and how many users each recall averages over."""
    values = report.get("repeat_explore")
    if not values:
        return []
    k = report["k"]
    lines = ["", f"Repeat / explore ({report.get('repeat_explore_protocol', f'top {k}')}): recall on the held-out "
             "items the user had before (users with at least one), on the new ones (users with at least one), "
             "and the share of each list made of items the user had before:", "",
             f"| model | recall_rep@{k} | recall_expl@{k} | repeat share@{k} | users (rep) | users (expl) |",
             "|---|---|---|---|---|---|"]
    for model, v in values.items():
        lines.append(f"| {model} | {v['recall_rep']:.4f} | {v['recall_expl']:.4f} | {v['repeat_share']:.4f} | "
                     f"{v['users_rep']:,} | {v['users_expl']:,} |")
    return lines


def tifu_tuning_lines(report: dict) -> list[str]:
    """TIFU-KNN's validation grid and its choice (nothing when TIFU-KNN was not run)."""
    tuning = report.get("tifu_knn_tuning")
    if not tuning:
        return []
    c = tuning["chosen"]
    pruning = ("whole vectors" if tuning.get("similarity_items") is None
               else f"each user's {tuning['similarity_items']} heaviest items")
    lines = ["", f"TIFU-KNN tuning ({tuning['selection']}; chosen by {tuning['chosen_by']}: {c['group_count']} groups, "
             f"within-group decay {c['within_decay']}, group decay {c['group_decay']}, {c['neighbours']} neighbours, "
             f"alpha {c['alpha']}; similarity on {pruning}; {tuning['refit']}; {tuning.get('seconds', 'n/a')} s)"
             + (":" if tuning["grid"] else ".")]
    if tuning["grid"]:
        lines += ["", "| groups | within decay | group decay | neighbours | alpha | validation NDCG@k | validation HR@k | "
                  "rank + score (s) |", "|---|---|---|---|---|---|---|---|"]
    for p in tuning["grid"]:
        lines.append(f"| {p['group_count']} | {p['within_decay']} | {p['group_decay']} | {p['neighbours']} | "
                     f"{p['alpha']} | {p['validation']['ndcg_at_k']:.4f} | {p['validation']['hit_rate_at_k']:.4f} | "
                     f"{p['seconds']} |")
    builds = ", ".join(f"{b['group_count']} / {b['within_decay']} / {b['group_decay']}: {b['seconds']} s"
                       for b in tuning.get("build_seconds", []))
    if builds:
        lines += ["", f"Vectors and neighbours per setting (groups / within / group decay): {builds}."]
    return lines


def plot_repeat_explore(report: dict, path: Path) -> Path | None:
    """Recall on re-bought items beside recall on new items, per model: where each model's hits come from."""
    values = report.get("repeat_explore")
    if not values:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(values)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(models) + 2), 4))
    width = 0.4
    for offset, (metric, label) in enumerate((("recall_rep", "recall on re-bought items (rep)"),
                                              ("recall_expl", "recall on new items (expl)"))):
        ax.bar([x + offset * width for x in range(len(models))], [values[m][metric] for m in models], width, label=label)
    ax.set_xticks([x + width / 2 for x in range(len(models))])
    ax.set_xticklabels(models, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel(f"recall@{report['k']}")
    ax.set_title(f"{report['dataset']}: repeat vs explore, top {report['k']}", fontsize=10)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_accuracy_vs_coverage(report: dict, path: Path) -> Path:
    """NDCG@k against catalogue coverage, one point per model: accuracy bought with a narrow catalogue?"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for model, metrics in report["models"].items():
        x, y = report["beyond_accuracy"][model]["catalogue_coverage"], metrics["ndcg_at_k"]
        ax.scatter([x], [y], s=40)
        ax.annotate(model, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"catalogue coverage (top {report['k']})")
    ax.set_ylabel(f"{_label(report)}NDCG@{report['k']}")
    ax.set_title(f"{report['dataset']}: accuracy vs coverage", fontsize=10)
    return save_figure(fig, path)


def plot_training_curves(report: dict, path: Path) -> Path | None:
    """Per-epoch training loss (and validation NDCG when recorded) of every trained model; None if
    no model recorded a loss history."""
    histories = {m: h for m, h in report.get("training", {}).items() if h.get("loss_history")}
    if not histories:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_val = any(h.get("val_ndcg_history") for h in histories.values())
    fig, axes = plt.subplots(1, 2 if with_val else 1, figsize=(9 if with_val else 5, 3.5), squeeze=False)
    for model, history in histories.items():
        losses = history["loss_history"]
        axes[0][0].plot(range(1, len(losses) + 1), losses, marker="o", label=model)
        if with_val and history.get("val_ndcg_history"):
            values = history["val_ndcg_history"]
            axes[0][1].plot(range(1, len(values) + 1), values, marker="o", label=model)
    axes[0][0].set_title("training loss", fontsize=10)
    if with_val:
        axes[0][1].set_title("validation NDCG@10", fontsize=10)
    for ax in axes[0]:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_metrics_by_k(report: dict, path: Path) -> Path:
    """HR and NDCG against K for every model: how the gap between models changes with list length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [int(kk) for kk in report["at_k"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, metric in zip(axes, ("hit_rate_at_k", "ndcg_at_k")):
        for model in report["models"]:
            ax.plot(ks, [report["at_k"][str(kk)][model][metric] for kk in ks], marker="o", label=model)
        ax.set_xlabel("K")
        ax.set_title(metric.replace("_at_k", "@K"))
        ax.set_xticks(ks)
    axes[0].legend()
    fig.suptitle(f"{report['dataset']}, test split {_label(report)}", fontsize=10)
    return save_figure(fig, path)


def plot_metrics(report: dict, path: Path) -> Path:
    """A grouped bar chart of every metric per model: the first thing a reader wants to see."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["models"])
    names = list(next(iter(report["models"].values())))
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        ax.bar([x + i * width for x in range(len(names))], [report["models"][model][n] for n in names], width, label=model)
    ax.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(names))])
    ax.set_xticklabels([n.replace("_at_k", f"@{report['k']}") for n in names], rotation=20)
    ax.set_title(f"{_label(report)}{report['dataset']} test split, {report['users']:,} users", fontsize=9)
    ax.legend()
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """Writes a finished matplotlib figure as PNG and frees it (figures otherwise pile up in memory)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
