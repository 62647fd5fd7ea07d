"""User-level DP-SGD (train.privacy): the Poisson user sample split over ranks, per-user clipping that
bounds one user's effect on a step however large their data, the noise of one draw at the right
scale, and a real 2-rank Horovod-on-Spark run whose ranks end with identical weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from conftest import next_item_examples
from pyspark.sql import functions as F

from recspark import constants as C
from recspark import dp_accountant
from recspark.config import DPConfig, TrainConfig
from recspark.dp_accountant import DPPlan
from recspark.models import ModelSpec, build_model
from recspark.models.dp_sgd import UserSampler, make_train_step
from recspark.models.item_tables import ItemTables
from recspark.models.towers import build_towers_model
from recspark.models.training import META_FILE, load_model, train_distributed

FIRST_ITEM = C.ItemLayout(oov_buckets=1).first_item
MAX_SEQ_LEN = 4


def _plan(*, noise: float = 0.0, clip: float = 1.0, users: int = 100, q: float = 0.08, per_user: int = 1) -> DPPlan:
    return DPPlan(noise_multiplier=noise, clip_norm=clip, sampling_rate=q, num_users=users,
                  steps_per_epoch=int(np.ceil(1 / q)), planned_steps=10, delta=1e-3, examples_per_user=per_user,
                  accountant="rdp")


def _sampler_rows(users: int = 30) -> dict[str, np.ndarray]:
    """User u has 1 + u % 5 rows; target = the user's number, history[:, 0] = the row's number."""
    owner = np.repeat(np.arange(users), 1 + np.arange(users) % 5)
    shuffled = np.random.default_rng(0).permutation(len(owner))  # rows arrive in no particular order
    owner = owner[shuffled]
    history = np.zeros((len(owner), MAX_SEQ_LEN), np.int32)
    history[:, 0] = np.arange(len(owner))
    return {C.USER_ID: np.array([f"user-{u:03d}" for u in owner], dtype=object), C.HISTORY: history,
            C.TARGET: owner.astype(np.int32)}


def test_user_sampler_is_poisson_over_users_split_between_ranks_without_overlap():
    rows, q, per_user = _sampler_rows(), 0.3, 2
    plan = _plan(users=30, q=q, per_user=per_user)
    ranks = [UserSampler(dict(rows), plan, rank=r, size=2, seed=5) for r in range(2)]
    counts = np.bincount(rows[C.TARGET])
    sizes = []
    for step in range(400):
        sampled = ranks[0].sampled_users(step)
        assert np.array_equal(sampled, ranks[1].sampled_users(step))  # every rank draws the same users
        sizes.append(len(sampled))
        seen_users, seen_rows = [], []
        for sampler in ranks:
            features, target, splits = sampler.batch(step)
            assert splits[0] == 0 and splits[-1] == len(target) == len(features[C.HISTORY])
            for i in range(len(splits) - 1):
                users = set(target[splits[i]:splits[i + 1]].tolist())
                assert len(users) == 1, users  # a user's slice holds only their rows
                user = users.pop()
                assert splits[i + 1] - splits[i] == min(per_user, counts[user])
                seen_users.append(user)
            seen_rows.extend(features[C.HISTORY][:, 0].tolist())
        # Sampled users are the codes of the sorted ids: user-000 -> 0 and so on.
        assert sorted(seen_users) == sampled.tolist() and len(set(seen_users)) == len(seen_users)
        assert len(set(seen_rows)) == len(seen_rows)  # no row twice: drawn without replacement
    assert np.mean(sizes) / 30 == pytest.approx(q, abs=0.02)
    with pytest.raises(ValueError, match="holds 30 users, the privacy plan was made for 31"):
        UserSampler(dict(rows), _plan(users=31), rank=0, size=1, seed=5)


def _towers():
    """A small towers model whose items differ (id embeddings on, three categories, three prices)."""
    tf.keras.utils.set_random_seed(3)
    items = np.arange(30)
    real = (items >= FIRST_ITEM).astype(np.int32)
    tables = ItemTables(category=(2 + items % 3) * real, price=(1 + items % 3) * real, popularity=3 * real,
                        use_id=real.astype(np.float32))
    model = build_towers_model(30, MAX_SEQ_LEN, 2, embedding_dim=8, hidden_units=[16], dropout=0.0, seed=7,
                               tables=tables)
    model.compile(optimizer=tf.keras.optimizers.SGD(1.0))
    return model


def _update(model, initial, plan, data, rank: int = 0) -> np.ndarray:
    """The change of every weight by one DP step (SGD, learning rate 1) from ``initial``."""
    model.set_weights(initial)
    make_train_step(model, plan, rank=rank, size=1)(tf.nest.map_structure(tf.convert_to_tensor, data))
    return np.concatenate([(after - before).ravel() for after, before in zip(model.get_weights(), initial)])


def test_clipping_bounds_one_users_contribution_however_large_their_data():
    """8 users of 3 rows; then user 3's user_vector scaled up 1000 times, and then user 3 removed.
    With clip norm C and 8 expected users, the step moves by at most C/8 per user: replacing one
    user's data changes it by at most 2C/8, removing them by at most C/8. Without clipping the scaled
    user alone would move it far more (the test can fail)."""
    model = _towers()
    initial = model.get_weights()
    rng = np.random.default_rng(1)
    users, per_user = 8, 3
    features = {C.HISTORY: rng.integers(2, 30, (users * per_user, MAX_SEQ_LEN)).astype(np.int32),
                C.USER_VECTOR: rng.random((users * per_user, 2)).astype(np.float32)}
    target = rng.integers(2, 30, users * per_user).astype(np.int32)
    splits = np.arange(0, users * per_user + 1, per_user).astype(np.int32)
    scaled = {name: values.copy() for name, values in features.items()}
    scaled[C.USER_VECTOR][3 * per_user:4 * per_user] *= 1000.0
    without = {name: np.delete(values, np.s_[3 * per_user:4 * per_user], axis=0) for name, values in features.items()}
    without_target, without_splits = np.delete(target, np.s_[3 * per_user:4 * per_user]), splits[:-1]

    clip = 0.05
    plan = _plan(clip=clip, users=100, q=0.08, per_user=per_user)  # 8 expected users per step
    base = _update(model, initial, plan, (features, target, splits))
    assert 0 < np.linalg.norm(base) <= users * clip / 8 + 1e-6
    changed = _update(model, initial, plan, (scaled, target, splits))
    assert np.linalg.norm(changed - base) <= 2 * clip / 8 + 1e-6
    removed = _update(model, initial, plan, (without, without_target, without_splits))
    assert np.linalg.norm(removed - base) <= clip / 8 + 1e-6
    # Clipping is what bounds it: with a bound too large to bite, the scaled user dominates.
    loose = _plan(clip=1e9, users=100, q=0.08, per_user=per_user)
    unclipped = _update(model, initial, loose, (scaled, target, splits)) - _update(model, initial, loose,
                                                                                  (features, target, splits))
    assert np.linalg.norm(unclipped) > 100 * 2 * clip / 8


def test_noise_is_one_draw_of_std_sigma_c_added_by_rank_0_only():
    """A step with no sampled user moves the weights by the noise alone, divided by the expected
    users (1 here): std sigma x C on rank 0 in every coordinate, none at all on any other rank."""
    spec = ModelSpec(num_items=FIRST_ITEM + 400, max_seq_len=MAX_SEQ_LEN, first_item_idx=FIRST_ITEM)
    tf.keras.utils.set_random_seed(4)
    model = build_model("mean_pool", spec, TrainConfig(embedding_dim=16, seed=4))
    model.compile(optimizer=tf.keras.optimizers.SGD(1.0))
    initial = model.get_weights()
    empty = ({C.HISTORY: np.zeros((0, MAX_SEQ_LEN), np.int32)}, np.zeros(0, np.int32), np.zeros(1, np.int32))
    plan = _plan(noise=2.0, clip=0.5, users=100, q=0.01)
    noise = _update(model, initial, plan, empty, rank=0)
    assert noise.size > 6000 and np.std(noise) == pytest.approx(1.0, rel=0.05) and abs(np.mean(noise)) < 0.05
    assert not np.any(_update(model, initial, plan, empty, rank=1))
    # Not regenerable from the public seed: the same seeds and weights, another draw.
    tf.keras.utils.set_random_seed(4)
    again = _update(model, initial, plan, empty, rank=0)
    assert np.corrcoef(noise, again)[0, 1] < 0.1


def test_the_sampling_seed_is_secret_and_fresh_per_plan():
    """Which users a step used must not be computable from anything published: the plan's sampling
    seed comes from the OS, differs per run and is neither in its repr nor in the report."""
    plans = [dp_accountant.plan(DPConfig(enabled=True, noise_multiplier=1.0), num_users=100, users_per_step=10,
                                epochs=1) for _ in range(2)]
    assert plans[0].sampling_seed != plans[1].sampling_seed
    for plan in plans:
        assert str(plan.sampling_seed) not in repr(plan) and str(plan.sampling_seed) not in json.dumps(plan.report(5))


def test_two_rank_dp_training_agrees_and_reports_its_budget(spark, tmp_path):
    """mean_pool with train.privacy on 2 Horovod ranks: the driver checks the ranks' final weights are
    identical (train_distributed raises otherwise), and model_meta.json records the spent budget of
    the steps taken, as dp-accounting computes it for this plan."""
    real_items = 10
    spec = ModelSpec(num_items=FIRST_ITEM + real_items, max_seq_len=6, first_item_idx=FIRST_ITEM)
    examples = next_item_examples(spark, 480, 6, real_items, first_item=FIRST_ITEM).withColumn(
        C.USER_ID, F.concat(F.lit("user-"), F.pmod(F.xxhash64(C.HISTORY, C.TARGET), F.lit(40)).cast("string")))
    assert examples.select(C.USER_ID).distinct().count() == 40
    privacy = DPConfig(enabled=True, noise_multiplier=1.0, clip_norm=1.0, examples_per_user=4)
    config = TrainConfig(models=["mean_pool"], num_proc=2, epochs=2, batch_size=4, learning_rate=0.01,
                         embedding_dim=8, seed=11, privacy=privacy)
    result = train_distributed(spark, examples, model="mean_pool", spec=spec, train_config=config,
                               model_dir=tmp_path / "model", cache_url=(tmp_path / "petastorm").as_uri())
    rank0, rank1 = result.rank_results
    assert result.ranks_agree and rank0.weights is not None
    for w0, w1 in zip(rank0.weights, rank1.weights):
        np.testing.assert_array_equal(w0, w1)
    assert rank0.initial_digests != rank0.final_digests  # it trained
    # 40 users, 8 expected per step (batch_size x num_proc): q = 0.2, 5 steps per epoch.
    assert rank0.steps_per_epoch == rank1.steps_per_epoch == 5
    meta = json.loads((tmp_path / "model" / META_FILE).read_text())
    assert meta["privacy"] == result.privacy and rank1.privacy is None
    assert meta["privacy"]["steps"] == 10 and meta["privacy"]["sampling_rate"] == pytest.approx(0.2)
    assert meta["privacy"]["delta"] == pytest.approx(1 / 40)
    assert meta["privacy"]["epsilon"] == round(dp_accountant.epsilon(0.2, 1.0, 10, 1 / 40), 4) > 0
    model, _ = load_model(tmp_path / "model")
    for exported, trained in zip(model.get_weights(), rank0.weights):
        np.testing.assert_array_equal(exported, trained)


@pytest.mark.parametrize("name", ["sasrec", "repeatnet"])
def test_dp_step_trains_the_sequence_models_through_fit(name):
    """The DP step compiled by Keras (graph mode, as the ranks run it) for a Transformer with dropout
    and for repeatnet's basket targets and float repeat features: finite losses, weights moved."""
    from recspark.constants import REPEAT_FEATURE_COUNT
    from recspark.models.dp_sgd import install, user_dataset

    rng = np.random.default_rng(2)
    rows, length, candidates = 120, 6, 3
    spec = ModelSpec(num_items=FIRST_ITEM + 10, max_seq_len=length, num_event_types=5, num_gap_buckets=4,
                     repeat_candidates=candidates, first_item_idx=FIRST_ITEM)
    data = {C.USER_ID: np.array([f"u{i % 20}" for i in range(rows)], dtype=object),
            C.HISTORY: rng.integers(FIRST_ITEM, FIRST_ITEM + 10, (rows, length)).astype(np.int32),
            C.HISTORY_TYPES: rng.integers(1, 4, (rows, length)).astype(np.int32),
            C.HISTORY_GAPS: rng.integers(1, 5, (rows, length)).astype(np.int32),
            C.TARGET: rng.integers(FIRST_ITEM, FIRST_ITEM + 10, rows).astype(np.int32)}
    if name == "repeatnet":
        data[C.TARGET] = rng.integers(FIRST_ITEM, FIRST_ITEM + 10, (rows, 3)).astype(np.int32)
        data[C.REPEAT_ITEMS] = data[C.HISTORY][:, -candidates:].copy()
        data[C.REPEAT_FEATURES] = rng.random((rows, candidates * REPEAT_FEATURE_COUNT)).astype(np.float32)
    tf.keras.utils.set_random_seed(5)
    model = build_model(name, spec, TrainConfig(embedding_dim=8, num_layers=1, num_heads=2, dropout=0.2, seed=5))
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    plan = _plan(noise=0.5, clip=1.0, users=20, q=0.25, per_user=2)
    install(model, plan, rank=0, size=1)
    before = model.get_weights()
    sampler = UserSampler(data, plan, rank=0, size=1, seed=5)
    history = model.fit(user_dataset(sampler, model.INPUTS, first_step=0), epochs=2,
                        steps_per_epoch=plan.steps_per_epoch, verbose=0)
    assert len(history.history["loss"]) == 2 and np.all(np.isfinite(history.history["loss"]))
    after = model.get_weights()
    assert all(np.isfinite(w).all() for w in after)
    assert any(not np.array_equal(a, b) for a, b in zip(after, before))
