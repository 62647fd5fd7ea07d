"""The replayed loop, two cycles on a small generated shop: the second cycle's model is warm-started
from the first (rows moved by item id) and trained on the first cycle's responses, which came back
through feedback ingest as the very events the shop logged, and on its shown-and-ignored items."""
from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import Config, load_config
from recspark.datasets import RawSources

USERS, ITEMS, DAYS, K = 16, 12, 24, 3
NEW_ITEM = "item-new"  # first bought in the first revealed cycle: new in the second cycle's vocabulary


def shop(spark: SparkSession) -> RawSources:
    """Households buy 3 items every 3 days from one of two groups; from day 16 some buy NEW_ITEM too."""
    rng = random.Random(3)
    rows, number = [], 0
    for user in range(USERS):
        for day in range(user % 3, DAYS, 3):
            when = dt.datetime(2024, 1, 1, 10) + dt.timedelta(days=day, minutes=user)
            items = [f"item-{rng.randrange(ITEMS // 2) * 2 + user % 2:02d}" for _ in range(3)]
            if day >= 16 and user % 4 == 0:
                items.append(NEW_ITEM)
            for item in items:
                number += 1
                rows.append((f"user-{user:03d}", item, "purchase", when, 1.0, 2.0, f"b-{user}-{day}", "shop.csv", number))
    events = spark.createDataFrame(rows, "user_id string, item_id string, event_type string, event_ts timestamp, "
                                         "quantity double, price double, session_id string, source_file string, "
                                         "source_row long")
    items = spark.createDataFrame([(f"item-{i:02d}", f"group{i % 2}", "brand", 2.0, 10, "items.csv", i + 1)
                                   for i in range(ITEMS)] + [(NEW_ITEM, "group0", "brand", 2.0, 10, "items.csv", 99)],
                                  "item_id string, category string, brand string, price double, stock long, "
                                  "source_file string, source_row long")
    return RawSources(events, items, None)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    root = tmp_path_factory.mktemp("loop")
    return load_config(None, [
        "dataset.name=synthetic", f"paths.lakehouse={root}/lakehouse", f"paths.reports={root}/reports",
        f"paths.checkpoints={root}/checkpoints", "features.max_seq_len=5", "features.min_item_count=1",
        "features.repeat_candidates=4", "features.oov_buckets=1", "features.category_oov_buckets=1",
        "train.models=[repeatnet]", "train.batch_size=8", "train.embedding_dim=8", "train.num_layers=1",
        "train.num_proc=2", f"score.k={K}", "loop.cycles=2", "loop.cycle_days=4", "loop.initial_epochs=1",
        "loop.epochs=1", "loop.variants=[warm]",
        # The shown-and-ignored items as negatives in every training (the path warm_ignored takes,
        # tested here on warm itself: a second variant would cost the test a training and two scorings).
        "train.ignored_weight=1.0",
    ])


