"""The closed loop, replayed on real data (``make loop``, jobs/loop.py).

The last ``loop.cycles`` x ``loop.cycle_days`` days of the data set are held back. The loop keeps its
own world under ``<lakehouse>/<dataset>-loop`` (silver events known so far, gold, feedback, the
recommendations of every cycle) and ``<checkpoints>/<dataset>-loop/<variant>`` (one model per variant);
the data set's own tables are only read. Each cycle, at its cut time T:

1. **features** from the events known before T (a time split with both cuts at T: everything known
   trains; no validation period, so no early stopping: the epochs are the loop's);
2. **training**, per variant: ``warm`` starts from its previous model (``train.warm_start``: rows
   moved by item id) for ``loop.epochs``; ``full`` trains from scratch for ``loop.full_epochs``;
   ``frozen`` keeps the first model (scored through its own vocabulary, :mod:`recspark.vocabulary`).
   Before the first cycle one model is trained from scratch (``loop.initial_epochs``) for all three;
3. **serving**: the score stage writes each variant's lists for every user as its own run of the
   loop's recommendations table (``loop-c<cycle>-<variant>``), dismissals excluded as of T;
4. **reveal**: the cycle's real events [T, T + cycle_days) become, for the warm variant's lists (the
   served model), feedback: an impression per served row and a response for every purchase (or
   rating) of a shown item, with the event's own id, time, basket, quantity and price. The feedback
   file (Parquet, the shop's ids) is ingested like any feedback file (quarantine, run_log, MERGE),
   joined to its run and pseudonymised into silver feedback, and its responses become silver
   events; the cycle's other events enter silver events directly (the data set's own, already
   ingested and prepared). The known events after a cycle are exactly the data set's events up to
   T + cycle_days, half of them having come back as responses;
5. **metrics** per variant: hit rate and NDCG@K of each served list against the items the user bought
   (rated) in the cycle, coverage of the catalogue, training seconds; and the served-list metrics of
   the warm run (:mod:`recspark.served_metrics`).

Shown-and-ignored items (impressions without a response) reach training through gold
``train_baskets.ignored`` (:func:`recspark.pipeline.features.with_ignored`): a basket bought within
``feedback.ignored_days`` of a list carries that list's ignored items. The optional variant
``warm_ignored`` is ``warm`` with ``train.ignored_weight = loop.ignored_weight`` (the loss term of
:class:`recspark.models.repeatnet.RepeatNet`), so one replay measures whether those negatives help:
both variants see the same feedback (the warm lists' impressions), and each is scored against the
purchases of the week it was served for.

Results: ``reports/<dataset>/loop/loop.json``, ``loop.md`` (a table per cycle and variant) and
``loop.png``.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import math
import re
import shutil
import time
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import Config
from recspark.evaluation.ranking import HIT_RATE_AT_K, NDCG_AT_K, per_user_ranking_metrics
from recspark.feedback import CONVERSIONS, IMPRESSION, RESPONSE_EVENT_TYPES
from recspark.pipeline.prepare import IDENTITY_MAP
from recspark.pipeline.privacy import broadcast_key, pseudonym_key, pseudonymise
from recspark.scoring import ranked_list
from recspark.utils.delta import merge_into, overwrite_table, read_table, table_exists
from recspark.utils.jobs import short_duration, write_json

WARM, FROZEN, FULL, WARM_IGNORED = "warm", "frozen", "full", "warm_ignored"
# The event type each revealed event answers a shown item with (the inverse of RESPONSE_EVENT_TYPES).
EVENT_RESPONSES = {event: response for response, event in RESPONSE_EVENT_TYPES.items()}
REPORT_METRICS = ("hit_rate", "ndcg", "coverage", "train_seconds")


@dataclasses.dataclass
class CycleResult:
    """One variant's lists in one cycle, measured against the cycle's real purchases."""

    cycle: int
    variant: str
    run_id: str
    served_at: str
    users_served: int
    users_evaluated: int
    hit_rate: float
    ndcg: float
    coverage: float
    train_seconds: float
    warm_start: str | None = None
    # Training rows whose shown-and-ignored items the loss read (warm_ignored); None: not used.
    ignored_rows: int | None = None


def loop_root(config: Config) -> tuple[Path, Path]:
    """The loop's own lakehouse and checkpoints folders."""
    name = f"{config.run_name}-{C.LOOP_SUFFIX}"
    return Path(config.paths.lakehouse) / name, Path(config.paths.checkpoints) / name


