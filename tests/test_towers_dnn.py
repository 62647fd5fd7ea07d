"""The feature models (towers, dnn): shapes, save/load, a learnable attribute task, cold start, the
DNN's probabilities, and the item attribute tables built from gold-shaped Spark tables.

The synthetic task: two categories A and B of ten items each; a user's ``user_vector`` says which
one they like ([1, 0] or [0, 1]) and the target is a random item of that category, while the
history is random noise. Only the user features and the item categories carry the answer.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from recspark import constants as C
from recspark.models.dnn import DNNModel, build_dnn_model, predict_pairs
from recspark.models.item_tables import ItemTables, item_tables
from recspark.models.towers import TowersModel, build_towers_model

# The single-unknown layout (PAD, unknown, then items from 2): small models, fast tests.
FIRST_ITEM = C.ItemLayout(oov_buckets=1).first_item
MAX_SEQ_LEN = 4
USER_DIM = 2
CAT_A, CAT_B = FIRST_ITEM, FIRST_ITEM + 1
A_ITEMS = np.arange(2, 12)  # item_idx of category A
B_ITEMS = np.arange(12, 22)  # item_idx of category B
COLD_A, COLD_B = 22, 23  # one more item per category: id embedding off, never seen in training
TWIN_1, TWIN_2 = 24, 25  # category A, identical attributes, id embedding off, never seen
NUM_ITEMS = 26
SMALL = dict(embedding_dim=8, hidden_units=[16], dropout=0.0, seed=7)


def _tables() -> ItemTables:
    category = np.zeros(NUM_ITEMS, np.int32)
    category[A_ITEMS], category[B_ITEMS] = CAT_A, CAT_B
    category[[COLD_A, TWIN_1, TWIN_2]], category[COLD_B] = CAT_A, CAT_B
    rng = np.random.default_rng(3)
    price = np.zeros(NUM_ITEMS, np.int32)
    price[2:] = rng.integers(1, 4, NUM_ITEMS - 2)  # uninformative prices
    price[TWIN_2] = price[TWIN_1]
    popularity = np.zeros(NUM_ITEMS, np.int32)
    popularity[2:22] = 3
    popularity[22:] = 1
    use_id = np.zeros(NUM_ITEMS, np.float32)
    use_id[2:22] = 1.0
    return ItemTables(category, price, popularity, use_id)


def _task(rows: int, seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """(inputs, target, likes_a) for ``rows`` synthetic examples."""
    rng = np.random.default_rng(seed)
    likes_a = rng.random(rows) < 0.5
    user_vector = np.stack([likes_a, ~likes_a], axis=1).astype(np.float32)
    history = rng.integers(2, 22, (rows, MAX_SEQ_LEN)).astype(np.int32)
    history[rng.random((rows, MAX_SEQ_LEN)) < 0.3] = C.PAD_IDX
    history[:, -1] = rng.integers(2, 22, rows)  # at least one item
    target = np.where(likes_a, rng.choice(A_ITEMS, rows), rng.choice(B_ITEMS, rows)).astype(np.int32)
    return {C.HISTORY: history, C.USER_VECTOR: user_vector}, target, likes_a


def _fit(model: tf.keras.Model, epochs: int = 12) -> tf.keras.callbacks.History:
    """As the trainer does: compile without a loss (the model states its own), then fit."""
    inputs, target, _ = _task(480, seed=1)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.02))
    return model.fit(inputs, target, batch_size=32, epochs=epochs, shuffle=False, verbose=0)


@pytest.fixture(scope="module")
def trained_towers() -> TowersModel:
    tf.keras.utils.set_random_seed(11)
    model = build_towers_model(NUM_ITEMS, MAX_SEQ_LEN, USER_DIM, tables=_tables(), **SMALL)
    history = _fit(model)
    assert history.history["loss"][-1] < history.history["loss"][0]
    return model


@pytest.fixture(scope="module")
def trained_dnn() -> DNNModel:
    tf.keras.utils.set_random_seed(11)
    model = build_dnn_model(NUM_ITEMS, MAX_SEQ_LEN, USER_DIM, tables=_tables(), negatives=4, **SMALL)
    history = _fit(model)
    assert history.history["loss"][-1] < history.history["loss"][0]
    return model


def _liked_share_of_top10(model: tf.keras.Model) -> float:
    """Share of held-out users' top-10 (over A and B items) that lies in the liked category."""
    inputs, _, likes_a = _task(200, seed=2)
    logits = model(inputs, training=False).numpy()[:, 2:22]
    top = np.argsort(-logits, axis=1)[:, :10] + 2
    in_a = np.isin(top, A_ITEMS)
    return float(np.where(likes_a[:, None], in_a, ~in_a).mean())