def test_two_cycles_warm_start_by_item_id_on_the_first_cycles_responses(spark: SparkSession, config: Config) -> None:
    from recspark.loop import cycle_config, loop_reports_dir, run_loop
    from recspark.stages import ingest_stage, run_pipeline

    run_pipeline(spark, config, ["ingest", "prepare"], bodies={"ingest": lambda s, c: ingest_stage(s, c, shop(s))})
    summary = run_loop(spark, config)

    report = json.loads((loop_reports_dir(config) / "loop.json").read_text())
    assert [(r["cycle"], r["variant"]) for r in report["cycles"]] == [(0, "warm"), (1, "warm")]
    assert all(r["users_served"] == USERS and 0 <= r["ndcg"] <= 1 for r in report["cycles"])
    assert Path(summary["plot"]).is_file() and Path(summary["plot"]) == loop_reports_dir(config) / "loop.png"
    from recspark.notebooks import loop_cycles  # what the models notebook shows of it

    assert [(c.cycle, c.variant, c.ndcg) for c in loop_cycles(config).itertuples()] == [
        (r["cycle"] + 1, r["variant"], r["ndcg"]) for r in report["cycles"]]

    first_cut = dt.datetime.fromisoformat(report["first_cut"])
    world = cycle_config(config, "warm", first_cut)
    run = json.loads((world.model_dir("repeatnet") / "run.json").read_text())
    assert not (world.model_dir("repeatnet") / "refit").exists()  # no validation period, nothing to refit on
    # The second cycle's model started from the first's, its rows moved through the saved vocabularies.
    assert run["warm_start_from"].endswith("(vocabulary)")
    # ... and they had to move: the second cycle's vocabulary numbers the first cycle's items otherwise.
    from recspark.models.warm_start import ITEM_VOCAB_FILE, PREVIOUS_DIR, read_saved_vocabulary, vocabulary_map

    previous = world.model_dir("repeatnet") / PREVIOUS_DIR
    old_size = json.loads((previous / "model_meta.json").read_text())["num_items"]
    current = spark.read.format("delta").load(world.table_path(C.GOLD, C.ITEM_VOCAB))
    moved = vocabulary_map(read_saved_vocabulary(spark, previous, ITEM_VOCAB_FILE), current, C.ITEM_ID, C.ITEM_IDX,
                           old_size, run["num_items"])
    assert (moved[2:] >= 0).all() and (moved[2:] != range(2, old_size)).any()
    # ... and read the first cycle's feedback: its impressions and the responses among them.
    first_run = run["feedback"]["runs"]["loop-c0-warm"]
    assert first_run["impressions"] == USERS * K and first_run["responses"] > 0
    # ... and read the first cycle's shown-and-ignored items as negatives: exactly the gold baskets
    # that carry some (bought within feedback.ignored_days of the first lists).
    baskets = spark.read.format("delta").load(world.table_path(C.GOLD, C.TRAIN_BASKETS))
    with_ignored = baskets.filter(F.exists(C.IGNORED, lambda i: i != C.PAD_IDX)).count()
    assert with_ignored > 0 and run["ignored_negatives"] == {"weight": 1.0, "rows": with_ignored}
    assert report["cycles"][1]["ignored_rows"] == with_ignored

    # The first cycle's events are back in the loop's silver events, exactly those the shop logged:
    # the responses under their own ids through the feedback file, the rest directly.
    window = (F.col(C.EVENT_TS) >= F.lit(first_cut)) & (F.col(C.EVENT_TS) < F.lit(first_cut + dt.timedelta(days=4)))
    source = spark.read.format("delta").load(config.table_path(C.SILVER, C.EVENTS)).filter(window)
    looped = spark.read.format("delta").load(world.table_path(C.SILVER, C.EVENTS)).filter(window)
    assert sorted(r[C.EVENT_ID] for r in looped.collect()) == sorted(r[C.EVENT_ID] for r in source.collect())
    from_feedback = looped.filter(F.col(C.SOURCE_FILE).contains("feedback/cycle-00")).count()
    assert from_feedback == first_run["responses"]
    bought = {r[C.ITEM_ID] for r in looped.collect()}
    assert NEW_ITEM in bought
    vocab = spark.read.format("delta").load(world.table_path(C.GOLD, C.ITEM_VOCAB))
    assert vocab.filter(F.col(C.ITEM_ID) == NEW_ITEM).count() == 1


def test_only_warm_ignored_reads_the_ignored_items_with_the_loops_weight(config: Config) -> None:
    """Each variant's training settings and models folder (the data set's train.ignored_weight is 0)."""
    from recspark.loop import cycle_config

    cut = dt.datetime(2024, 1, 10)
    plain = load_config(None, [f"paths.lakehouse={config.paths.lakehouse}", f"paths.checkpoints={config.paths.checkpoints}",
                               "train.models=[repeatnet]", "loop.ignored_weight=2.5"])
    looped = {variant: cycle_config(plain, variant, cut) for variant in ("warm", "frozen", "full", "warm_ignored")}
    assert {v: c.train.for_model("repeatnet").ignored_weight for v, c in looped.items()} == {
        "warm": 0.0, "frozen": 0.0, "full": 0.0, "warm_ignored": 2.5}
    assert len({c.model_dir("repeatnet") for c in looped.values()}) == 4
    assert looped["warm_ignored"].model_dir("repeatnet").is_relative_to(Path(config.paths.checkpoints))


def test_list_metrics_by_hand(spark: SparkSession) -> None:
    """Served lists against the week's purchases, k = 2: p1's top 2 (a, b) hits b at rank 2 of 3 bought
    (NDCG = (1 / log2 3) / (1 + 1 / log2 3)), p2 misses, p3 bought nothing and p4 had no list (neither
    is evaluated); coverage counts every served row (6 items of 10)."""
    import math

    from recspark.loop import list_metrics

    lists = spark.createDataFrame([("p1", 1, "a"), ("p1", 2, "b"), ("p1", 3, "c"), ("p2", 1, "d"), ("p2", 2, "e"),
                                   ("p3", 1, "x")], "_pseudonym string, rank int, item_id string")
    bought = spark.createDataFrame([("p1", "b"), ("p1", "c"), ("p1", "z"), ("p1", "b"), ("p2", "q"), ("p4", "a")],
                                   "_pseudonym string, item_id string")
    gain = 1 / math.log2(3)
    assert list_metrics(lists, bought, 2, 10) == pytest.approx({
        "users_served": 3, "users_evaluated": 2, "hit_rate": 0.5, "ndcg": gain / (1 + gain) / 2, "coverage": 0.6})
