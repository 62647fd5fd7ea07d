"""Training life cycle: checkpoints and their fingerprint, validation NDCG@10, vocabulary growth,
the launcher choice; then real 2-rank Horovod runs (a SIGKILLed rank and the resume, early
stopping, and 2 ranks x batch B against 1 rank x batch 2B)."""
from __future__ import annotations

import dataclasses

import math

import numpy as np
import pytest
from conftest import next_item_examples

from recspark.config import TrainConfig
from recspark.constants import PAD_IDX, ItemLayout
from recspark.evaluation.metrics import ndcg_at_k
from recspark.models.checkpoints import RunState, find_resumable_state, fingerprint, read_state_arrays, write_state
from recspark.models.early_stopping import ndcg_from_top_k, top_k_items
from recspark.models.launcher import horovod_launcher
from recspark.models.warm_start import grow_weights


# The single-unknown layout (PAD, unknown, then items from 2): small models, fast tests.
FIRST_ITEM = ItemLayout(oov_buckets=1).first_item
# The default configuration's layout (64 hashed buckets), written out: where evaluation ranks.
DEFAULT_FIRST = 2 + 64


def _split_items(array, old_items, new_items):
    """(old items' slice, new items' slice) along the item axis (size new_items), moved first."""
    axis = next(a for a in range(array.ndim) if array.shape[a] == new_items)
    moved = np.moveaxis(array, axis, 0)
    return moved[:old_items], moved[old_items:]


# --------------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------------

def test_ndcg_matches_the_reference_metric():
    """Same number as recspark.evaluation.metrics.ndcg_at_k, items outside the vocabulary included."""
    rng = np.random.default_rng(3)
    num_items, users = DEFAULT_FIRST + 40, 60
    logits = rng.normal(size=(users, num_items))
    logits[:, :DEFAULT_FIRST] += 10.0  # reserved indices score best: they must still never be ranked
    relevant_lists = [list(rng.choice(np.arange(DEFAULT_FIRST, num_items), size=rng.integers(1, 5), replace=False))
                      for _ in range(users)]
    # Some relevant items are unknown to the vocabulary (-1): never hit, but counted in the ideal DCG.
    relevant_lists[0] = relevant_lists[0] + [-1]
    relevant_lists[1] = [-1]
    width = max(map(len, relevant_lists))
    relevant = np.full((users, width), -1)
    for u, items in enumerate(relevant_lists):
        relevant[u, :len(items)] = items
    num_relevant = np.array([len(items) for items in relevant_lists])

    top = top_k_items(logits, 10, first_item=DEFAULT_FIRST)
    # The reference: the best 10 of all real items, unknown items as distinct never-predicted ids.
    order = [[int(i) for i in np.argsort(-row, kind="stable") if i >= DEFAULT_FIRST][:10] for row in logits]
    assert top.tolist() == order
    reference_relevant = [[i if i >= 0 else f"unknown-{j}" for j, i in enumerate(items)] for items in relevant_lists]
    assert ndcg_from_top_k(top, relevant, num_relevant) == pytest.approx(ndcg_at_k(order, reference_relevant, 10), abs=1e-12)
    # By hand: item 6 at rank 2 hit; the unknown item counts in the ideal DCG (2 relevant); the
    # second user's only item is unknown (0); a user without held-out items scores 0.
    by_hand = ndcg_from_top_k(np.array([[5, 6, 7], [5, 6, 7], [5, 6, 7]]), np.array([[6, -1], [-1, -1], [-1, -1]]),
                              np.array([2, 1, 0]))
    assert by_hand == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)) / 3, abs=1e-12)


def test_top_k_never_returns_reserved_or_seen():
    # Default layout: PAD, unknown and 64 buckets score best, the items below them in index order.
    logits = -np.arange(DEFAULT_FIRST + 6, dtype=np.float64)[None, :]
    seen = np.array([[DEFAULT_FIRST, PAD_IDX]])
    first = DEFAULT_FIRST
    assert top_k_items(logits, 3, first_item=first).tolist() == [[first, first + 1, first + 2]]
    assert top_k_items(logits, 3, seen, first_item=first).tolist() == [[first + 1, first + 2, first + 3]]
    # Every reserved index, one at a time, scoring far above the items: never in the top k.
    for reserved in range(DEFAULT_FIRST):
        high = np.zeros((1, DEFAULT_FIRST + 6))
        high[0, reserved] = 1e9
        # Asking for every index returns every item once and nothing else.
        assert sorted(top_k_items(high, DEFAULT_FIRST + 6, first_item=first)[0].tolist()) == list(range(first, first + 6))


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
    old_model = build_model("mean_pool", ModelSpec(num_items=7, max_seq_len=5, first_item_idx=FIRST_ITEM), train)
    # Stand-in for training: every old weight moves away from its initial value.
    old = [w + 1.5 for w in old_model.get_weights()]
    new_model = build_model("mean_pool", ModelSpec(num_items=10, max_seq_len=5, first_item_idx=FIRST_ITEM), train)
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
        kept, added = _split_items(after, 7, 10)
        axis = next(a for a in range(after.ndim) if after.shape[a] == 10)
        np.testing.assert_array_equal(kept, np.moveaxis(before, axis, 0))  # old items keep their rows
        np.testing.assert_array_equal(added, _split_items(init, 7, 10)[1])  # new items start fresh
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