def loop_schema(config: Config) -> str:
    """With paths.catalog, the loop's own schema: its replayed tables must never replace the data
    set's (a cycle rewrites silver events, gold and the recommendations)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{config.paths.schema}_{config.run_name}_{C.LOOP_SUFFIX}")


def loop_reports_dir(config: Config) -> Path:
    return config.reports_dir / "loop"


def cycle_config(config: Config, variant: str, cut: dt.datetime, *, run_id: str | None = None,
                 epochs: int | None = None, warm_start: bool = False) -> Config:
    """The configuration of one variant in the cycle cut at ``cut``: the loop's folders, a time split
    with both cuts at ``cut``, only the served model, its epochs, warm start or not, the run id."""
    lakehouse, checkpoints = loop_root(config)
    looped = copy.deepcopy(config)
    model = config.scoring_model
    looped.paths.lakehouse = str(lakehouse)
    looped.paths.checkpoints = str(checkpoints / variant)
    looped.paths.reports = str(loop_reports_dir(config) / "runs")
    if config.uses_catalog:
        looped.paths.schema = loop_schema(config)
    if looped.tracking.uri is None:  # every variant in the data set's own MLflow store
        from recspark.tracking import tracking_uri

        looped.tracking.uri = tracking_uri(config.tracking, config.paths.checkpoints)
    looped.tracking.experiment = f"{config.tracking.experiment}-loop"
    looped.tracking.registered_model = f"recspark-{config.run_name}-loop-{variant}-{model}"
    looped.features.split = "time"
    looped.features.validation_start = looped.features.test_start = cut.isoformat()
    looped.train.models = [model]
    looped.train.resume = False
    looped.train.warm_start = warm_start
    looped.train.refit = False  # no validation period: a refit would train on the same rows once more
    if epochs is not None:
        looped.train.per_model = {**looped.train.per_model, model: {**looped.train.per_model.get(model, {}),
                                                                    "epochs": epochs}}
    if variant == WARM_IGNORED:
        looped.train.per_model = {**looped.train.per_model, model: {**looped.train.per_model.get(model, {}),
                                                                    "ignored_weight": config.loop.ignored_weight}}
    looped.score.model = model
    looped.score.run_id = run_id
    looped.score.calibrate = False  # no validation period to fit it on
    looped.score.keep_runs = 0
    looped.feedback.as_of = cut.isoformat()
    return looped.validate()


def replay_window(spark: SparkSession, config: Config) -> tuple[dt.datetime, dt.datetime]:
    """(first cut, end): the held-back period is the ``cycles`` x ``cycle_days`` days that end at
    midnight after the data set's latest event (one aggregate)."""
    latest = read_table(spark, config.table_path(C.SILVER, C.EVENTS)).agg(F.max(C.EVENT_TS)).first()[0]
    end = dt.datetime.combine(latest.date(), dt.time()) + dt.timedelta(days=1)
    return end - dt.timedelta(days=config.loop.cycles * config.loop.cycle_days), end


