"""A real 2-rank Horovod-on-Spark training: ranks agree, weights moved, loss fell, export loads.

If gradients were not averaged (Keras 3 under tf.keras, or a plain optimizer), each rank would
follow its own shard's gradients and the ranks' final weights would differ.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
from conftest import next_item_examples

from recspark.config import TrainConfig
from recspark.constants import HISTORY, HISTORY_GAPS, HISTORY_TYPES, PAD_IDX, ItemLayout
from recspark.models import ModelSpec
from recspark.models.training import CHECKPOINTS_DIR, META_FILE, MODEL_FILE, load_model, train_distributed

ROWS = 480
MAX_SEQ_LEN = 6
REAL_ITEMS = 10
# The single-unknown layout (PAD, unknown, then items from 2): small models, fast tests.
FIRST_ITEM = ItemLayout(oov_buckets=1).first_item
NUM_ITEMS = FIRST_ITEM + REAL_ITEMS  # PAD, OOV and the real items
EVENT_TYPES, GAP_BUCKETS = 3, 4
SPEC = ModelSpec(num_items=NUM_ITEMS, max_seq_len=MAX_SEQ_LEN, num_event_types=EVENT_TYPES + 2,
                 num_gap_buckets=GAP_BUCKETS, first_item_idx=FIRST_ITEM)


def _examples(spark):
    """Distinct rows with event types and time-gap buckets (see `next_item_examples`)."""
    df = next_item_examples(spark, ROWS, MAX_SEQ_LEN, REAL_ITEMS, first_item=FIRST_ITEM, event_types=EVENT_TYPES, gap_buckets=GAP_BUCKETS)
    assert df.distinct().count() == ROWS
    return df


def test_spark_python_workers_use_tf_keras(spark):
    """The session was started with TF_USE_LEGACY_KERAS=1 in the driver: Spark's Python workers inherit it."""
    seen = spark.sparkContext.parallelize(range(2), 2).map(lambda _: os.environ.get("TF_USE_LEGACY_KERAS")).collect()
    assert seen == ["1", "1"]


def test_keras_3_fails_loudly():
    """Under Keras 3 (TF_USE_LEGACY_KERAS=0) the training function refuses to start, naming the fix."""
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
    code = "from recspark.models.training import require_legacy_keras; require_legacy_keras()"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "TF_USE_LEGACY_KERAS=1" in run.stderr, run.stderr[-2000:]