@pytest.mark.parametrize("builder", ["towers", "dnn"])
def test_output_is_logits_over_the_vocabulary(builder):
    extra = {"negatives": 2} if builder == "dnn" else {}
    build = build_dnn_model if builder == "dnn" else build_towers_model
    model = build(NUM_ITEMS, MAX_SEQ_LEN, USER_DIM, tables=_tables(), **SMALL, **extra)
    inputs, _, _ = _task(5, seed=0)
    logits = model(inputs, training=False)
    assert sorted(model.input_names) == [C.HISTORY, C.USER_VECTOR]
    assert logits.shape == (5, NUM_ITEMS) and logits.dtype == tf.float32
    assert np.isfinite(logits.numpy()).all()


def test_dnn_full_logits_equal_its_pair_logits():
    """The chunked full-vocabulary pass computes the same MLP as the per-pair path (more items than a chunk)."""
    from recspark.models import dnn

    num_items = dnn.SCORE_CHUNK + 37
    model = build_dnn_model(num_items, MAX_SEQ_LEN, USER_DIM, negatives=2, **{**SMALL, "dropout": 0.3})
    inputs, _, _ = _task(3, seed=0)
    full = model(inputs, training=False).numpy()
    items = np.tile(np.arange(num_items), (3, 1))
    pairs = model.pair_logits(inputs, items, training=False).numpy()
    np.testing.assert_allclose(full, pairs, rtol=1e-5, atol=1e-6)


def test_save_and_load_in_a_fresh_process_gives_identical_outputs(trained_towers, trained_dnn, tmp_path):
    """model.keras loads with plain tf.keras.models.load_model in a new interpreter (no custom objects)."""
    inputs, _, _ = _task(7, seed=4)
    np.savez(tmp_path / "inputs.npz", **inputs)
    for name, model in (("towers", trained_towers), ("dnn", trained_dnn)):
        model.save(tmp_path / f"{name}.keras")
        np.save(tmp_path / f"{name}.npy", model(inputs, training=False).numpy())
        # Also in this process: the item tables travel with the weights.
        loaded = tf.keras.models.load_model(tmp_path / f"{name}.keras")
        assert type(loaded) is type(model)
        np.testing.assert_array_equal(loaded.item_attributes.category_table.numpy(), _tables().category)
        np.testing.assert_array_equal(loaded(inputs, training=False).numpy(), model(inputs, training=False).numpy())
    code = (
        "import sys, numpy as np, tensorflow as tf\n"
        "d = sys.argv[1]; x = dict(np.load(d + '/inputs.npz'))\n"
        "for name in ('towers', 'dnn'):\n"
        "    m = tf.keras.models.load_model(d + '/' + name + '.keras')\n"
        "    print(name, float(np.abs(m(x, training=False).numpy() - np.load(d + '/' + name + '.npy')).max()))\n"
    )
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)  # cwd: the package is found as installed, not from ./
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["towers", "0.0", "dnn", "0.0"], run.stdout


def test_towers_learn_the_attribute_task(trained_towers):
    assert _liked_share_of_top10(trained_towers) > 0.9  # chance: 0.5


def test_dnn_learns_the_attribute_task(trained_dnn):
    assert _liked_share_of_top10(trained_dnn) > 0.9  # chance: 0.5


def test_towers_cold_items_are_ranked_by_their_attributes(trained_towers):
    """Items never seen in training, id embedding off: category A's cold item is preferred by the
    users who like A, B's by those who like B; identical attributes give identical scores."""
    inputs, _, likes_a = _task(200, seed=5)
    logits = trained_towers(inputs, training=False).numpy()
    prefers_cold_a = logits[:, COLD_A] > logits[:, COLD_B]
    assert prefers_cold_a[likes_a].mean() > 0.9 and (~prefers_cold_a[~likes_a]).mean() > 0.9
    np.testing.assert_allclose(logits[:, TWIN_1], logits[:, TWIN_2], rtol=1e-6)
    # For A users the cold A item beats most warm B items (the category carries it), although it
    # was a softmax negative in every training example and its popularity bucket was never a target.
    assert (logits[likes_a][:, [COLD_A]] > logits[likes_a][:, B_ITEMS]).mean() > 0.75