def start_world(spark: SparkSession, config: Config, first_cut: dt.datetime) -> None:
    """A fresh loop: its folders emptied, silver events before the first cut, the catalogue, the
    users and the (encrypted) identity map copied from the data set's tables."""
    for folder in loop_root(config):
        shutil.rmtree(folder, ignore_errors=True)
    world = cycle_config(config, WARM, first_cut)
    if config.uses_catalog:  # the loop's own schema (loop_schema), never the data set's
        schema = f"{world.paths.catalog}.{world.paths.schema}"
        if spark.catalog.databaseExists(schema):
            for table in spark.catalog.listTables(schema):
                spark.sql(f"DROP TABLE IF EXISTS {schema}.{table.name}")
    events = read_table(spark, config.table_path(C.SILVER, C.EVENTS)).filter(F.col(C.EVENT_TS) < F.lit(first_cut))
    overwrite_table(events, world.table_path(C.SILVER, C.EVENTS))
    for layer, table in ((C.SILVER, C.ITEMS), (C.SILVER, C.USERS), (C.BRONZE, IDENTITY_MAP)):
        if table_exists(spark, config.table_path(layer, table)):
            overwrite_table(read_table(spark, config.table_path(layer, table)), world.table_path(layer, table))


def _train(spark: SparkSession, config: Config) -> tuple[float, str | None, int | None]:
    """Trains the served model with ``config``; its Horovod training seconds, warm-start origin and
    the rows whose shown-and-ignored items its loss read (None: not used)."""
    from recspark.stages import train_stage

    train_stage(spark, config)
    run = json.loads((config.model_dir(config.scoring_model) / "run.json").read_text())
    return float(run["seconds"]), run.get("warm_start_from"), (run.get("ignored_negatives") or {}).get("rows")


def served_lists(spark: SparkSession, config: Config, run_id: str, key) -> DataFrame:
    """The run's lists: user_id (the shop's), the pseudonym (``_pseudonym``, as prepare makes it), rank, item_id."""
    return (read_table(spark, config.recommendations_path).filter(F.col(C.RUN_ID) == run_id)
            .select(C.USER_ID, pseudonymise(C.USER_ID, key).alias("_pseudonym"), C.RANK, C.ITEM_ID))


def list_metrics(lists: DataFrame, bought: DataFrame, k: int, catalogue_size: int) -> dict:
    """Hit rate and NDCG@k of ``lists`` (_pseudonym, rank, item_id) over the users with a list and a
    purchase in ``bought`` (_pseudonym, item_id), as the evaluation defines them
    (:func:`recspark.evaluation.ranking.per_user_ranking_metrics`: binary gains, ideal = min(bought, k)),
    the users served, and the catalogue coverage of the lists. One aggregate row to the driver."""
    relevant = bought.groupBy("_pseudonym").agg(F.collect_set(C.ITEM_ID).alias(C.RELEVANT))
    ranked = lists.groupBy("_pseudonym").agg(ranked_list().alias(C.PREDICTION))
    evaluated = per_user_ranking_metrics(ranked.join(relevant, "_pseudonym"), k)
    row = evaluated.agg(F.count(F.lit(1)).alias("n"), F.avg(HIT_RATE_AT_K).alias("hr"),
                        F.avg(NDCG_AT_K).alias("ndcg")).first()
    served = lists.agg(F.count_distinct("_pseudonym").alias("users"), F.count_distinct(C.ITEM_ID).alias("items")).first()
    return {"users_served": int(served["users"]), "users_evaluated": int(row["n"]),
            "hit_rate": float(row["hr"] or 0.0), "ndcg": float(row["ndcg"] or 0.0),
            "coverage": served["items"] / catalogue_size if catalogue_size else math.nan}


