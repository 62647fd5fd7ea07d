"""The whole pipeline, chained as `make run` chains it, on a small generated shop, on a multi-process
Spark cluster: Spark's local-cluster mode, two executor JVMs of one core each with their own Python
workers beside the driver (the mode `make run MASTER=...` uses; README "Running on a cluster").

Real Spark, Delta, Petastorm, Horovod (2 ranks) and TensorFlow; tiny sizes so it runs in minutes.
The run is a process of its own (tests/cluster_run.py: one SparkContext per process, and the
suite's is local[2]), with relative paths, so that it also shows that:

- Delta's jars reach the executors through spark.jars (every stage reads and writes Delta there);
- the executors' Python workers import this checkout's recspark and run TensorFlow with legacy
  Keras (spark.executorEnv.*): the scoring UDFs run there;
- train's two Horovod ranks are Spark tasks on the executors: with one core each, both ranks can
  only run at once on two different executors, and horovod.spark.run needs them at once;
- the Petastorm cache and the model folder are absolute paths every executor reads, though each
  executor works in a folder of its own.

The tests then read the run's tables with the suite's local session, and check what a data
engineer relies on: a re-run (here on local[2]) gives the same tables, and no raw user id gets past
bronze except into the final recommendations.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import Config, load_config
from recspark.datasets import RawSources
from recspark.stages import STAGES, features_stage, ingest_stage, prepare_stage

USERS, ITEMS, K = 24, 12, 3


def shop(spark: SparkSession) -> RawSources:
    """Users buy in baskets from two item groups; raw ids look like the shop's own ("user-007")."""
    rng = random.Random(5)
    rows, row_number = [], 0
    for user in range(USERS):
        group = user % 2
        for basket in range(6):
            when = dt.datetime(2024, 1, 1) + dt.timedelta(days=basket * 3 + user % 3, hours=basket)
            for _ in range(3):
                item = rng.randrange(ITEMS // 2) * 2 + group
                row_number += 1
                rows.append((f"user-{user:03d}", f"item-{item:02d}", "purchase", when, 1.0, 2.0,
                             f"b-{user}-{basket}", "shop.csv", row_number))
    events = spark.createDataFrame(rows, "user_id string, item_id string, event_type string, event_ts timestamp, "
                                         "quantity double, price double, session_id string, source_file string, source_row long")
    items = spark.createDataFrame([(f"item-{i:02d}", f"group{i % 2}", "brand", 2.0, 10, "items.csv", i + 1)
                                   for i in range(ITEMS)],
                                  "item_id string, category string, brand string, price double, stock long, source_file string, source_row long")
    users = spark.createDataFrame([(f"user-{u:03d}", str(20 + u), "f", "12345", "users.csv", u + 1) for u in range(USERS)],
                                  "user_id string, age string, gender string, region string, source_file string, source_row long")
    return RawSources(events, items, users)


def pipeline_overrides(root: Path | str) -> list[str]:
    """The small run's settings, outputs under ``root`` (also tests/cluster_run.py's, on a cluster)."""
    return [
        "dataset.name=synthetic", f"paths.lakehouse={root}/lakehouse", f"paths.reports={root}/reports",
        f"paths.checkpoints={root}/checkpoints", "features.max_seq_len=5", "features.min_item_count=1",
        "train.epochs=2", "train.batch_size=16", "train.embedding_dim=8", "train.num_proc=2",
        # The served model of Complete Journey (next-basket rows, a refit on train + validation);
        # the others are covered by test_models / test_training.
        "train.models=[repeatnet]",
        # The default run's baselines (most_popular, repeat_purchase, tifu_knn); the others and ALS's
        # grid are make compare's (test_baselines, test_tuning, and the sampled protocol below).
        "evaluate.tifu_alphas=[0.1,0.8]",  # TIFU-KNN's grid of two
        f"evaluate.k={K}", f"score.k={K}",
    ]


MASTER = "local-cluster[2,1,1024]"
SCRIPT = Path(__file__).resolve().parent / "cluster_run.py"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="module")
def config(root: Path) -> Config:
    """The run's configuration as the cluster run resolved it (its relative paths, against ``root``)."""
    return load_config(None, pipeline_overrides(root))


def snapshot(spark: SparkSession, config: Config) -> dict[str, list]:
    tables = {f"{layer}/{t}": config.table_path(layer, t) for layer, t in
              [("bronze", "events"), ("bronze", "items"), ("bronze", "users"), ("silver", "events"),
               ("silver", "users"), ("gold", "item_vocab"), ("gold", "train_baskets"), ("gold", "refit_baskets"),
               ("gold", "eval_queries"), ("gold", "serving_item_vocab"), ("gold", "serve_baskets")]}
    return {name: sorted(map(repr, spark.read.format("delta").load(path).collect())) for name, path in tables.items()}