def test_a_rank_that_only_saw_its_peer_die_exits_after_the_grace(monkeypatch):
    """horovod.spark.run names the first rank to exit; the bystander of a dead peer must exit later
    (CI once named rank 0, which failed only because rank 1 had been SIGKILLed)."""
    import time

    from recspark.models import launcher

    monkeypatch.setattr(launcher, "PEER_FAILURE_GRACE_S", 0.5)

    def fails_with(message):
        def fn(x):
            raise RuntimeError(message)
        return launcher._bystanders_exit_last(fn)

    assert launcher._bystanders_exit_last(lambda x: x + 1)(1) == 2
    for message, waits in ((f"{launcher._PEER_SHUTDOWN}. This was caused by an exception on one of the ranks", True),
                           ("out of memory", False)):
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=message.split(".")[0]):
            fails_with(message)(0)
        assert (time.monotonic() - started >= 0.5) == waits, message


def test_validation_sample_is_bounded_and_maps_items_to_indices(spark):
    from recspark import constants as C
    from recspark.models.early_stopping import collect_validation_set
    from recspark.scoring import SEEN_IDX

    queries = spark.createDataFrame(
        [(f"u{i}", C.VALIDATION if i < 5 else C.TEST, [0, 2 + i % 3], ["a", "zz"] if i == 0 else ["b"], [2 + i % 3])
         for i in range(8)],
        f"{C.USER_ID} string, {C.SPLIT} string, {C.HISTORY} array<int>, {C.RELEVANT} array<string>, {SEEN_IDX} array<int>")
    vocab = spark.createDataFrame([("a", 2), ("b", 3), ("c", 4)], f"{C.ITEM_ID} string, {C.ITEM_IDX} int")
    full = collect_validation_set(queries, vocab, inputs=[C.HISTORY], max_users=100, exclude_seen=True, seed=1)
    assert len(full) == 5 and full.inputs[C.HISTORY].shape == (5, 2) and full.exclude_seen
    rows = sorted(zip(full.relevant.tolist(), full.num_relevant.tolist()))
    # "zz" is not in the vocabulary: -1, never hit, still one of the user's two relevant items.
    assert rows == [([2, -1], 2)] + [([3, -1], 1)] * 4
    assert sorted(full.seen[:, 0].tolist()) == sorted([2, 3, 4, 2, 3])
    sample = collect_validation_set(queries, vocab, inputs=[C.HISTORY], max_users=3, exclude_seen=False, seed=1)
    assert len(sample) == 3
    assert collect_validation_set(queries, vocab, inputs=["user_vector"], max_users=3, exclude_seen=False, seed=1) is None


# --------------------------------------------------------------------------------------------------
# Real Horovod runs (2 Spark tasks, Gloo)
# --------------------------------------------------------------------------------------------------

ROWS = 480
MAX_SEQ_LEN = 6
REAL_ITEMS = 10
# One more item than the data uses: the warm-start test grows a model over the others to this size.
NUM_ITEMS = FIRST_ITEM + REAL_ITEMS + 1


def _examples(spark):
    """Distinct (history, target) rows: mostly one item repeated, the target is the next item."""
    return next_item_examples(spark, ROWS, MAX_SEQ_LEN, REAL_ITEMS, first_item=FIRST_ITEM)


def _train(spark, tmp_path, config, **kwargs):
    from recspark.models import ModelSpec
    from recspark.models.training import train_distributed

    return train_distributed(
        spark, _examples(spark), model="mean_pool", spec=ModelSpec(num_items=NUM_ITEMS, max_seq_len=MAX_SEQ_LEN, first_item_idx=FIRST_ITEM),
        train_config=config, model_dir=kwargs.pop("model_dir", tmp_path / "model"),
        cache_url=(tmp_path / "petastorm").as_uri(), **kwargs)


def _assert_ranks_agree(result):
    assert result.ranks_agree
    for w0, w1 in zip(result.rank_results[0].weights, result.rank_results[1].weights):
        np.testing.assert_array_equal(w0, w1)