def feedback_rows(lists: DataFrame, revealed: DataFrame, run_id: str, shown_at: dt.datetime) -> DataFrame:
    """The feedback file of one served run in the canonical feedback columns (the shop's user ids):
    an impression per served row, and a response per revealed event of a shown item, carrying the
    event's id (``feedback_id``), time, basket, quantity and price."""
    impressions = lists.select(
        F.sha2(F.concat_ws("#", F.lit(run_id), C.USER_ID, C.ITEM_ID, F.lit(IMPRESSION)), 256).alias(C.FEEDBACK_ID),
        C.USER_ID, C.ITEM_ID, F.lit(run_id).alias(C.RUN_ID), F.lit(IMPRESSION).alias(C.RESPONSE),
        F.lit(shown_at).cast("timestamp").alias(C.EVENT_TS), C.RANK, F.lit(None).cast("double").alias(C.QUANTITY),
        F.lit(None).cast("double").alias(C.PRICE), F.lit(None).cast("string").alias(C.SESSION_ID))
    responses_by_type = F.create_map(*[F.lit(x) for pair in EVENT_RESPONSES.items() for x in pair])
    shown = lists.select(F.col("_pseudonym"), F.col(C.USER_ID).alias("_shop_id"), F.col(C.ITEM_ID).alias("_item"),
                         F.col(C.RANK).alias("_rank"))
    answered = revealed.join(shown, (F.col(C.USER_ID) == F.col("_pseudonym")) & (F.col(C.ITEM_ID) == F.col("_item")))
    responses = answered.select(
        F.col(C.EVENT_ID).alias(C.FEEDBACK_ID), F.col("_shop_id").alias(C.USER_ID), C.ITEM_ID,
        F.lit(run_id).alias(C.RUN_ID), responses_by_type[F.col(C.EVENT_TYPE)].alias(C.RESPONSE), C.EVENT_TS,
        F.col("_rank").alias(C.RANK), C.QUANTITY, C.PRICE, C.SESSION_ID)
    return impressions.unionByName(responses)


def reveal(spark: SparkSession, config: Config, world: Config, lists: DataFrame, revealed: DataFrame, run_id: str,
           cut: dt.datetime, cycle: int) -> dict:
    """The cycle's events come back: as feedback on ``lists`` (ingested from a Parquet file like any
    feedback file) and, for the rest, as plain silver events. Returns the reconciliation and counts."""
    from recspark.stages import ingest_feedback_files, refresh_feedback

    folder = loop_root(config)[0] / "feedback" / f"cycle-{cycle:02d}"
    answerable = revealed.filter(F.col(C.EVENT_TYPE).isin(*EVENT_RESPONSES))
    # One file, as a shop would deliver it (a row per impression: thousands, not millions).
    feedback_rows(lists, answerable, run_id, cut).coalesce(1).write.mode("overwrite").parquet(str(folder))
    fed = dataclasses.replace(world, feedback=dataclasses.replace(world.feedback, path=str(folder)))
    log = ingest_feedback_files(spark, fed, f"{run_id}-feedback")
    # Every revealed event that is not a response to a shown item is a plain event.
    plain = revealed.join(answerable.join(lists.select(F.col("_pseudonym").alias(C.USER_ID), C.ITEM_ID),
                                          [C.USER_ID, C.ITEM_ID], "left_semi").select(C.EVENT_ID), C.EVENT_ID, "left_anti")
    inserted = merge_into(spark, plain, world.table_path(C.SILVER, C.EVENTS), [C.EVENT_ID])["numTargetRowsInserted"]
    summary = refresh_feedback(spark, fed)
    read, accepted, quarantined = (sum(row[name] for row in log) for name in ("rows_read", "rows_accepted",
                                                                             "rows_quarantined"))
    return {"feedback file": f"{read:,} rows read = {accepted:,} accepted + {quarantined:,} quarantined -> bronze feedback",
            "plain events": f"{inserted:,}", **summary}


