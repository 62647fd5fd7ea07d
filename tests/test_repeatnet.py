"""RepeatNet: the repeat head scores only the user's own items, the gate stays in [0, 1], the model
saves and loads, and it learns a re-buy task that the explore head alone cannot."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from recspark import constants as C
from recspark.config import TrainConfig
from recspark.models import ModelSpec, build_model
from recspark.models.training import load_model

MAX_SEQ_LEN = 8
FIRST = C.first_vocab_index(4)  # the default layout shape: PAD, unknown, 4 hashed buckets, then items
REAL_ITEMS = 30
NUM_ITEMS = FIRST + REAL_ITEMS
CANDIDATES = 6
SPEC = ModelSpec(num_items=NUM_ITEMS, max_seq_len=MAX_SEQ_LEN, num_event_types=5, num_gap_buckets=4,
                 first_item_idx=FIRST, repeat_candidates=CANDIDATES)


def _config(**overrides) -> TrainConfig:
    return TrainConfig(**{**dict(embedding_dim=16, num_layers=1, num_heads=2, dropout=0.0, seed=5,
                                 learning_rate=0.01), **overrides})


def _inputs(histories: list[list[int]]) -> dict[str, np.ndarray]:
    history = np.zeros((len(histories), MAX_SEQ_LEN), np.int32)
    for row, items in enumerate(histories):
        if items:
            history[row, MAX_SEQ_LEN - len(items):] = items
    real = (history != C.PAD_IDX).astype(np.int32)
    gaps = real * np.arange(MAX_SEQ_LEN, 0, -1)[None, :].clip(1, 4).astype(np.int32)
    # A repeat profile as the features stage builds it, simplified: each history item of the
    # vocabulary once, most frequent first, with its log count as the first feature.
    items = np.zeros((len(histories), CANDIDATES), np.int32)
    features = np.zeros((len(histories), CANDIDATES, C.REPEAT_FEATURE_COUNT), np.float32)
    for row, steps in enumerate(histories):
        counts = {i: steps.count(i) for i in steps if i >= FIRST}
        for slot, (item, n) in enumerate(sorted(counts.items(), key=lambda kv: -kv[1])[:CANDIDATES]):
            items[row, slot], features[row, slot, 0] = item, np.log1p(n)
    return {C.HISTORY: history, C.HISTORY_TYPES: real * 3, C.HISTORY_GAPS: gaps, C.REPEAT_ITEMS: items,
            C.REPEAT_FEATURES: features.reshape(len(histories), -1)}


def test_repeat_head_puts_mass_only_on_history_items_and_gate_is_a_share() -> None:
    model = build_model("repeatnet", SPEC, _config())
    # A repeated item, a bucket index (reserved: never recommended), an empty history.
    histories = [[FIRST + 3, FIRST + 5, FIRST + 3], [2, FIRST + 7], []]
    p_repeat, log_explore, gate = (t.numpy() for t in model.distributions(
        {k: tf.constant(v) for k, v in _inputs(histories).items()}))
    assert set(np.flatnonzero(p_repeat[0])) == {FIRST + 3, FIRST + 5}
    assert set(np.flatnonzero(p_repeat[1])) == {FIRST + 7}
    assert np.allclose(p_repeat[:2].sum(axis=1), 1.0, atol=1e-5) and p_repeat[2].sum() == 0
    assert np.all((gate >= 0) & (gate <= 1)) and gate[2] == 0 and 0 < gate[0] < 1
    assert np.allclose(np.exp(log_explore).sum(axis=1), 1.0, atol=1e-4)
    assert np.all(np.exp(log_explore[:, :FIRST]) < 1e-12)  # reserved rows carry no explore mass
    logits = model(_inputs(histories)).numpy()
    mixed = gate[:, None] * p_repeat + (1 - gate[:, None]) * np.exp(log_explore)
    assert np.allclose(np.exp(logits), mixed, atol=1e-6)


def test_explore_ablation_has_no_repeat_head() -> None:
    model = build_model("repeatnet_explore", SPEC, _config())
    inputs = {k: tf.constant(v) for k, v in _inputs([[FIRST, FIRST + 1]]).items() if k in model.INPUTS}
    p_repeat, _, gate = model.distributions(inputs)
    assert float(tf.reduce_sum(p_repeat)) == 0 and float(gate[0]) == 0
    assert not hasattr(model, "gate") and not hasattr(model, "repeat_item_bias")


def _rebuy_task(rows: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each user re-buys the item they bought most often in their history; histories are random
    items from the whole catalogue, so the catalogue softmax alone cannot know which item it is."""
    rng = np.random.default_rng(seed)
    histories, targets = [], []
    for _ in range(rows):
        favourite = int(rng.integers(REAL_ITEMS))
        others = rng.choice([i for i in range(REAL_ITEMS) if i != favourite], size=3, replace=False)
        steps = [favourite] * 3 + list(others)
        rng.shuffle(steps)
        histories.append([FIRST + i for i in steps])
        targets.append([FIRST + favourite, C.PAD_IDX])  # a basket of one, padded
    return _inputs(histories), np.array(targets, np.int32)