def test_killed_rank_is_named_and_the_next_run_resumes(spark, tmp_path, monkeypatch):
    import json

    from recspark.models.checkpoints import FAULT_ENV, STATE_DIR, read_state_arrays
    from recspark.models.launcher import RankFailedError
    from recspark.models.training import META_FILE, MODEL_FILE

    config = TrainConfig(num_proc=2, epochs=4, batch_size=32, learning_rate=0.01, embedding_dim=8, seed=11,
                         early_stopping_patience=0)
    monkeypatch.setenv(FAULT_ENV, "1:2")  # rank 1 SIGKILLs itself when epoch 2 (0-based) begins
    with pytest.raises(RankFailedError) as failed:
        _train(spark, tmp_path, config)
    assert failed.value.rank == 1 and "Horovod rank 1 failed" in str(failed.value), str(failed.value)
    assert failed.value.exit_code in (-9, 137)  # SIGKILL, as the launcher reports it
    model_dir = tmp_path / "model"
    states = sorted(p.name for p in (model_dir / STATE_DIR).iterdir())
    assert "epoch-002.npz" in states and "epoch-003.npz" not in states, states
    assert not (model_dir / MODEL_FILE).exists()  # the killed run exported nothing
    checkpoint_weights = read_state_arrays(model_dir / STATE_DIR / "epoch-002.npz")[0]

    monkeypatch.delenv(FAULT_ENV)
    result = _train(spark, tmp_path, config)
    assert result.initial_epoch == 2
    assert [r.initial_epoch for r in result.rank_results] == [2, 2]
    assert [r.epochs_run for r in result.rank_results] == [2, 2]  # epochs 3 and 4 only
    assert len(result.history) == 4 and all(np.isfinite(result.history))
    _assert_ranks_agree(result)
    # It continued from the checkpoint's weights (it did not start over), and trained on.
    assert any(not np.array_equal(a, b) for a, b in zip(checkpoint_weights, result.rank_results[0].weights))
    meta = json.loads((model_dir / META_FILE).read_text())
    assert meta["resumed_from_epoch"] == 2 and meta["epochs_trained"] == 4 and meta["loss_history"] == result.history
    assert result.history[-1] < result.history[0]


def test_early_stopping_stops_every_rank_at_the_same_epoch_and_exports_the_best(spark, tmp_path):
    import json

    from recspark.constants import HISTORY
    from recspark.models import ModelSpec, build_model
    from recspark.models.early_stopping import ValidationSet, ndcg_at_10
    from recspark.models.training import CHECKPOINTS_DIR, META_FILE, load_model

    # One query per item: the item three times; relevant: the next item, the pattern most training
    # rows follow. NDCG@10 rises while the model learns it, then stays at its best (all ranked
    # first, 1.0, cannot be beaten), so training must stop `patience` epochs after the best one.
    items = np.arange(REAL_ITEMS)
    histories = np.full((REAL_ITEMS, MAX_SEQ_LEN), PAD_IDX, np.int32)
    histories[:, -3:] = (items + FIRST_ITEM)[:, None]
    validation = ValidationSet(inputs={HISTORY: histories},
                               relevant=((items + 1) % REAL_ITEMS + FIRST_ITEM)[:, None].astype(np.int32),
                               num_relevant=np.ones(REAL_ITEMS, np.int32))
    config = TrainConfig(num_proc=2, epochs=10, batch_size=32, learning_rate=0.02, embedding_dim=8, seed=11,
                         early_stopping_patience=2, validation_users=REAL_ITEMS)
    result = _train(spark, tmp_path, config, validation=validation)

    history, best = result.val_ndcg_history, result.best_epoch
    assert len(history) < config.epochs, f"never stopped: {history}"
    assert best == int(np.argmax(history)) + 1 and len(history) == best + config.early_stopping_patience
    assert history[best - 1] > 0 and max(history[best:]) <= history[best - 1]
    for rank in result.rank_results:
        assert (rank.val_ndcg_history, rank.best_epoch) == (history, best)
        assert len(rank.loss_history) == len(history)  # every rank stopped after the same epoch
    _assert_ranks_agree(result)

    model_dir = tmp_path / "model"
    meta = json.loads((model_dir / META_FILE).read_text())
    assert meta["val_ndcg_history"] == history and meta["best_epoch"] == best
    exported, _ = load_model(model_dir)

    def epoch_weights(epoch):
        model = build_model("mean_pool", ModelSpec(num_items=NUM_ITEMS, max_seq_len=MAX_SEQ_LEN, first_item_idx=FIRST_ITEM), config)
        model.load_weights(str(model_dir / CHECKPOINTS_DIR / f"epoch-{epoch:03d}.weights.h5"))
        return model.get_weights()

    for got, want in zip(exported.get_weights(), epoch_weights(best)):
        np.testing.assert_array_equal(got, want)
    assert any(not np.array_equal(a, b) for a, b in zip(exported.get_weights(), epoch_weights(len(history))))
    assert ndcg_at_10(exported, validation) == pytest.approx(history[best - 1], abs=1e-9)