def test_two_rank_training_agrees_learns_and_exports(spark, tmp_path, capsys):
    config = TrainConfig(models=["mean_pool"], num_proc=2, epochs=3, batch_size=32, learning_rate=0.01,
                         embedding_dim=8, seed=11)
    model_dir = tmp_path / "model"
    started = time.time()
    result = train_distributed(
        spark, _examples(spark), model="mean_pool", spec=SPEC, train_config=config, model_dir=model_dir, cache_url=(tmp_path / "petastorm").as_uri(),
        record_batch_times=True,
    )
    finished = time.time()
    rank0, rank1 = result.rank_results
    # The per-batch timing hook (what bench/train.py reads): one time per training batch, from rank 0
    # (the ranks step together), in order and within this call.
    times = result.batch_end_times
    assert len(times) == config.epochs * rank0.steps_per_epoch, (len(times), rank0.steps_per_epoch)
    assert times == rank0.batch_end_times and rank1.batch_end_times == []
    assert started < times[0] and times == sorted(times) and times[-1] < finished
    assert (rank0.rank, rank1.rank, rank0.size) == (0, 1, 2)
    for rank in result.rank_results:
        assert rank.legacy_keras_env == "1" and rank.tf_keras_module.startswith("tf_keras"), rank.tf_keras_module
        assert rank.steps_per_epoch == ROWS // (config.batch_size * 2)

    # Same start, same end: the ranks trained one model together.
    assert rank0.initial_digests == rank1.initial_digests
    assert rank0.weights is not None and rank1.weights is not None
    for w0, w1 in zip(rank0.weights, rank1.weights):
        np.testing.assert_allclose(w0, w1, rtol=0, atol=1e-6)
    # ... and it did train: every variable moved, and the loss fell.
    assert all(a != b for a, b in zip(rank0.initial_digests, rank0.final_digests)), "a variable never changed"
    assert len(result.history) == config.epochs
    assert result.history[-1] < 0.9 * result.history[0], result.history
    assert rank0.loss_history == rank1.loss_history, "MetricAverageCallback should give both ranks the same loss"

    # Rank 0's export.
    assert sorted(p.name for p in (model_dir / CHECKPOINTS_DIR).iterdir()) == [
        f"epoch-{e:03d}.weights.h5" for e in range(1, config.epochs + 1)]
    meta = json.loads((model_dir / META_FILE).read_text())
    assert meta["loss_history"] == result.history
    model, meta = load_model(model_dir)
    assert (meta["num_items"], meta["max_seq_len"], meta["embedding_dim"], meta["num_proc"]) == (
        NUM_ITEMS, MAX_SEQ_LEN, 8, 2)
    assert meta["model"] == "mean_pool" and meta["epochs"] == 3 and meta["training_seconds"] > 0
    assert meta["inputs"] == [HISTORY] and meta["spec"] == SPEC.to_dict()
    for exported, trained in zip(model.get_weights(), rank0.weights):
        np.testing.assert_array_equal(exported, trained)
    histories = np.array([[PAD_IDX] * (MAX_SEQ_LEN - 1) + [FIRST_ITEM], [FIRST_ITEM + 3] * MAX_SEQ_LEN],
                         dtype=np.int32)
    logits = model.predict({HISTORY: histories}, verbose=0)
    assert logits.shape == (2, NUM_ITEMS) and np.isfinite(logits).all()
    assert (model_dir / MODEL_FILE).is_file()
    # Rank 0's epoch lines reach the driver's console through the progress file, once each (not as
    # Horovod's "[0]<stdout>:" dump when the rank ends).
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(" loss=")[0] for line in printed if line.startswith("epoch ")] == ["epoch 1/3", "epoch 2/3",
                                                                                          "epoch 3/3"]
    assert not any("<stdout>:epoch" in line for line in printed)


def test_progress_follower_prints_complete_lines_as_they_come(tmp_path):
    import io

    from recspark.models.training import ProgressFollower

    path, out = tmp_path / "progress.log", io.StringIO()
    follower = ProgressFollower(path, poll_seconds=0.02, out=out)
    try:
        with open(path, "a") as progress:
            progress.write("epoch 1/2 loss=1.0\nepoch 2/2 lo")
        deadline = time.time() + 5
        while "epoch 1/2" not in out.getvalue() and time.time() < deadline:
            time.sleep(0.02)
        # Printed while the writer is still going; the half-written line waits.
        assert out.getvalue() == "epoch 1/2 loss=1.0\n"
        with open(path, "a") as progress:
            progress.write("ss=0.5\n")
    finally:
        follower.stop()
    assert out.getvalue() == "epoch 1/2 loss=1.0\nepoch 2/2 loss=0.5\n"


