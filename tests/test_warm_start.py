"""Warm start across a refitted vocabulary: the features stage renumbers items and categories on
every run, so the previous export's rows must follow their item_id / category, not their index.

Unit tests of the row moves (grow_weights) and of the old-to-new maps (a Spark join of the saved
and the current vocabulary), then one real run pair: a towers model trained by Horovod from
Petastorm, then warm-started over a renumbered vocabulary (a new, more popular item and a new
category take the first indices, one item is dropped).
"""
from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
from pyspark.testing import assertDataFrameEqual

from recspark import constants as C
from recspark.config import TrainConfig
from recspark.models.warm_start import (CATEGORY_VOCAB_FILE, ITEM_VOCAB_FILE, PREVIOUS_DIR, VOCAB_DIR, grow_weights,
                                       plan_warm_start, vocabulary_map)


# The single-unknown layout (PAD, unknown, then items from 2): small models, fast tests.
FIRST_ITEM = C.ItemLayout(oov_buckets=1).first_item


def _item_vocab(spark, item_ids: list[str], first: int = FIRST_ITEM):
    """Gold-shaped item_vocab: item_id -> item_idx from ``first``, in the given (popularity) order."""
    rows = [(item, first + i, 100 - i) for i, item in enumerate(item_ids)]
    return spark.createDataFrame(rows, f"{C.ITEM_ID} string, {C.ITEM_IDX} int, {C.TRAIN_COUNT} long")


def _category_vocab(spark, categories: list[str]):
    rows = [(category, FIRST_ITEM + i, 50 - i) for i, category in enumerate(categories)]
    return spark.createDataFrame(rows, f"{C.CATEGORY} string, {C.CATEGORY_IDX} int, {C.TRAIN_COUNT} long")


# --------------------------------------------------------------------------------------------------
# grow_weights with an item map, a category map and fresh tables
# --------------------------------------------------------------------------------------------------

def test_grow_weights_moves_item_and_category_rows_and_keeps_fresh_tables():
    rng = np.random.default_rng(0)
    old = [rng.normal(size=(5, 3)), rng.normal(size=(4, 3)), np.array([0, 0, 2, 3, 2], np.int32), rng.normal(size=(3, 3))]
    fresh = [rng.normal(size=(6, 3)), rng.normal(size=(5, 3)), np.array([0, 0, 4, 2, 3, 2], np.int32),
             rng.normal(size=(3, 3))]
    items = np.array([0, 1, 4, -1, 2])  # old item 3 dropped; new index 3 and 5 are new items
    categories = np.array([0, 1, 3, 2])  # old categories 2 and 3 swapped; new row 4 is new
    grown = grow_weights(old, fresh, 5, 6, items, categories=(4, 5), category_old_to_new=categories,
                         keep_fresh=[False, False, True, False])

    np.testing.assert_array_equal(grown[0][[0, 1, 4, 2]], old[0][[0, 1, 2, 4]])
    np.testing.assert_array_equal(grown[0][[3, 5]], fresh[0][[3, 5]])
    np.testing.assert_array_equal(grown[1][[0, 1, 3, 2]], old[1])
    np.testing.assert_array_equal(grown[1][4], fresh[1][4])
    np.testing.assert_array_equal(grown[2], fresh[2])  # a table of the current data, not a learned state
    np.testing.assert_array_equal(grown[3], old[3])
    assert not any(np.array_equal(row, old[0][3]) for row in grown[0])  # the dropped item left no trace


def test_grow_weights_refuses_an_axis_that_could_be_items_or_categories():
    old, fresh = [np.zeros((4, 3))], [np.zeros((5, 3))]
    with pytest.raises(ValueError, match="ambiguous"):
        grow_weights(old, fresh, 4, 5, np.array([0, 1, 3, 2]), categories=(4, 5))
    with pytest.raises(ValueError, match="category vocabulary shrank"):
        grow_weights([np.zeros((6, 3))], [np.zeros((6, 3))], 6, 6, categories=(4, 3))


# --------------------------------------------------------------------------------------------------
# Old-to-new maps from the saved and the current vocabulary (Spark join)
# --------------------------------------------------------------------------------------------------

def test_vocabulary_map_follows_item_ids(spark):
    old = _item_vocab(spark, ["a", "b", "c"])  # 2, 3, 4
    new = _item_vocab(spark, ["n", "c", "a", "d"])  # 2, 3, 4, 5: b dropped, n and d new
    mapping = vocabulary_map(old, new, C.ITEM_ID, C.ITEM_IDX, old_size=5, new_size=6)
    assert mapping.tolist() == [0, 1, 4, -1, 3]