def test_two_ranks_with_batch_b_match_one_rank_with_batch_2b(spark, tmp_path):
    """Full-batch SGD: 2 ranks x 240 rows (gradients averaged) against 1 rank x 480 rows.

    The global batch is the same, so the step must be too: ``learning_rate`` is per rank-batch and
    scaled by the number of ranks (linear scaling rule), hence 1 rank gets twice the base rate.
    Each rank's shard is one Parquet row group of 240 rows, read unshuffled, so every batch is the
    whole shard and the two setups compute the same mean gradient; mean_pool has no dropout. What
    remains is float32 summation order (one 480-row reduction against two 240-row ones and an
    allreduce): about 1e-7 relative per step, so after 4 steps 1e-5 absolute is ample, while the
    weights themselves move by orders of magnitude more.
    """
    base = dict(epochs=4, embedding_dim=8, seed=11, early_stopping_patience=0, resume=False)
    two = _train(spark, tmp_path, TrainConfig(num_proc=2, batch_size=ROWS // 2, learning_rate=0.5, **base),
                 model_dir=tmp_path / "two", shuffle=False, optimizer="sgd")
    one = _train(spark, tmp_path, TrainConfig(num_proc=1, batch_size=ROWS, learning_rate=1.0, **base),
                 model_dir=tmp_path / "one", shuffle=False, optimizer="sgd")
    assert [r.steps_per_epoch for r in two.rank_results] == [1, 1] and one.rank_results[0].steps_per_epoch == 1
    _assert_ranks_agree(two)
    from recspark.models import ModelSpec, build_model

    initial = build_model("mean_pool", ModelSpec(num_items=NUM_ITEMS, max_seq_len=MAX_SEQ_LEN, first_item_idx=FIRST_ITEM),
                          TrainConfig(embedding_dim=8, seed=11)).get_weights()
    moved = max(float(np.abs(w - i).max()) for w, i in zip(one.rank_results[0].weights, initial))
    assert moved > 1e-2, moved
    for w1, w2 in zip(one.rank_results[0].weights, two.rank_results[0].weights):
        np.testing.assert_allclose(w1, w2, rtol=0, atol=1e-5)
    np.testing.assert_allclose(one.history, two.history, rtol=1e-5)


def test_warm_start_grows_the_previous_models_vocabulary(spark, tmp_path):
    """Run 1 exports a model over NUM_ITEMS - 1 items; run 2 (warm_start, one more item, 0 epochs)
    starts from it: the old items' rows are run 1's, the new item's row is a fresh initialisation."""
    import json

    from recspark.models import ModelSpec, build_model
    from recspark.models.warm_start import PREVIOUS_DIR
    from recspark.models.training import META_FILE, train_distributed

    model_dir = tmp_path / "model"
    small = NUM_ITEMS - 1
    config = TrainConfig(num_proc=2, epochs=1, batch_size=32, learning_rate=0.01, embedding_dim=8, seed=11,
                         early_stopping_patience=0)
    common = dict(model="mean_pool", model_dir=model_dir, cache_url=(tmp_path / "petastorm").as_uri())
    first = train_distributed(spark, _examples(spark), spec=ModelSpec(num_items=small, max_seq_len=MAX_SEQ_LEN, first_item_idx=FIRST_ITEM),
                              train_config=config, **common)
    grown_config = dataclasses.replace(config, epochs=0, warm_start=True)
    second = train_distributed(spark, _examples(spark), spec=ModelSpec(num_items=NUM_ITEMS, max_seq_len=MAX_SEQ_LEN, first_item_idx=FIRST_ITEM),
                               train_config=grown_config, **common)

    assert (model_dir / PREVIOUS_DIR / META_FILE).is_file()
    assert json.loads((model_dir / META_FILE).read_text())["warm_start_from"] == str(model_dir.resolve() / PREVIOUS_DIR)
    _assert_ranks_agree(second)
    fresh = build_model("mean_pool", ModelSpec(num_items=NUM_ITEMS, max_seq_len=MAX_SEQ_LEN, first_item_idx=FIRST_ITEM), config).get_weights()
    grown_vars = 0
    for before, init, after in zip(first.rank_results[0].weights, fresh, second.rank_results[0].weights):
        if before.shape == after.shape:
            np.testing.assert_array_equal(after, before)
            continue
        grown_vars += 1
        axis = next(a for a in range(after.ndim) if after.shape[a] == NUM_ITEMS)
        kept, added = _split_items(after, small, NUM_ITEMS)
        np.testing.assert_array_equal(kept, np.moveaxis(before, axis, 0))
        np.testing.assert_array_equal(added, _split_items(init, small, NUM_ITEMS)[1])
    assert grown_vars == 3