@pytest.fixture(scope="module")
def ran(root: Path) -> dict:
    """The stages as `make run` runs them (jobs/pipeline.py's run_pipeline, one session) on the cluster,
    with the shop's own sources for ingest; the tables are snapshotted after features."""
    out = root / "report.json"
    run = subprocess.run([sys.executable, str(SCRIPT), MASTER, str(out)], cwd=root, capture_output=True, text=True,
                         timeout=2400, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
    assert run.returncode == 0, f"cluster run failed ({run.returncode}):\n{run.stdout[-6000:]}\n{run.stderr[-6000:]}"
    report = json.loads(out.read_text())
    assert list(report["summaries"]) == [*STAGES]
    return {**report["summaries"], "run": {**report, "stdout": run.stdout}}


def test_every_stage_ran_on_the_cluster(ran: dict) -> None:
    assert ran["run"]["master"] == MASTER
    for stage in STAGES:
        assert f"== recspark {stage} (synthetic) done in" in ran["run"]["stdout"]
        assert f"on {MASTER}" in ran["run"]["stdout"]
    assert "2 Horovod ranks" in ran["train"]["repeatnet"]


def test_executors_are_processes_of_their_own(ran: dict) -> None:
    """The driver and two executors; every Python worker's nearest JVM is an executor's, not the
    driver's (local-cluster starts the executor JVMs from the driver's, so it is further up)."""
    assert len(ran["run"]["executors"]) == 3
    for chain in ran["run"]["python_workers"]:
        jvms = [pid for pid, command in chain if command == "java"]
        assert jvms and jvms[0] != ran["run"]["driver_jvm_pid"], f"a Python worker of the driver's JVM: {chain}"


def test_outputs_are_under_the_run_folder(root: Path, ran: dict) -> None:
    """Relative paths resolved against the driver's folder: no executor wrote into its own."""
    assert Path(ran["run"]["cwd"]) == root
    assert (root / "lakehouse" / "synthetic" / "recommendations" / "_delta_log").is_dir()
    assert (root / "checkpoints" / "synthetic" / "repeatnet" / "model.keras").is_file()
    assert (root / "reports" / "synthetic" / "metrics.json").is_file()


def test_every_user_gets_k_recommendations_with_their_own_id(spark: SparkSession, config: Config, ran: dict) -> None:
    recs = spark.read.format("delta").load(config.recommendations_path)
    per_user = {r[C.USER_ID]: r["n"] for r in recs.groupBy(C.USER_ID).agg(F.count("*").alias("n")).collect()}
    assert per_user == {f"user-{u:03d}": K for u in range(USERS)}
    assert recs.filter(~F.col(C.ITEM_ID).startswith("item-")).count() == 0
    assert recs.select(C.RUN_ID).distinct().collect()[0][0] == ran["train"][C.RUN_ID]


def test_features_writes_only_the_example_tables_the_models_train_on(spark: SparkSession, config: Config,
                                                                     ran: dict) -> None:
    from recspark.utils.delta import table_exists

    def written(table: str) -> bool:
        return table_exists(spark, config.table_path(C.GOLD, table))

    # repeatnet reads train_baskets and is refitted on refit_baskets (tested) and serve_baskets
    # (served: every period, so more rows); nothing here reads the others.
    assert written(C.TRAIN_BASKETS) and written(C.REFIT_BASKETS) and written(C.SERVE_BASKETS)
    rows = lambda table: spark.read.format("delta").load(config.table_path(C.GOLD, table)).count()
    assert rows(C.TRAIN_BASKETS) < rows(C.REFIT_BASKETS) < rows(C.SERVE_BASKETS)
    assert not written(C.TRAIN_EXAMPLES) and not written(C.TRAIN_WINDOWS)


def test_metrics_report_has_model_and_baseline(config: Config, ran: dict) -> None:
    report = json.loads((config.reports_dir / "metrics.json").read_text())
    assert set(report["models"]) == {*config.train.models, "most_popular", "repeat_purchase", "tifu_knn"}
    assert report["sampled_negatives"] is None and report["protocol"].startswith("full ranking")
    assert report["als_tuning"] is None  # no ALS in the default run
    tifu = report["tifu_knn_tuning"]
    best = max(tifu["grid"], key=lambda point: point["validation"]["ndcg_at_k"])
    assert tifu["chosen_by"] == "validation" and tifu["chosen"] == {name: best[name] for name in tifu["chosen"]}
    # The grid is the configured one: every vector setting x neighbours x alpha.
    points = {(p["group_count"], p["within_decay"], p["group_decay"], p["neighbours"], p["alpha"]) for p in tifu["grid"]}
    ev = config.evaluate
    assert points == {(*setting, n, a) for setting in ev.tifu_vector_settings
                      for n in ev.tifu_neighbours for a in ev.tifu_alphas}
    assert set(report["repeat_explore"]) == set(report["models"])
    assert report["users"] == USERS
    for metrics in report["models"].values():
        assert 0.0 <= metrics["ndcg_at_k"] <= 1.0 and 0.0 <= metrics["hit_rate_at_k"] <= 1.0
    run_dir = config.reports_dir / report[C.RUN_ID]
    for artefact in ("metrics.png", "metrics_by_k.png", "accuracy_coverage.png", "training_curves.png",
                     "repeat_explore.png", "report.md"):
        assert (run_dir / artefact).stat().st_size > 0
    assert "| repeatnet |" in (run_dir / "report.md").read_text()
    # Tested as refitted on train + validation, served as refitted on every period, both with the
    # epochs validation chose.
    assert report["fit_on"] == {name: "train+validation" for name in report["models"]}
    chosen = config.model_dir("repeatnet")
    meta = json.loads((chosen / "model_meta.json").read_text())
    for folder, fit_on in (("refit", "train+validation"), ("serve", "all events")):
        refit_run = json.loads((chosen / folder / "run.json").read_text())
        assert refit_run["run_id"] == json.loads((chosen / "run.json").read_text())["run_id"]
        assert refit_run["epochs"] == meta["best_epoch"] and (chosen / folder / "model.keras").exists()
        assert refit_run["fit_on"] == fit_on
    for model in report["models"]:
        hits = [report["at_k"][k][model]["hit_rate_at_k"] for k in ("3", "5", "10", "20")]
        assert hits == sorted(hits), "hit rate cannot fall as K grows"
        assert 0.0 < report["beyond_accuracy"][model]["catalogue_coverage"] <= 1.0
        assert report["beyond_accuracy"][model]["novelty"] > 0.0
        assert 0.0 <= report["beyond_accuracy"][model]["intra_list_diversity"] <= 1.0


def test_metrics_can_be_recomputed_from_the_predictions_table(spark: SparkSession, config: Config, root: Path,
                                                              ran: dict) -> None:
    from recspark.evaluation.metrics import hit_rate_at_k, ndcg_at_k

    report = json.loads((config.reports_dir / "metrics.json").read_text())
    # As configured: relative to the run's folder here.
    predictions = (spark.read.format("delta").load(str(root / report["predictions_table"]))
                   .filter(F.col(C.RUN_ID) == report[C.RUN_ID]))
    # The held-out items, by the shop's own user id: each user's last basket in the generated data.
    events = shop(spark).events.collect()
    last_basket = {}
    for row in events:
        key = row[C.USER_ID]
        if key not in last_basket or row[C.EVENT_TS] > last_basket[key][0]:
            last_basket[key] = (row[C.EVENT_TS], row[C.SESSION_ID])
    relevant, before = {}, {}
    for row in events:
        if row[C.SESSION_ID] == last_basket[row[C.USER_ID]][1]:
            relevant.setdefault(row[C.USER_ID], set()).add(row[C.ITEM_ID])
        else:  # every earlier basket (train and validation): what the user had before the test period
            before.setdefault(row[C.USER_ID], set()).add(row[C.ITEM_ID])
    for model in report["models"]:
        rows = predictions.filter(F.col(C.MODEL_NAME) == model).collect()
        ranked = {user: [r[C.ITEM_ID] for r in sorted((r for r in rows if r[C.USER_ID] == user), key=lambda r: r[C.RANK])]
                  for user in relevant}
        users = sorted(relevant)
        predicted, held_out = [ranked[u] for u in users], [sorted(relevant[u]) for u in users]
        assert report["models"][model]["hit_rate_at_k"] == pytest.approx(hit_rate_at_k(predicted, held_out, K), abs=1e-9)
        assert report["models"][model]["ndcg_at_k"] == pytest.approx(ndcg_at_k(predicted, held_out, K), abs=1e-9)
        # Repeat / explore by hand: recall on held-out items had before, on new ones, re-buy share.
        rep = [(set(ranked[u][:K]), relevant[u] & before[u]) for u in users if relevant[u] & before[u]]
        expl = [(set(ranked[u][:K]), relevant[u] - before[u]) for u in users if relevant[u] - before[u]]
        shares = [len(set(ranked[u][:K]) & before[u]) / len(set(ranked[u][:K])) for u in users if ranked[u]]
        got = report["repeat_explore"][model]
        assert (got["users_rep"], got["users_expl"]) == (len(rep), len(expl))
        for name, pairs in (("recall_rep", rep), ("recall_expl", expl)):
            want = sum(len(top & r) / len(r) for top, r in pairs) / len(pairs) if pairs else math.nan
            assert got[name] == pytest.approx(want, abs=1e-9, nan_ok=True)
        assert got["repeat_share"] == pytest.approx(sum(shares) / len(shares), abs=1e-9)


def test_training_learned_the_two_groups(spark: SparkSession, config: Config, ran: dict) -> None:
    # Users only ever buy from their group (item parity = user parity): a trained model should
    # recommend mostly from the user's own group.
    recs = spark.read.format("delta").load(config.recommendations_path).collect()
    same_group = sum(int(r[C.USER_ID][-3:]) % 2 == int(r[C.ITEM_ID][-2:]) % 2 for r in recs)
    assert same_group / len(recs) > 0.8


def test_summary_counts_every_table(ran: dict) -> None:
    summary = ran["summary"]
    assert summary["bronze/events"].split()[0] == f"{USERS * 6 * 3:,}"
    assert summary["recommendations"].split()[0] == f"{USERS * K:,}"


def test_rerun_gives_the_same_tables(spark: SparkSession, config: Config, ran: dict) -> None:
    ingest_stage(spark, config, shop(spark))
    prepare_stage(spark, config)
    features_stage(spark, config)
    assert snapshot(spark, config) == ran["run"]["tables"]


def test_no_raw_user_id_after_bronze(spark: SparkSession, config: Config, ran: dict) -> None:
    raw_ids = {f"user-{u:03d}" for u in range(USERS)}
    for layer in ("silver", "gold"):
        for table in Path(config.table_path(layer, "")).iterdir():
            df = spark.read.format("delta").load(str(table))
            text = " ".join(map(repr, df.collect()))
            assert not any(raw in text for raw in raw_ids), f"raw user id in {layer}/{table.name}"
    for artefact in Path(config.paths.checkpoints).rglob("*"):
        if artefact.is_file():
            assert not any(raw.encode() in artefact.read_bytes() for raw in raw_ids), f"raw user id in {artefact}"


def test_sampled_protocol_and_cross_validation_are_labelled(spark: SparkSession, config: Config, ran: dict,
                                                             tmp_path: Path) -> None:
    """The options, on the same trained run: sampled negatives are labelled as such everywhere and
    cross-validation reports mean and std per grid point (a separate reports directory)."""
    import copy

    from recspark.evaluation.evaluate import evaluate

    options = copy.deepcopy(config)
    options.paths.reports = str(tmp_path / "reports")
    options.evaluate.sampled_negatives = 5
    options.evaluate.cross_validate = True
    options.evaluate.cv_folds = 2
    options.evaluate.als_ranks, options.evaluate.als_reg_params = [4], [0.1]  # one point: the wiring (test_tuning: a grid)
    options.evaluate.baselines = ["most_popular", "als"]  # the one tuned by cross-validation, and the fill-in
    report = evaluate(spark, options.validate())
    assert report["sampled_negatives"] == 5 and report["protocol"].startswith("SAMPLED")
    assert set(report["models"]) == {*config.train.models, "most_popular", "als"}
    for metrics in report["models"].values():
        assert set(metrics) == {"hit_rate_at_k", "ndcg_at_k", "mrr_at_k"} and 0.0 <= metrics["hit_rate_at_k"] <= 1.0
    text = (options.reports_dir / report[C.RUN_ID] / "report.md").read_text()
    assert text.count("SAMPLED") >= 2
    cv = report["als_tuning"]["cross_validation"]
    assert report["als_tuning"]["chosen_by"] == "cross_validation" and len(cv["grid"]) == 1
    assert all(len(point["per_fold"]) == 2 and "ndcg_at_k" in point["std"] for point in cv["grid"])
    assert "Cross-validation (" in text


def test_score_writes_the_vectors_of_everyone_and_train_registers_the_pyfunc(spark: SparkSession, config: Config,
                                                                              ran: dict) -> None:
    from recspark.tracking import PYFUNC_ARTIFACT_PATH, _mlflow, registered_model_name, tracking_uri
    from recspark.vectors import ITEM_VECTORS, SIMILAR_ITEMS, USER_VECTORS, vector_table_path

    def table(name: str):
        return spark.read.format("delta").load(vector_table_path(config, name))

    assert sorted(r[C.USER_ID] for r in table(USER_VECTORS).collect()) == [f"user-{u:03d}" for u in range(USERS)]
    vocabulary = spark.read.format("delta").load(config.table_path(C.GOLD, C.ITEM_VOCAB)).count()
    assert table(ITEM_VECTORS).count() == vocabulary
    similar = table(SIMILAR_ITEMS)  # every item's neighbours: all the others (fewer than score.similar_k)
    assert similar.select(C.ITEM_ID).distinct().count() == vocabulary and similar.count() == vocabulary * (vocabulary - 1)
    # The served version (the refit on every period) is the latest pyfunc, and the one score used.
    client = _mlflow().MlflowClient(tracking_uri(config.tracking, config.paths.checkpoints))
    name = registered_model_name(config.tracking, config.run_name, "repeatnet")
    latest = max(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    assert latest.source.endswith(f"/{PYFUNC_ARTIFACT_PATH}")
    assert client.get_run(latest.run_id).data.tags["fit_on"] == C.FIT_ON_ALL
    assert ran["score"]["model"] == f"{config.model_dir('repeatnet') / 'serve'} ({C.FIT_ON_ALL})"
    # Only the served fit is exported as a pyfunc; the earlier fits' versions hold the bare model.
    folder = config.model_dir("repeatnet")
    assert [(folder / sub / "pyfunc" / "MLmodel").exists() for sub in (".", "refit", "serve")] == [False, False, True]
    earlier = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))[-3:-1]
    assert [v.source.endswith(f"/{PYFUNC_ARTIFACT_PATH}") for v in earlier] == [False, False]
    # Its confidence was measured on test by evaluate, on its test lists (one pair per listed item),
    # and the report shows the reliability diagram; score reads that stored measurement.
    from recspark.calibration import Calibration

    report = json.loads((config.reports_dir / "metrics.json").read_text())
    measured = Calibration.load(config.model_dir("repeatnet"))
    assert report["calibration"] == {"model": "repeatnet", **measured.summary()}
    assert measured.ece_test is not None and sum(n for _, n, _, _ in measured.reliability_test) == USERS * K
    assert report["plots"]["reliability"] == "reliability_repeatnet.png"
    assert (config.reports_dir / report[C.RUN_ID] / "reliability_repeatnet.png").exists()
    assert f"test {measured.ece_test:.4f} (measured by evaluate" in ran["score"]["confidence"]


