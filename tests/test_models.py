"""Models: shapes, padding and causality of SASRec, save/load round trips, and that they learn.

Plain Keras ``fit`` here (no Horovod): tests/test_training.py trains through Horovod on Spark.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from recspark import constants as C
from recspark.config import TrainConfig
from recspark.models import ModelSpec, build_model, model_inputs
from recspark.models.training import META_FILE, MODEL_FILE, load_model

MAX_SEQ_LEN = 6
REAL_ITEMS = 20
# The single-unknown layout (PAD, unknown, then items from 2): small models, fast tests.
FIRST_ITEM = C.ItemLayout(oov_buckets=1).first_item
NUM_ITEMS = FIRST_ITEM + REAL_ITEMS
EVENT_TYPES = 3  # ingest.event_types of length 3: ids 1..3, 4 unknown, 0 pad
GAP_BUCKETS = 4
SPEC = ModelSpec(num_items=NUM_ITEMS, max_seq_len=MAX_SEQ_LEN, num_event_types=EVENT_TYPES + 2,
                 num_gap_buckets=GAP_BUCKETS, item_counts=[0] * FIRST_ITEM + [100 - i for i in range(REAL_ITEMS)], first_item_idx=FIRST_ITEM)


def _config(**overrides) -> TrainConfig:
    values = dict(embedding_dim=16, num_layers=2, num_heads=2, dropout=0.1, seed=3, learning_rate=0.01)
    return TrainConfig(**{**values, **overrides})


def _successor_task(rows: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Runs of consecutive items (item i is always followed by i + 1, wrapping), left-padded, with
    random event types and gaps on the real steps; the target is the item after the last one."""
    rng = np.random.default_rng(seed)
    history = np.zeros((rows, MAX_SEQ_LEN), np.int32)
    types = np.zeros_like(history)
    gaps = np.zeros_like(history)
    target = np.zeros(rows, np.int32)
    for row in range(rows):
        length = int(rng.integers(1, MAX_SEQ_LEN + 1))
        start = int(rng.integers(REAL_ITEMS))
        items = [(start + step) % REAL_ITEMS for step in range(length + 1)]
        history[row, MAX_SEQ_LEN - length:] = [FIRST_ITEM + i for i in items[:-1]]
        types[row, MAX_SEQ_LEN - length:] = rng.integers(1, EVENT_TYPES + 2, size=length)
        gaps[row, MAX_SEQ_LEN - length:] = np.sort(rng.integers(1, GAP_BUCKETS + 1, size=length))[::-1]
        target[row] = FIRST_ITEM + items[-1]
    return {C.HISTORY: history, C.HISTORY_TYPES: types, C.HISTORY_GAPS: gaps}, target


def _accuracy(model: tf.keras.Model, inputs: dict[str, np.ndarray], target: np.ndarray) -> float:
    logits = model.predict(inputs, verbose=0, batch_size=256)
    logits[:, [C.PAD_IDX, C.OOV_IDX]] = -np.inf
    return float(np.mean(logits.argmax(axis=1) == target))


def test_declared_inputs_are_gold_columns() -> None:
    assert model_inputs("mean_pool") == [C.HISTORY]
    assert model_inputs("sasrec") == [C.HISTORY, C.HISTORY_TYPES, C.HISTORY_GAPS]
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        model_inputs("nope")


@pytest.mark.parametrize("name", ["mean_pool", "sasrec"])
def test_logits_cover_the_vocabulary_and_ignore_padding(name: str) -> None:
    model = build_model(name, SPEC, _config())
    inputs, _ = _successor_task(8, seed=1)
    logits = model(inputs, training=False).numpy()
    assert logits.shape == (8, NUM_ITEMS) and np.isfinite(logits).all()

    # Whatever the padded steps say (types, gaps), the output is the same.
    rng = np.random.default_rng(2)
    padded = inputs[C.HISTORY] == C.PAD_IDX
    assert padded.any(), "the test data must have padding"
    altered = {key: value.copy() for key, value in inputs.items()}
    altered[C.HISTORY_TYPES][padded] = rng.integers(0, EVENT_TYPES + 2, size=int(padded.sum()))
    altered[C.HISTORY_GAPS][padded] = rng.integers(0, GAP_BUCKETS + 1, size=int(padded.sum()))
    np.testing.assert_allclose(model(altered, training=False).numpy(), logits, rtol=0, atol=1e-6)


