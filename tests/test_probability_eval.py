"""The probability path of the evaluation: sampled classification pairs and the DNN's classification
report (real Spark, a real DNN trained here for a few epochs, scored through the Spark pandas UDF).

The task the DNN learns: items 2..11 are category A, 12..21 category B; a user's ``user_vector``
says which category they like and their relevant items are items of that category. The history
is noise.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from recspark import constants as C
from recspark.config import load_config
from recspark.evaluation.classification import LABEL
from recspark.evaluation.probability import classification_lines, classification_pairs, probability_report
from recspark.models.dnn import build_dnn_model
from recspark.models.item_tables import ItemTables

NUM_ITEMS = 22  # PAD, OOV, 20 items
A_ITEMS, B_ITEMS = np.arange(2, 12), np.arange(12, 22)
MAX_SEQ_LEN = 4
USERS = 40
QUERY_SCHEMA = (f"{C.USER_ID} string, {C.SPLIT} string, {C.HISTORY} array<int>, {C.USER_VECTOR} array<float>, "
                f"{C.RELEVANT} array<string>, {C.SEEN} array<string>, seen_idx array<int>")


def _vocab(spark, first: int = 2, last: int = 21):
    return spark.createDataFrame([(f"i{i}", 1, i) for i in range(first, last + 1)],
                                 f"{C.ITEM_ID} string, {C.TRAIN_COUNT} long, {C.ITEM_IDX} int")


def _queries(spark, test_liked: bool = True):
    """Two queries per user (validation, test): two relevant items of the liked category (of the
    other category for the test split when ``test_liked`` is False), a repeat and an unknown item."""
    rng = np.random.default_rng(5)
    rows = []
    for u in range(USERS):
        likes_a = u % 2 == 0
        for split in (C.VALIDATION, C.TEST):
            liked = likes_a if (split == C.VALIDATION or test_liked) else not likes_a
            items = rng.choice(A_ITEMS if liked else B_ITEMS, 2, replace=False)
            relevant = [f"i{items[0]}", f"i{items[1]}", f"i{items[0]}", "unknown"]
            rows.append((f"u{u}", split, rng.integers(2, 22, MAX_SEQ_LEN).tolist(),
                         [1.0, 0.0] if likes_a else [0.0, 1.0], relevant, [], []))
    return spark.createDataFrame(rows, QUERY_SCHEMA)


def test_pairs_have_the_right_labels_and_no_relevant_negative(spark):
    queries = _queries(spark)
    pairs = classification_pairs(queries, _vocab(spark), negatives=3, seed=1).persist()
    # Per query: 2 distinct in-vocabulary relevant items (the repeat and the unknown one dropped).
    counts = {(r[LABEL]): r["n"] for r in pairs.groupBy(LABEL).agg(F.count(F.lit(1)).alias("n")).collect()}
    assert counts == {1: 2 * 2 * USERS, 0: 3 * 2 * 2 * USERS}
    per_query = pairs.groupBy(C.USER_ID, C.SPLIT).agg(F.sum(LABEL).alias("pos"), F.count(F.lit(1)).alias("n"))
    assert per_query.filter((F.col("pos") != 2) | (F.col("n") != 8)).count() == 0
    relevant = queries.select(C.USER_ID, C.SPLIT, C.RELEVANT)
    labelled = pairs.join(relevant, [C.USER_ID, C.SPLIT]).select(
        LABEL, F.expr(f"array_contains({C.RELEVANT}, {C.ITEM_ID})").alias("is_relevant"))
    assert labelled.filter(F.col(LABEL) != F.col("is_relevant").cast("int")).count() == 0
    # Model inputs ride along; the query-only columns do not.
    assert {C.HISTORY, C.USER_VECTOR, C.ITEM_IDX, C.ITEM_ID, LABEL} <= set(pairs.columns)
    assert not {C.RELEVANT, C.SEEN, "seen_idx"} & set(pairs.columns)
    # Seeded: the same pairs again; another seed draws other negatives.
    assertDataFrameEqual(classification_pairs(queries, _vocab(spark), 3, seed=1), pairs)
    other = classification_pairs(queries, _vocab(spark), 3, seed=2).filter(F.col(LABEL) == 0)
    assert other.select(C.USER_ID, C.SPLIT, C.ITEM_IDX).exceptAll(
        pairs.filter(F.col(LABEL) == 0).select(C.USER_ID, C.SPLIT, C.ITEM_IDX)).count() > 0
    pairs.unpersist()


def test_negatives_are_uniform_over_the_free_items(spark):
    """Vocabulary of 5 (item_idx 2..6): relevant 2 and 5 leave 3, 4, 6, each drawn about a third of the time."""
    vocab = _vocab(spark, 2, 6)
    queries = spark.createDataFrame([(f"u{u}", C.TEST, [2], [0.0, 0.0], ["i2", "i5"], [], []) for u in range(20)],
                                    QUERY_SCHEMA)
    pairs = classification_pairs(queries, vocab, negatives=15, seed=3)
    drawn = {r[C.ITEM_IDX]: r["n"] for r in pairs.filter(F.col(LABEL) == 0).groupBy(C.ITEM_IDX)
             .agg(F.count(F.lit(1)).alias("n")).collect()}
    assert set(drawn) == {3, 4, 6} and sum(drawn.values()) == 20 * 2 * 15
    # 600 draws, expected 200 each (sd about 11.5): 140 is more than 5 sd away.
    assert min(drawn.values()) > 140, drawn
    # Only one free item: every negative is it.
    full = spark.createDataFrame([("u", C.TEST, [2], [0.0, 0.0], ["i2", "i3", "i4", "i5"], [], [])], QUERY_SCHEMA)
    only = classification_pairs(full, vocab, negatives=4, seed=3).filter(F.col(LABEL) == 0)
    assert [r[C.ITEM_IDX] for r in only.collect()] == [6] * 16


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """A config whose train.models = [sasrec, dnn], with a DNN trained on the category task and
    exported as the train stage does (model.keras + model_meta.json); sasrec is never trained."""
    root = tmp_path_factory.mktemp("probability")
    config = load_config(None, [f"paths.checkpoints={root}/checkpoints", "dataset.name=synthetic",
                                "train.models=[sasrec, dnn]", "train.negatives=4", "train.seed=9"])
    category = np.zeros(NUM_ITEMS, np.int32)
    category[A_ITEMS], category[B_ITEMS] = 2, 3
    tables = ItemTables(category, np.ones(NUM_ITEMS, np.int32), np.ones(NUM_ITEMS, np.int32),
                        np.ones(NUM_ITEMS, np.float32))
    tf.keras.utils.set_random_seed(11)
    model = build_dnn_model(NUM_ITEMS, MAX_SEQ_LEN, 2, tables=tables, negatives=4, embedding_dim=8,
                            hidden_units=[16], dropout=0.0, seed=7)
    rng = np.random.default_rng(1)
    likes_a = rng.random(480) < 0.5
    inputs = {C.HISTORY: rng.integers(2, 22, (480, MAX_SEQ_LEN)).astype(np.int32),
              C.USER_VECTOR: np.stack([likes_a, ~likes_a], axis=1).astype(np.float32)}
    target = np.where(likes_a, rng.choice(A_ITEMS, 480), rng.choice(B_ITEMS, 480)).astype(np.int32)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.02))
    model.fit(inputs, target, batch_size=32, epochs=8, shuffle=False, verbose=0)
    model_dir = config.model_dir("dnn")
    model_dir.mkdir(parents=True)
    model.save(model_dir / "model.keras")
    (model_dir / "model_meta.json").write_text(json.dumps(
        {"model": "dnn", "num_items": NUM_ITEMS, "inputs": [C.HISTORY, C.USER_VECTOR]}))
    return config


def test_report_of_the_learned_task_and_threshold_from_validation(spark, config):
    vocab = _vocab(spark)
    report = probability_report(spark, config, _queries(spark), vocab)
    assert report is not None and list(report["models"]) == ["dnn"]  # sasrec gives no probabilities
    assert "SAMPLED" in report["protocol"] and report["negatives"] == 4
    dnn = report["models"]["dnn"]
    for split in (C.VALIDATION, C.TEST):
        assert dnn[split]["pairs"] == 2 * USERS * (1 + 4)
        # Chance is 0.5; other-category negatives (10 of the 18 free items) are separable, same-
        # category ones are not, so about 10/18 + 8/18 / 2 = 0.78 is reachable: 0.65 is a clear margin.
        assert dnn[split]["auc"] > 0.65, dnn
    assert dnn["threshold"] == dnn["validation"]["threshold"] == dnn["test"]["threshold"]

    # Test relevant items from the disliked category: test metrics collapse, the threshold
    # (validation's business only) stays.
    flipped = probability_report(spark, config, _queries(spark, test_liked=False), vocab)["models"]["dnn"]
    # Approximate: the pandas UDF's batches differ between the two runs and float32 MLP sums may
    # differ in the last bits with the batch.
    assert flipped["threshold"] == pytest.approx(dnn["threshold"], rel=1e-5), (flipped, dnn)
    for name in ("auc", "f1", "tp", "fp"):
        assert flipped["validation"][name] == pytest.approx(dnn["validation"][name], rel=1e-5), (flipped, dnn)
    assert flipped["test"]["auc"] < 0.5 < dnn["test"]["auc"], (flipped, dnn)

    lines = classification_lines(report)
    assert "SAMPLED" in lines[1] and sum(line.startswith("| dnn |") for line in lines) == 2


def test_no_probability_model_gives_none(spark, tmp_path):
    config = load_config(None, [f"paths.checkpoints={tmp_path}", "dataset.name=synthetic", "train.models=[sasrec]"])
    assert probability_report(spark, config, _queries(spark), _vocab(spark)) is None
    assert classification_lines(None) == []