def test_repeatnet_learns_to_rebuy_and_round_trips(tmp_path) -> None:
    inputs, target = _rebuy_task(600, seed=1)
    model = build_model("repeatnet", SPEC, _config())
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    model.fit(inputs, target, batch_size=64, epochs=8, verbose=0)
    test_inputs, test_target = _rebuy_task(200, seed=2)
    logits = model.predict(test_inputs, verbose=0)
    accuracy = float(np.mean(logits.argmax(axis=1) == test_target[:, 0]))
    assert accuracy > 0.9  # chance among the 4 distinct history items is 0.25
    model.save(tmp_path / "model.keras")
    loaded = tf.keras.models.load_model(tmp_path / "model.keras")
    assert np.allclose(loaded.predict(test_inputs, verbose=0), logits, atol=1e-5)
    assert loaded.__class__.__name__ == "RepeatNet" and load_model is not None


def test_encoder_reads_the_latest_steps_and_the_repeat_head_the_whole_profile() -> None:
    from recspark.models.repeatnet import RepeatNet

    class ShortEncoder(RepeatNet):
        ENCODER_STEPS = 4

    model = ShortEncoder(spec=SPEC.to_dict(), settings=build_model("repeatnet", SPEC, _config()).settings)
    recent = [FIRST + 1, FIRST + 2, FIRST + 3, FIRST + 4]
    a, b = _inputs([[FIRST + 9, FIRST + 9] + recent]), _inputs([[FIRST + 8, FIRST + 7] + recent])
    assert np.allclose(model.user_vectors(a).numpy(), model.user_vectors(b).numpy())
    p_a, _, _ = model.distributions({k: tf.constant(v) for k, v in a.items()})
    assert p_a.numpy()[0, FIRST + 9] > 0  # an item older than the encoder's steps is still a repeat candidate
    assert model.user_vectors(a).shape[0] == 1


def _rewrite_spec(path, change) -> None:
    """Rewrites the spec stored in a saved ``model.keras`` (a zip with config.json), as an export
    made by another recspark would hold it."""
    import json
    import zipfile

    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(files["config.json"])
    change(config["config"]["spec"])
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)