def test_two_rank_sasrec_training_agrees_and_exports(spark, tmp_path):
    """The Transformer through Horovod: its custom train_step (sampled softmax) must still have its
    gradients averaged, and its export must load and read all three sequence columns."""
    config = TrainConfig(models=["sasrec"], num_proc=2, epochs=2, batch_size=32, learning_rate=0.005,
                         embedding_dim=8, num_layers=1, num_heads=2, dropout=0.1, softmax="sampled",
                         num_sampled=4, sampler="log_uniform", seed=13)
    model_dir = tmp_path / "sasrec"
    result = train_distributed(
        spark, _examples(spark), model="sasrec", spec=SPEC, train_config=config, model_dir=model_dir,
        cache_url=(tmp_path / "petastorm").as_uri(),
    )
    rank0, rank1 = result.rank_results
    assert rank0.initial_digests == rank1.initial_digests
    assert rank0.weights is not None and rank1.weights is not None
    for w0, w1 in zip(rank0.weights, rank1.weights):
        np.testing.assert_allclose(w0, w1, rtol=0, atol=1e-6)
    # The attention, feed-forward and embedding weights all trained (the bias row of a never-seen
    # class may stay put, but no whole variable may).
    assert all(a != b for a, b in zip(rank0.initial_digests, rank0.final_digests)), "a variable never changed"
    assert len(result.history) == 2 and all(np.isfinite(result.history))

    model, meta = load_model(model_dir)
    assert meta["inputs"] == [HISTORY, HISTORY_TYPES, HISTORY_GAPS]
    assert meta["settings"]["softmax"] == "sampled" and meta["spec"] == SPEC.to_dict()
    for exported, trained in zip(model.get_weights(), rank0.weights):
        np.testing.assert_array_equal(exported, trained)
    history = np.array([[PAD_IDX] * (MAX_SEQ_LEN - 2) + [FIRST_ITEM, FIRST_ITEM + 1]], dtype=np.int32)
    types = np.array([[0] * (MAX_SEQ_LEN - 2) + [1, 3]], dtype=np.int32)
    gaps = np.array([[0] * (MAX_SEQ_LEN - 2) + [2, 1]], dtype=np.int32)
    logits = model.predict({HISTORY: history, HISTORY_TYPES: types, HISTORY_GAPS: gaps}, verbose=0)
    assert logits.shape == (1, NUM_ITEMS) and np.isfinite(logits).all()


def test_two_rank_repeatnet_training_with_basket_targets_agrees_and_exports(spark, tmp_path):
    """repeatnet through Petastorm and Horovod: array targets (next baskets), float repeat features
    and int repeat candidates reach the ranks, whose weights end identical; the export scores."""
    from pyspark.sql import functions as F

    from recspark.constants import REPEAT_FEATURE_COUNT, REPEAT_FEATURES, REPEAT_ITEMS, TARGET

    candidates = 3
    spec = ModelSpec(num_items=NUM_ITEMS, max_seq_len=MAX_SEQ_LEN, num_event_types=EVENT_TYPES + 2,
                     num_gap_buckets=GAP_BUCKETS, repeat_candidates=candidates, first_item_idx=FIRST_ITEM)
    # Each row's basket: its next item and the item after (a 2-item basket, padded to 3); its repeat
    # profile: the history's last item with made-up features, then padding.
    examples = (_examples(spark)
                .withColumn(TARGET, F.array(F.col(TARGET), F.lit(FIRST_ITEM) + (F.col(TARGET) + 1) % REAL_ITEMS,
                                            F.lit(PAD_IDX)))
                .withColumn(REPEAT_ITEMS, F.array(F.element_at(HISTORY, -1), F.lit(PAD_IDX), F.lit(PAD_IDX)))
                .withColumn(REPEAT_FEATURES, F.array_repeat(F.lit(0.5).cast("float"), candidates * REPEAT_FEATURE_COUNT)))
    config = TrainConfig(models=["repeatnet"], num_proc=2, epochs=2, batch_size=32, learning_rate=0.005,
                         embedding_dim=8, num_layers=1, num_heads=2, dropout=0.1, seed=17)
    model_dir = tmp_path / "repeatnet"
    result = train_distributed(spark, examples, model="repeatnet", spec=spec, train_config=config,
                               model_dir=model_dir, cache_url=(tmp_path / "petastorm").as_uri())
    rank0, rank1 = result.rank_results
    assert rank0.initial_digests == rank1.initial_digests
    for w0, w1 in zip(rank0.weights, rank1.weights):
        np.testing.assert_allclose(w0, w1, rtol=0, atol=1e-6)
    assert len(result.history) == 2 and result.history[-1] < result.history[0], result.history
    model, meta = load_model(model_dir)
    assert meta["inputs"] == [HISTORY, HISTORY_TYPES, HISTORY_GAPS, REPEAT_ITEMS, REPEAT_FEATURES]
    row = examples.select(*meta["inputs"]).first()
    inputs = {name: np.array([row[name]], dtype=np.float32 if name == REPEAT_FEATURES else np.int32)
              for name in meta["inputs"]}
    logits = model.predict(inputs, verbose=0)
    assert logits.shape == (1, NUM_ITEMS) and np.isfinite(logits[:, FIRST_ITEM:]).all()