def test_sasrec_is_causal_and_reads_every_real_step() -> None:
    model = build_model("sasrec", SPEC, _config())
    inputs, _ = _successor_task(16, seed=4)
    full = {key: value.copy() for key, value in inputs.items()}
    full[C.HISTORY][:, :] = np.arange(MAX_SEQ_LEN) + FIRST_ITEM  # no padding: every step real
    states = model.sequence_states(full).numpy()

    # Changing step 3 changes the states of steps 3.. and leaves steps 0..2 exactly as they were.
    changed = {key: value.copy() for key, value in full.items()}
    changed[C.HISTORY][:, 3] = FIRST_ITEM + REAL_ITEMS - 1
    changed_states = model.sequence_states(changed).numpy()
    np.testing.assert_array_equal(changed_states[:, :3], states[:, :3])
    assert np.abs(changed_states[:, 3:] - states[:, 3:]).max(axis=2).min() > 1e-4

    # The last position (the user vector) depends on the earliest step's item, type and gap.
    base = model(full).numpy()
    for column, value in ((C.HISTORY, FIRST_ITEM + 7), (C.HISTORY_TYPES, 4), (C.HISTORY_GAPS, 1)):
        earlier = {key: value_.copy() for key, value_ in full.items()}
        earlier[column][:, 0] = value
        assert np.abs(model(earlier).numpy() - base).max() > 1e-4, f"the first step's {column} was ignored"


@pytest.mark.parametrize("layers", [1, 2])
def test_the_user_vector_is_the_latest_state_of_the_full_pass(layers: int) -> None:
    """user_vectors computes only the latest step in the last block: it must equal the last state of
    the pass over every step, in training (dropout off) and inference, padded rows and an empty one too."""
    model = build_model("sasrec", SPEC, _config(num_layers=layers, dropout=0.0))
    inputs, _ = _successor_task(16, seed=6)
    inputs[C.HISTORY][0, :] = C.PAD_IDX  # a row with no history at all
    assert (inputs[C.HISTORY][1:] == C.PAD_IDX).any(), "the test data must have padded rows"
    tensors = {key: tf.constant(value) for key, value in inputs.items()}
    for training in (False, True):
        full = model.sequence_states(tensors, training=training).numpy()
        latest = model.user_vectors(tensors, training=training).numpy()
        assert latest.shape == (16, 16)
        np.testing.assert_allclose(latest, full[:, -1, :], rtol=0, atol=1e-5)
    # The earlier steps do change it (the shortcut still reads every key): a different first item moves it.
    changed = {key: value.copy() for key, value in inputs.items()}
    changed[C.HISTORY][1:, 0] = FIRST_ITEM + 5
    assert np.abs(model.user_vectors(changed).numpy()[1:] - latest[1:]).max() > 1e-4


def test_same_seed_same_model_other_seed_other_model() -> None:
    inputs, _ = _successor_task(4, seed=5)
    first = build_model("sasrec", SPEC, _config(seed=9))(inputs).numpy()
    again = build_model("sasrec", SPEC, _config(seed=9))(inputs).numpy()
    other = build_model("sasrec", SPEC, _config(seed=10))(inputs).numpy()
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3