def test_id_embedding_is_ignored_where_use_id_is_zero():
    """Changing a cold item's id embedding row changes nothing; changing a warm item's row does."""
    model = build_towers_model(NUM_ITEMS, MAX_SEQ_LEN, USER_DIM, tables=_tables(), **SMALL)
    inputs, _, _ = _task(4, seed=0)
    before = model(inputs, training=False).numpy()
    embedding = model.item_attributes.id_embedding.embeddings
    embedding.scatter_add(tf.IndexedSlices(tf.ones([2, SMALL["embedding_dim"]]), tf.constant([COLD_A, 2])))
    after = model(inputs, training=False).numpy()
    np.testing.assert_array_equal(after[:, COLD_A], before[:, COLD_A])
    assert not np.allclose(after[:, 2], before[:, 2])


def test_dnn_probabilities_rank_positives_above_negatives(trained_dnn):
    inputs, target, likes_a = _task(480, seed=1)  # the training data
    rng = np.random.default_rng(9)
    negative = np.where(likes_a, rng.choice(B_ITEMS, len(target)), rng.choice(A_ITEMS, len(target)))
    users = pd.DataFrame({C.HISTORY: list(inputs[C.HISTORY]), C.USER_VECTOR: list(inputs[C.USER_VECTOR])})
    positive_p = predict_pairs(trained_dnn, users, target, batch_size=100)
    negative_p = predict_pairs(trained_dnn, users, negative, batch_size=100)
    both = np.concatenate([positive_p, negative_p])
    assert both.shape == (2 * len(target),) and ((both > 0) & (both < 1)).all()
    assert (positive_p > negative_p).mean() > 0.9
    # Not "> 0.5": a liked-category item is also a sampled negative about 4 * 10/24 times per
    # positive here, so about 1 / (1 + 4 * 10/24) = 0.375 is the right probability for it.
    assert positive_p.mean() > 0.25 and negative_p.mean() < 0.1
    # predict_pairs agrees with the model's full logits through the sigmoid.
    full = trained_dnn(inputs, training=False).numpy()[np.arange(len(target)), target]
    np.testing.assert_allclose(positive_p, 1 / (1 + np.exp(-full)), rtol=1e-4, atol=1e-6)


def test_dnn_negative_sampling_is_seeded():
    """Same seed and step: same loss; another step draws other negatives."""
    model = build_dnn_model(NUM_ITEMS, MAX_SEQ_LEN, USER_DIM, tables=_tables(), negatives=3, **SMALL)
    inputs, target, _ = _task(32, seed=0)
    first = float(model.sampled_loss(inputs, target, tf.constant(5), training=False))
    again = float(model.sampled_loss(inputs, target, tf.constant(5), training=False))
    other = float(model.sampled_loss(inputs, target, tf.constant(6), training=False))
    assert first == again and first != other