def test_vocabulary_map_starts_reserved_rows_fresh_when_their_count_changes(spark, caplog):
    old = _item_vocab(spark, ["a", "b"])  # PAD, unknown, then items from 2
    new = _item_vocab(spark, ["b", "a"], first=5)  # three hashed out-of-vocabulary buckets added
    with caplog.at_level(logging.WARNING, logger="recspark.models.warm_start"):
        mapping = vocabulary_map(old, new, C.ITEM_ID, C.ITEM_IDX, old_size=4, new_size=7)
    assert mapping.tolist() == [-1, -1, 6, 5]
    assert "2 reserved item indices before, 5 now" in caplog.text


def test_an_export_without_saved_vocabulary_falls_back_to_positions(spark, tmp_path, caplog):
    meta = {"num_items": 4, "spec": {"num_items": 4}}
    with caplog.at_level(logging.WARNING, logger="recspark.models.warm_start"):
        plan = plan_warm_start(spark, tmp_path, meta, {"num_items": 6}, _item_vocab(spark, ["a", "b", "c", "d"]), None)
    assert plan.item_old_to_new is None and plan.categories is None and plan.old_num_items == 4
    assert "the export has no saved vocabulary" in caplog.text


# --------------------------------------------------------------------------------------------------
# Two real runs of the towers model (Horovod, Petastorm, Spark)
# --------------------------------------------------------------------------------------------------

MAX_SEQ_LEN = 4
USER_DIM = 2
ITEMS_1 = ["a", "b", "c", "d", "e", "f"]  # item_idx 2..7
CATEGORY_OF = {"a": "x", "b": "x", "c": "x", "d": "y", "e": "y", "f": "y", "new": "z", "g": "z"}
CATEGORIES_1 = ["x", "y"]
# The next run's refit: a new, more popular item and category come first, "d" is gone, "g" is new.
ITEMS_2 = ["new", "c", "a", "b", "e", "f", "g"]
CATEGORIES_2 = ["z", "y", "x"]


def _spec(items: list[str], categories: list[str]):
    from recspark.models import ModelSpec
    from recspark.models.item_tables import ItemTables, feature_spec

    num_items = FIRST_ITEM + len(items)
    category = np.zeros(num_items, np.int32)
    for i, item in enumerate(items):
        category[FIRST_ITEM + i] = FIRST_ITEM + categories.index(CATEGORY_OF[item])
    real = (np.arange(num_items) >= FIRST_ITEM)
    tables = ItemTables(category, real.astype(np.int32), real.astype(np.int32), real.astype(np.float32))
    return ModelSpec(num_items=num_items, max_seq_len=MAX_SEQ_LEN, features=feature_spec(USER_DIM, tables), first_item_idx=FIRST_ITEM), tables


def _examples(spark, num_items: int, rows: int = 64, seed: int = 1):
    rng = np.random.default_rng(seed)
    data = [(rng.integers(FIRST_ITEM, num_items, MAX_SEQ_LEN).tolist(), rng.random(USER_DIM).tolist(),
             int(rng.integers(FIRST_ITEM, num_items))) for _ in range(rows)]
    return spark.createDataFrame(data, f"{C.HISTORY} array<int>, {C.USER_VECTOR} array<float>, {C.TARGET} int")


def _embeddings(model) -> dict[str, np.ndarray]:
    """The towers model's item-indexed (user side's history, item tower's id) and category embeddings."""
    index = {id(variable): i for i, variable in enumerate(model.weights)}
    weights = model.get_weights()
    attributes = model.item_attributes
    items = [i for i, variable in enumerate(model.weights)
             if variable.trainable and variable.shape[0] == model.spec.num_items and variable.shape.rank == 2]
    assert index[id(attributes.id_embedding.embeddings)] in items and len(items) == 2  # id + history embedding
    return {"item_0": weights[items[0]], "item_1": weights[items[1]],
            "category": weights[index[id(attributes.category_embedding.embeddings)]]}


