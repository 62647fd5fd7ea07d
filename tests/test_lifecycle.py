"""Training life cycle: checkpoints and their fingerprint, validation NDCG@10, vocabulary growth,
the launcher choice; then real 2-rank Horovod runs (a SIGKILLed rank and the resume, early
stopping, and 2 ranks x batch B against 1 rank x batch 2B)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recspark.config import TrainConfig
from recspark.constants import FIRST_ITEM_IDX, OOV_IDX, PAD_IDX
from recspark.evaluation.metrics import ndcg_at_k
from recspark.models.lifecycle import (RunState, find_resumable_state, fingerprint, grow_weights, horovod_launcher,
                                       ndcg_from_top_k, read_state_arrays, top_k_items, write_state)


# --------------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------------

def test_ndcg_matches_the_reference_metric():
    """Same number as recspark.evaluation.metrics.ndcg_at_k, items outside the vocabulary included."""
    rng = np.random.default_rng(3)
    num_items, users = 40, 60
    logits = rng.normal(size=(users, num_items))
    relevant_lists = [list(rng.choice(np.arange(FIRST_ITEM_IDX, num_items), size=rng.integers(1, 5), replace=False))
                      for _ in range(users)]
    # Some relevant items are unknown to the vocabulary (-1): never hit, but counted in the ideal DCG.
    relevant_lists[0] = relevant_lists[0] + [-1]
    relevant_lists[1] = [-1]
    width = max(map(len, relevant_lists))
    relevant = np.full((users, width), -1)
    for u, items in enumerate(relevant_lists):
        relevant[u, :len(items)] = items
    num_relevant = np.array([len(items) for items in relevant_lists])

    top = top_k_items(logits, 10)
    # The reference: the best 10 of all real items, unknown items as distinct never-predicted ids.
    order = [[int(i) for i in np.argsort(-row, kind="stable") if i >= FIRST_ITEM_IDX][:10] for row in logits]
    assert top.tolist() == order
    reference_relevant = [[i if i >= 0 else f"unknown-{j}" for j, i in enumerate(items)] for items in relevant_lists]
    assert ndcg_from_top_k(top, relevant, num_relevant) == pytest.approx(ndcg_at_k(order, reference_relevant, 10), abs=1e-12)


def test_top_k_never_returns_pad_oov_or_seen():
    logits = np.zeros((1, 8))
    logits[0] = [9, 8, 7, 6, 5, 4, 3, 2]  # PAD and OOV score best
    seen = np.array([[FIRST_ITEM_IDX, PAD_IDX]])
    assert top_k_items(logits, 3).tolist() == [[2, 3, 4]]
    assert top_k_items(logits, 3, seen).tolist() == [[3, 4, 5]]


def test_fingerprint_ignores_epochs_but_not_what_changes_an_epoch():
    base = dataclasses.asdict(TrainConfig())
    spec = {"num_items": 10}
    fp = fingerprint("mean_pool", spec, base, {"train_examples": 3})
    assert fp == fingerprint("mean_pool", spec, {**base, "epochs": 9, "early_stopping_patience": 0}, {"train_examples": 3})
    assert fp != fingerprint("mean_pool", spec, {**base, "learning_rate": 0.1}, {"train_examples": 3})
    assert fp != fingerprint("mean_pool", spec, base, {"train_examples": 4})
    assert fp != fingerprint("sasrec", spec, base, {"train_examples": 3})


def test_checkpoints_are_found_by_fingerprint_and_only_when_complete(tmp_path):
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float32)]
    optimizer = [np.array(7, np.int64), np.full((2, 3), 0.5, np.float32)]
    for epoch in (1, 2):
        write_state(tmp_path, RunState(epoch=epoch, fingerprint="a", loss_history=[1.0] * epoch), weights, optimizer)
    write_state(tmp_path, RunState(epoch=3, fingerprint="b"), weights, optimizer, best_weights=weights)
    # A write interrupted by a kill leaves only a temporary file, and a truncated file does not load.
    (tmp_path / "state" / ".epoch-004.tmp.npz").write_bytes(b"partial")
    (tmp_path / "state" / "epoch-005.npz").write_bytes(b"truncated")

    state = find_resumable_state(tmp_path, "a")
    assert (state.epoch, state.fingerprint, state.loss_history) == (2, "a", [1.0, 1.0])
    assert find_resumable_state(tmp_path, "b").epoch == 3
    assert find_resumable_state(tmp_path, "c") is None
    assert find_resumable_state(tmp_path / "nothing", "a") is None
    got_weights, got_optimizer, best = read_state_arrays(state.path)
    assert best is None
    for got, want in zip(got_weights + got_optimizer, weights + optimizer):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype
    assert read_state_arrays(find_resumable_state(tmp_path, "b").path)[2] is not None


def test_vocabulary_growth_keeps_old_rows_and_initialises_new_ones():
    from recspark.models import ModelSpec, build_model

    train = TrainConfig(embedding_dim=4, seed=3)
    old_model = build_model("mean_pool", ModelSpec(num_items=7, max_seq_len=5), train)
    # Stand-in for training: every old weight moves away from its initial value.
    old = [w + 1.5 for w in old_model.get_weights()]
    new_model = build_model("mean_pool", ModelSpec(num_items=10, max_seq_len=5), train)
    fresh = new_model.get_weights()
    grown = grow_weights(old, fresh, 7, 10)
    new_model.set_weights(grown)  # the shapes fit the bigger model

    item_indexed = 0
    for before, init, after in zip(old, fresh, new_model.get_weights()):
        assert after.shape == init.shape and np.isfinite(after).all()
        if before.shape == after.shape:
            np.testing.assert_array_equal(after, before)
            continue
        item_indexed += 1
        np.testing.assert_array_equal(after[:7], before)  # old items keep their rows
        np.testing.assert_array_equal(after[7:], init[7:])  # new items start fresh...
        assert not np.array_equal(after[7:], before[-3:])
        if init[7:].any():  # ... with the initialiser's values (the output bias starts at zero)
            assert np.abs(after[7:]).max() > 0
    assert item_indexed == 3  # input embedding, output embedding, output bias

    # Items re-indexed: old item i moves to old_to_new[i]; a dropped item (-1) leaves no trace.
    mapping = np.array([0, 1, 9, 8, 7, -1, 2])
    moved = grow_weights(old, fresh, 7, 10, old_to_new=mapping)
    bias = next(i for i, w in enumerate(old) if w.shape == (7,))
    bias_old, bias_new = old[bias], moved[bias]
    assert bias_new.shape == (10,)
    np.testing.assert_array_equal(bias_new[[0, 1, 9, 8, 7, 2]], bias_old[[0, 1, 2, 3, 4, 6]])
    with pytest.raises(ValueError, match="shrank"):
        grow_weights(fresh, old, 10, 7)


def test_launcher_falls_back_to_horovod_spark_run_without_sparkdl():
    with pytest.raises(ImportError):
        import sparkdl  # noqa: F401  (Databricks ML runtime only)
    name, run = horovod_launcher()
    assert name == "horovod.spark.run" and callable(run)