def run_loop(spark: SparkSession, config: Config) -> dict:
    """The replay (module docstring): every cycle's features, training, lists, reveal and metrics;
    writes loop.json, loop.md and loop.png under ``reports/<dataset>/loop``. Returns the summary."""
    from recspark.pipeline.features import build_features
    from recspark.stages import run_pipeline, score_stage

    if not table_exists(spark, config.table_path(C.SILVER, C.EVENTS)):
        run_pipeline(spark, config, ["ingest", "prepare"])
    lc, model = config.loop, config.scoring_model
    variants = [v for v in (WARM, FROZEN, FULL, WARM_IGNORED) if v in lc.variants]
    first_cut, end = replay_window(spark, config)
    print(f"loop: {lc.cycles} cycles of {lc.cycle_days:g} days from {first_cut:%Y-%m-%d} to {end:%Y-%m-%d}; "
          f"model {model}; variants {', '.join(variants)}", flush=True)
    start_world(spark, config, first_cut)
    source = read_table(spark, config.table_path(C.SILVER, C.EVENTS))
    key = broadcast_key(pseudonym_key(config.privacy.secret_scope))
    k = config.score.k
    results: list[CycleResult] = []
    summary: dict = {}
    started = time.perf_counter()
    for cycle in range(lc.cycles):
        cut = first_cut + dt.timedelta(days=cycle * lc.cycle_days)
        world = cycle_config(config, WARM, cut)
        print(f"loop: cycle {cycle + 1}/{lc.cycles} at {cut:%Y-%m-%d %H:%M} "
              f"({short_duration(time.perf_counter() - started)} so far): features", flush=True)
        build_features(spark, world)
        # Per variant: what _train returns (training seconds, warm-start origin, rows with ignored items).
        trained: dict[str, tuple[float, str | None, int | None]] = {}
        if cycle == 0:
            trained[WARM] = _train(spark, cycle_config(config, WARM, cut, epochs=lc.initial_epochs))
            for variant in variants[1:]:  # the same first model for every variant
                target = cycle_config(config, variant, cut).model_dir(model)
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(world.model_dir(model), target)
                trained[variant] = (trained[WARM][0], None, None)
        else:
            for variant in variants:
                if variant == FROZEN:
                    trained[variant] = (0.0, None, None)
                    continue
                warm = variant in (WARM, WARM_IGNORED)
                print(f"loop: cycle {cycle + 1}: training {variant}", flush=True)
                trained[variant] = _train(spark, cycle_config(
                    config, variant, cut, warm_start=warm,
                    epochs=lc.epochs if warm else (lc.full_epochs or lc.initial_epochs)))
        revealed = source.filter((F.col(C.EVENT_TS) >= F.lit(cut))
                                 & (F.col(C.EVENT_TS) < F.lit(cut + dt.timedelta(days=lc.cycle_days))))
        revealed = revealed.persist()
        bought = revealed.filter(F.col(C.EVENT_TYPE).isin(*CONVERSIONS)).select(
            F.col(C.USER_ID).alias("_pseudonym"), C.ITEM_ID)
        catalogue = read_table(spark, world.table_path(C.GOLD, C.ITEM_VOCAB)).count()
        for variant in variants:
            run_id = f"loop-c{cycle}-{variant}"
            print(f"loop: cycle {cycle + 1}: serving {variant} as run {run_id}", flush=True)
            score_stage(spark, cycle_config(config, variant, cut, run_id=run_id))
            lists = served_lists(spark, world, run_id, key)
            seconds, origin, ignored_rows = trained[variant]
            results.append(CycleResult(cycle=cycle, variant=variant, run_id=run_id, served_at=cut.isoformat(),
                                       train_seconds=round(seconds, 1), warm_start=origin, ignored_rows=ignored_rows,
                                       **list_metrics(lists, bought, k, catalogue)))
            print(f"loop: cycle {cycle + 1} {variant}: HR@{k}={results[-1].hit_rate:.4f} NDCG@{k}={results[-1].ndcg:.4f} "
                  f"coverage={results[-1].coverage:.4f} over {results[-1].users_evaluated:,} buyers, "
                  f"training {results[-1].train_seconds:.0f} s"
                  + (f" ({results[-1].ignored_rows:,} rows with ignored items)" if results[-1].ignored_rows else ""),
                  flush=True)
        warm_lists = served_lists(spark, world, f"loop-c{cycle}-{WARM}", key).persist()
        for name, value in reveal(spark, config, world, warm_lists, revealed, f"loop-c{cycle}-{WARM}", cut, cycle).items():
            print(f"loop: cycle {cycle + 1} reveal: {name}: {value}", flush=True)
        warm_lists.unpersist()
        revealed.unpersist()
        # After every cycle: an interrupted replay keeps what it has measured.
        served = [row.asDict() for row in read_table(spark, world.table_path(C.GOLD, C.SERVED_METRICS))
                  .orderBy(C.RUN_ID).collect()]  # a row per cycle
        summary = write_loop_report(config, results, served, first_cut, end, time.perf_counter() - started)
    return summary