def test_item_tables_from_gold_tables(spark):
    """Vocabulary items get category, 1 + price bucket, log2 popularity and use_id; others stay 0."""
    vocab = spark.createDataFrame(
        [("x", 9, 2), ("y", 3, 3), ("z", 1, 4)], f"{C.ITEM_ID} string, {C.TRAIN_COUNT} long, {C.ITEM_IDX} int")
    features = spark.createDataFrame(
        [("x", 2, 5, 2, 9), ("y", 3, 1, None, 3), ("z", None, None, 0, 1), ("cold", 1, 4, 1, 0)],
        f"{C.ITEM_ID} string, {C.ITEM_IDX} int, {C.CATEGORY_IDX} int, price_bucket int, events_all long")
    tables = item_tables(features, vocab, num_items=6, id_min_count=3)
    np.testing.assert_array_equal(tables.category, [0, 0, 5, 1, 0, 0])
    np.testing.assert_array_equal(tables.price, [0, 0, 3, 0, 1, 0])
    np.testing.assert_array_equal(tables.popularity, [0, 0, 3, 2, 1, 0])  # floor(log2(1 + events))
    np.testing.assert_array_equal(tables.use_id, [0, 0, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="num_items"):
        item_tables(features, vocab, num_items=4)


def test_build_model_by_name_follows_the_model_interface():
    """recspark.models.build_model builds both from a ModelSpec whose ``features`` hold the tables."""
    from recspark.config import TrainConfig
    from recspark.models import ModelSpec, build_model, model_inputs
    from recspark.models.item_tables import feature_spec

    spec = ModelSpec(num_items=NUM_ITEMS, max_seq_len=MAX_SEQ_LEN, features=feature_spec(USER_DIM, _tables()), first_item_idx=FIRST_ITEM)
    train = TrainConfig(embedding_dim=8, hidden_units=[16, 8], negatives=3, dropout=0.1, seed=5)
    for name, cls in (("towers", TowersModel), ("dnn", DNNModel)):
        model = build_model(name, spec, train)
        assert type(model) is cls and model_inputs(name) == [C.HISTORY, C.USER_VECTOR]
        assert model.spec.num_items == NUM_ITEMS and "tables" not in model.spec.features
        assert model.settings["hidden_units"] == [16, 8] and model.settings["seed"] == 5
        np.testing.assert_array_equal(model.item_attributes.use_id_table.numpy(), _tables().use_id)
    assert build_model("dnn", spec, train).settings["negatives"] == 3
    with pytest.raises(ValueError, match="features"):
        build_model("towers", ModelSpec(num_items=NUM_ITEMS, max_seq_len=MAX_SEQ_LEN, first_item_idx=FIRST_ITEM), train)


def test_feature_models_leave_the_sequence_models_alone():
    """Building a feature model (a functional model under Recommender) must not turn Recommender
    into a functional model for the process: a sequence model built afterwards still builds and runs.

    What this catches: FeatureModel reaching Functional through tf.keras.Model.__init__(inputs=,
    outputs=) instead of naming it as a base, which makes tf-keras rewrite Recommender's bases.
    """
    from recspark.config import TrainConfig
    from recspark.models import ModelSpec, build_model
    from recspark.models.base import Recommender, SequenceRecommender

    towers = build_towers_model(NUM_ITEMS, MAX_SEQ_LEN, USER_DIM, tables=_tables(), **SMALL)
    assert towers(_task(2, seed=0)[0], training=False).shape == (2, NUM_ITEMS)
    assert Recommender.__bases__ == (tf.keras.Model,)
    assert not any(base.__name__ == "Functional" for base in SequenceRecommender.__mro__)
    sequence = build_model("mean_pool", ModelSpec(num_items=NUM_ITEMS, max_seq_len=MAX_SEQ_LEN, first_item_idx=FIRST_ITEM),
                           TrainConfig(embedding_dim=8, seed=5))
    assert sequence(sequence.dummy_inputs(rows=3), training=False).shape == (3, NUM_ITEMS)


def test_user_vector_dim_is_the_one_length_of_the_vectors(spark):
    from recspark.models.item_tables import user_vector_dim

    users = spark.createDataFrame([("u1", [0.5, -1.0]), ("u3", [2.0, 2.0])], f"{C.USER_ID} string, {C.USER_VECTOR} array<float>")
    assert user_vector_dim(users) == 2
    ragged = spark.createDataFrame([("u1", [0.5, -1.0]), ("u3", [2.0])], f"{C.USER_ID} string, {C.USER_VECTOR} array<float>")
    with pytest.raises(ValueError, match="one fixed length, found 1..2"):
        user_vector_dim(ragged)


@pytest.mark.parametrize("name", ["dnn", "towers"])
def test_two_rank_training_from_petastorm_then_spark_scoring(spark, tmp_path, name):
    """The whole path: examples with user_vector in Spark, 2 Horovod ranks fed by Petastorm
    (ranks agree), the export loaded, and the Spark scorer ranking the liked category first."""
    from pyspark.sql import functions as F

    from recspark.config import TrainConfig
    from recspark.models import ModelSpec
    from recspark.models.item_tables import feature_spec
    from recspark.models.training import load_model, train_distributed
    from recspark.scoring import SEEN_IDX, recommend

    # 40 users, 12 examples each: even users like A, odd ones B; histories are the task's noise.
    inputs, _, _ = _task(480, seed=1)
    rng = np.random.default_rng(2)
    rows = [(f"u{i % 40}", inputs[C.HISTORY][i].tolist(), int(rng.choice(A_ITEMS if i % 2 == 0 else B_ITEMS)))
            for i in range(480)]
    examples = spark.createDataFrame(rows, f"{C.USER_ID} string, {C.HISTORY} array<int>, {C.TARGET} int")
    users = spark.createDataFrame([(f"u{u}", [1.0, 0.0] if u % 2 == 0 else [0.0, 1.0]) for u in range(40)],
                                  f"{C.USER_ID} string, {C.USER_VECTOR} array<float>")
    spec = ModelSpec(num_items=NUM_ITEMS, max_seq_len=MAX_SEQ_LEN, features=feature_spec(USER_DIM, _tables()), first_item_idx=FIRST_ITEM)
    config = TrainConfig(models=[name], num_proc=2, epochs=4, batch_size=16, learning_rate=0.01, embedding_dim=8,
                         hidden_units=[16], negatives=4, dropout=0.0, seed=3, early_stopping_patience=0)
    result = train_distributed(spark, examples.join(users, C.USER_ID), model=name, spec=spec,
                               train_config=config, model_dir=tmp_path / name,
                               cache_url=(tmp_path / "petastorm").as_uri())
    rank0, rank1 = result.rank_results
    assert rank0.weights is not None and rank1.weights is not None
    for w0, w1 in zip(rank0.weights, rank1.weights):
        np.testing.assert_allclose(w0, w1, rtol=0, atol=1e-6)
    assert result.history[-1] < result.history[0]

    model, meta = load_model(tmp_path / name)
    assert meta["inputs"] == [C.HISTORY, C.USER_VECTOR] and type(model).__name__ in ("DNNModel", "TowersModel")
    np.testing.assert_array_equal(model.item_attributes.category_table.numpy(), _tables().category)

    histories = (examples.groupBy(C.USER_ID).agg(F.first(C.HISTORY).alias(C.HISTORY))
                 .withColumn(SEEN_IDX, F.array().cast("array<int>")).join(users, C.USER_ID))
    vocab = spark.createDataFrame([(f"i{i}", i) for i in range(2, NUM_ITEMS)], f"{C.ITEM_ID} string, {C.ITEM_IDX} int")
    top1 = (recommend(histories, vocab, str(tmp_path / name), k=1, exclude_seen=False)
            .select(C.USER_ID, C.ITEM_ID).collect())
    assert len(top1) == 40
    hits = [int(r[C.ITEM_ID][1:]) in (A_ITEMS if int(r[C.USER_ID][1:]) % 2 == 0 else B_ITEMS) for r in top1]
    assert np.mean(hits) > 0.8, hits  # chance: 0.5


def test_with_pair_probability_in_spark_matches_predict_pairs(spark, trained_dnn, tmp_path):
    """The Spark UDF loads the exported model and gives the same probabilities as predict_pairs."""
    from recspark.scoring import PROBABILITY, with_pair_probability

    model_dir = tmp_path / "dnn"
    model_dir.mkdir()
    trained_dnn.save(model_dir / "model.keras")
    (model_dir / "model_meta.json").write_text(json.dumps({"num_items": NUM_ITEMS, "inputs": [C.HISTORY, C.USER_VECTOR]}))
    inputs, target, _ = _task(30, seed=6)
    rows = [(i, inputs[C.HISTORY][i].tolist(), inputs[C.USER_VECTOR][i].tolist(), int(target[i])) for i in range(30)]
    pairs = spark.createDataFrame(rows, f"row int, {C.HISTORY} array<int>, {C.USER_VECTOR} array<float>, {C.ITEM_IDX} int")
    got = with_pair_probability(pairs, str(model_dir)).orderBy("row").select(PROBABILITY).toPandas()[PROBABILITY]
    users = pd.DataFrame({C.HISTORY: list(inputs[C.HISTORY]), C.USER_VECTOR: list(inputs[C.USER_VECTOR])})
    np.testing.assert_allclose(got.to_numpy(), predict_pairs(trained_dnn, users, target), rtol=1e-5, atol=1e-6)