@pytest.mark.parametrize("name", ["mean_pool", "sasrec"])
def test_save_and_load_model_round_trip(name: str, tmp_path) -> None:
    config = _config(softmax="sampled", sampler="popularity", num_sampled=5)
    model = build_model(name, SPEC, config)
    inputs, target = _successor_task(64, seed=6)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    model.fit(inputs, target, epochs=1, batch_size=16, verbose=0)  # trained weights, not just initial ones
    model.save(tmp_path / MODEL_FILE)
    (tmp_path / META_FILE).write_text(json.dumps({"num_items": NUM_ITEMS, "inputs": model_inputs(name)}))

    loaded, meta = load_model(tmp_path)
    assert type(loaded) is type(model) and meta["inputs"] == model_inputs(name)
    assert loaded.spec == SPEC and loaded.settings == model.settings
    np.testing.assert_array_equal(loaded(inputs).numpy(), model(inputs).numpy())


@pytest.mark.parametrize("softmax, sampler", [("full", "log_uniform"), ("sampled", "log_uniform"),
                                              ("sampled", "popularity")])
def test_sasrec_learns_the_successor_task(softmax: str, sampler: str) -> None:
    """Chance is 1 / 20 = 5%; after training the held-out next item must be top-1 at least 80% of the time."""
    tf.keras.utils.set_random_seed(0)
    model = build_model("sasrec", SPEC, _config(softmax=softmax, sampler=sampler, num_sampled=5))
    train_inputs, train_target = _successor_task(800, seed=7)
    test_inputs, test_target = _successor_task(200, seed=8)
    before = _accuracy(model, test_inputs, test_target)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    history = model.fit(train_inputs, train_target, epochs=6, batch_size=32, verbose=0)
    after = _accuracy(model, test_inputs, test_target)
    assert before < 0.3, before
    assert after >= 0.8, (after, history.history["loss"])
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_evaluation_loss_is_always_the_full_softmax() -> None:
    """Same seed, same weights: the sampled model's evaluation loss (training=False) is the full one,
    while its training loss is the sampled one."""
    inputs, target = _successor_task(64, seed=9)
    full = build_model("sasrec", SPEC, _config(softmax="full", dropout=0.0))
    sampled = build_model("sasrec", SPEC, _config(softmax="sampled", num_sampled=3, dropout=0.0))
    full_eval = float(full.compute_training_loss(inputs, target, training=False))
    assert float(sampled.compute_training_loss(inputs, target, training=False)) == pytest.approx(full_eval, rel=1e-6)
    sampled_train = float(sampled.compute_training_loss(inputs, target, training=True))
    assert np.isfinite(sampled_train) and abs(sampled_train - full_eval) > 1e-3


def test_sasrec_training_loss_is_every_step_predicting_the_next() -> None:
    """By hand from the model's own step states: each real step's full softmax cross-entropy of the
    step after it (the target after the last step), averaged over the pairs; a next step outside
    the vocabulary (here the unknown OOV_IDX) is no pair."""
    inputs, target = _successor_task(16, seed=11)
    history = inputs[C.HISTORY].copy()
    history[0, -2] = C.OOV_IDX  # row 0: its step before the last now predicts nothing, its last step reads OOV
    inputs = {**inputs, C.HISTORY: history}
    model = build_model("sasrec", SPEC, _config(softmax="full", dropout=0.0))
    states = model.sequence_states({k: tf.constant(v) for k, v in inputs.items()}, training=True).numpy()
    items = model.output_embeddings().numpy()
    bias = model.output_bias.numpy()
    losses = []
    for row in range(len(target)):
        following = list(history[row, 1:]) + [target[row]]
        for step in range(MAX_SEQ_LEN):
            if history[row, step] != C.PAD_IDX and following[step] >= FIRST_ITEM:
                logits = states[row, step] @ items.T + bias
                log_norm = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max()
                losses.append(log_norm - logits[following[step]])
    assert len(losses) > len(target)  # more pairs than rows: the successor rows are 1-6 steps long
    got = float(model.compute_training_loss(inputs, target, training=True))
    assert got == pytest.approx(float(np.mean(losses)), rel=1e-5)
    # Outside training only the last step counts: a different number.
    assert float(model.compute_training_loss(inputs, target, training=False)) != pytest.approx(got, rel=1e-3)