def write_loop_report(config: Config, results: list[CycleResult], served: list[dict], first_cut: dt.datetime,
                      end: dt.datetime, seconds: float) -> dict:
    """loop.json, loop.md and loop.png under ``reports/<dataset>/loop``; returns the summary lines."""
    folder = loop_reports_dir(config)
    k = config.score.k
    rows = [dataclasses.asdict(r) for r in results]
    write_json(folder / "loop.json", {"dataset": config.run_name, "model": config.scoring_model, "k": k,
                                      "first_cut": first_cut.isoformat(), "end": end.isoformat(),
                                      "loop": dataclasses.asdict(config.loop), "seconds": round(seconds, 1),
                                      "cycles": rows, "served_metrics": served})
    header = ["cycle", "served at", "variant", f"HR@{k}", f"NDCG@{k}", "coverage", "buyers", "training s"]
    lines = [f"# Closed loop on {config.run_name}: {config.loop.cycles} cycles of {config.loop.cycle_days:g} days",
             "", f"Model {config.scoring_model}; held back {first_cut:%Y-%m-%d} to {end:%Y-%m-%d}; warm: "
             f"{config.loop.epochs} epoch(s) per cycle from the previous model; full: "
             f"{config.loop.full_epochs or config.loop.initial_epochs or 'train.epochs'} epoch(s) from scratch; "
             "frozen: the first model"
             + (f"; warm_ignored: warm, with each basket's shown-and-ignored items as negatives (train.ignored_weight "
                f"{config.loop.ignored_weight:g})" if WARM_IGNORED in config.loop.variants else "")
             + ". Lists against the cycle's real purchases (ratings).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        lines.append(f"| {r.cycle + 1} | {r.served_at[:10]} | {r.variant} | {r.hit_rate:.4f} | {r.ndcg:.4f} | "
                     f"{r.coverage:.4f} | {r.users_evaluated:,} | {r.train_seconds:.0f} |")
    if served:
        lines += ["", "Served-list metrics of the warm lists (gold served_metrics):", "",
                  "| run | impressions | users | CTR@K | conversion@K | revenue | coverage | re-buy share |",
                  "|---|---|---|---|---|---|---|---|"]
        fmt = lambda v: "-" if v is None else f"{v:.4f}"
        lines += [f"| {s[C.RUN_ID]} | {s['impressions']:,} | {s['users']:,} | {fmt(s['ctr_at_k'])} | "
                  f"{fmt(s['conversion_at_k'])} | {fmt(s['revenue'])} | {fmt(s['coverage'])} | {fmt(s['rebuy_share'])} |"
                  for s in served]
    (folder / "loop.md").write_text("\n".join(lines) + "\n")
    plot = plot_loop(results, folder / "loop.png", k)
    return {"cycles": "\n" + "\n".join(lines[4:4 + 2 + len(results)]), "report": str(folder / "loop.md"),
            "plot": str(plot), "seconds": f"{seconds:.0f}"}


def plot_loop(results: list[CycleResult], path: Path, k: int) -> Path:
    """NDCG@k, hit rate and training seconds per cycle, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (metric, label) in zip(axes, (("ndcg", f"NDCG@{k}"), ("hit_rate", f"hit rate@{k}"),
                                          ("train_seconds", "training seconds"))):
        for variant in dict.fromkeys(r.variant for r in results):
            mine = [r for r in results if r.variant == variant]
            ax.plot([r.cycle + 1 for r in mine], [getattr(r, metric) for r in mine], marker="o", label=variant)
        ax.set_xlabel("cycle")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