def test_a_saved_model_with_another_repeat_feature_count_is_refused_by_name(tmp_path) -> None:
    model = build_model("repeatnet", SPEC, _config())
    model(_inputs([[FIRST, FIRST + 1]]))
    assert model.spec.repeat_features == C.REPEAT_FEATURE_COUNT  # recorded with the export
    cases = {"older": lambda spec: spec.update(repeat_features=C.REPEAT_FEATURE_COUNT - 1),
             "unrecorded": lambda spec: spec.pop("repeat_features")}
    for name, change in cases.items():
        path = tmp_path / f"{name}.keras"
        model.save(path)
        tf.keras.models.load_model(path)  # as saved: loads
        _rewrite_spec(path, change)
        expected = f"{C.REPEAT_FEATURE_COUNT - 1} repeat features" if name == "older" else "an unrecorded number"
        with pytest.raises(Exception, match=expected) as refused:
            tf.keras.models.load_model(path)
        assert f"writes {C.REPEAT_FEATURE_COUNT}" in str(refused.value)


def test_shown_and_ignored_items_add_the_unlikelihood_term_to_the_loss() -> None:
    """loss = mean over rows of (NLL of the basket + w * mean over the row's ignored items of
    -log(1 - p)), p read from the model's own output; w = 0 or no ``ignored`` input: the NLL alone."""
    plain = build_model("repeatnet", SPEC, _config())
    weighted = build_model("repeatnet", SPEC, _config(ignored_weight=0.5))
    assert all(np.array_equal(a, b) for a, b in zip(plain.get_weights(), weighted.get_weights()))
    inputs = _inputs([[FIRST + 3, FIRST + 5, FIRST + 3], [FIRST + 7, FIRST + 8]])
    target = np.array([[FIRST + 3, C.PAD_IDX], [FIRST + 8, C.PAD_IDX]], np.int32)
    ignored = np.array([[FIRST + 5, FIRST + 9, C.PAD_IDX], [C.PAD_IDX] * 3], np.int32)
    p = np.exp(plain(inputs).numpy().astype(np.float64))
    nll = -np.log([p[0, FIRST + 3], p[1, FIRST + 8]])
    unlikely = -(np.log(1 - p[0, FIRST + 5]) + np.log(1 - p[0, FIRST + 9])) / 2
    loss = lambda model, extra: float(model.compute_training_loss({**inputs, **extra}, target, training=False))
    assert loss(plain, {}) == pytest.approx(nll.mean(), rel=1e-5)
    assert loss(plain, {C.IGNORED: ignored}) == pytest.approx(nll.mean(), rel=1e-5)
    assert loss(weighted, {}) == pytest.approx(nll.mean(), rel=1e-5)
    assert loss(weighted, {C.IGNORED: ignored}) == pytest.approx((nll[0] + 0.5 * unlikely + nll[1]) / 2, rel=1e-5)
    # An export from before the setting existed loads as trained without the term.
    old = dict(weighted.get_config(), settings={k: v for k, v in weighted.settings.items() if k != "ignored_weight"})
    assert type(weighted).from_config(old).settings["ignored_weight"] == 0.0


def test_training_on_ignored_items_lowers_their_probability() -> None:
    """Users who bought A and B twice each re-buy A and were shown B and passed it over: with the
    term the model gives B less mass than without it, after the same steps from the same weights."""
    rng = np.random.default_rng(4)
    pairs = [tuple(int(x) for x in rng.choice(REAL_ITEMS, size=2, replace=False)) for _ in range(256)]
    inputs = _inputs([[FIRST + a, FIRST + b, FIRST + a, FIRST + b] for a, b in pairs])
    target = np.array([[FIRST + a, C.PAD_IDX] for a, _ in pairs], np.int32)
    ignored = np.array([[FIRST + b] for _, b in pairs], np.int32)
    p_ignored = {}
    for weight in (0.0, 2.0):
        model = build_model("repeatnet", SPEC, _config(ignored_weight=weight))
        model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
        model.fit({**inputs, C.IGNORED: ignored}, target, batch_size=64, epochs=2, verbose=0, shuffle=False)
        p = np.exp(model.predict(inputs, verbose=0))
        p_ignored[weight] = float(np.mean(p[np.arange(len(pairs)), ignored[:, 0]]))
    assert p_ignored[2.0] < 0.8 * p_ignored[0.0]