def test_warm_start_moves_rows_to_the_renumbered_vocabulary(spark, tmp_path):
    import tensorflow as tf

    from recspark.models import build_model
    from recspark.models.training import META_FILE, load_model, train_distributed

    config = TrainConfig(models=["towers"], num_proc=1, epochs=1, batch_size=16, learning_rate=0.05, embedding_dim=4,
                         hidden_units=[6], dropout=0.0, seed=3, early_stopping_patience=0, resume=False)
    model_dir = tmp_path / "towers"
    common = dict(model="towers", model_dir=model_dir, cache_url=(tmp_path / "petastorm").as_uri())
    spec_1, _ = _spec(ITEMS_1, CATEGORIES_1)
    items_1, categories_1 = _item_vocab(spark, ITEMS_1), _category_vocab(spark, CATEGORIES_1)
    train_distributed(spark, _examples(spark, spec_1.num_items), spec=spec_1, train_config=config,
                      item_vocab=items_1, category_vocab=categories_1, **common)
    # The export carries the vocabularies it was trained with.
    assertDataFrameEqual(spark.read.parquet(str(model_dir / VOCAB_DIR / ITEM_VOCAB_FILE)),
                         items_1.select(C.ITEM_ID, C.ITEM_IDX))

    spec_2, tables_2 = _spec(ITEMS_2, CATEGORIES_2)
    items_2, categories_2 = _item_vocab(spark, ITEMS_2), _category_vocab(spark, CATEGORIES_2)
    # 0 epochs: the export is exactly what the warm start restored.
    train_distributed(spark, _examples(spark, spec_2.num_items, seed=2), spec=spec_2,
                      train_config=dataclasses.replace(config, epochs=0, warm_start=True),
                      item_vocab=items_2, category_vocab=categories_2, **common)

    assertDataFrameEqual(spark.read.parquet(str(model_dir / VOCAB_DIR / ITEM_VOCAB_FILE)),
                         items_2.select(C.ITEM_ID, C.ITEM_IDX))
    assertDataFrameEqual(spark.read.parquet(str(model_dir / VOCAB_DIR / CATEGORY_VOCAB_FILE)),
                         categories_2.select(C.CATEGORY, C.CATEGORY_IDX))
    assertDataFrameEqual(spark.read.parquet(str(model_dir / PREVIOUS_DIR / VOCAB_DIR / ITEM_VOCAB_FILE)),
                         items_1.select(C.ITEM_ID, C.ITEM_IDX))
    assert json.loads((model_dir / META_FILE).read_text())["warm_start_items"] == "vocabulary"

    old = _embeddings(load_model(model_dir / PREVIOUS_DIR)[0])
    new_model, _ = load_model(model_dir)
    new = _embeddings(new_model)
    tf.keras.utils.set_random_seed(config.seed)
    fresh = _embeddings(build_model("towers", spec_2, config))
    old_idx = {item: FIRST_ITEM + i for i, item in enumerate(ITEMS_1)}
    new_idx = {item: FIRST_ITEM + i for i, item in enumerate(ITEMS_2)}

    for key in ("item_0", "item_1"):
        before, after, init = old[key], new[key], fresh[key]
        assert not np.array_equal(before[FIRST_ITEM:], init[FIRST_ITEM:len(before)])  # run 1 trained
        for item in set(ITEMS_1) & set(ITEMS_2):
            np.testing.assert_array_equal(after[new_idx[item]], before[old_idx[item]], err_msg=f"{key} {item}")
        for item in ("new", "g"):
            np.testing.assert_array_equal(after[new_idx[item]], init[new_idx[item]], err_msg=f"{key} {item}")
        np.testing.assert_array_equal(after[:FIRST_ITEM], before[:FIRST_ITEM])  # PAD, unknown
        assert not any(np.array_equal(row, before[old_idx["d"]]) for row in after)  # the dropped item is gone

    key = "category"
    old_cat = {c: FIRST_ITEM + i for i, c in enumerate(CATEGORIES_1)}
    new_cat = {c: FIRST_ITEM + i for i, c in enumerate(CATEGORIES_2)}
    assert new[key].shape[0] == len(CATEGORIES_2) + FIRST_ITEM
    for category in CATEGORIES_1:
        np.testing.assert_array_equal(new[key][new_cat[category]], old[key][old_cat[category]])
    np.testing.assert_array_equal(new[key][new_cat["z"]], fresh[key][new_cat["z"]])
    np.testing.assert_array_equal(new[key][:FIRST_ITEM], old[key][:FIRST_ITEM])
    # The attribute tables describe the current data (category "z" = 2 for the new item), not run 1's.
    np.testing.assert_array_equal(new_model.item_attributes.category_table.numpy(), tables_2.category)