def test_the_notebooks_run_on_the_run(root: Path, ran: dict) -> None:
    """`make notebooks` on this run: each notebook executes top to bottom (a failing cell raises, naming
    it) with nothing left from the one before, and shows what it is there for, plots included.

    As `make notebooks` runs it, a process of its own (jobs/notebooks.py): the kernel client's ZeroMQ
    sockets and event loop stay out of the suite's process, which goes on to train TensorFlow models."""
    from recspark.notebooks import NOTEBOOKS

    overrides = [*pipeline_overrides("."), "spark.shuffle_partitions=2", "spark.driver_memory=1g"]
    run = subprocess.run([sys.executable, str(SCRIPT.parent.parent / "jobs" / "notebooks.py"),
                          *(f"--set={o}" for o in overrides)], cwd=root, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, f"make notebooks failed ({run.returncode}):\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    written = [root / "reports" / "synthetic" / "notebooks" / name for name in NOTEBOOKS]
    assert all(path.is_file() for path in written), run.stdout

    def outputs(path: Path) -> tuple[str, int]:
        """The notebook's printed and displayed text, and how many images it shows."""
        text, images = [], 0
        for cell in json.loads(path.read_text())["cells"]:
            for output in cell.get("outputs", []):
                assert output["output_type"] != "error", f"{path.name}: {output.get('ename')}: {output.get('evalue')}"
                data = output.get("data", {})
                images += "image/png" in data
                text.append("".join(output.get("text", "")) + "".join(data.get("text/plain", "")))
        return "\n".join(text), images

    data, models, household = (outputs(path) for path in written)
    assert f"{USERS * 6:,} baskets" in data[0] and data[1] == 4  # each user's 6 baskets; four plots
    assert "repeatnet" in models[0] and "repeat_purchase" in models[0] and "ndcg_vs_buy_again" in models[0]
    assert "no loop report yet" in models[0] and models[1] >= 3  # the report's plots and the training curves
    chosen = household[0].split("household ", 1)[1].split()[0]
    assert chosen == "user-000", household[0][:2000]  # the smallest id with both lists
    assert "listed items were bought in the test period" in household[0] and household[1] == 2
