"""Scoring: the pandas UDF ranks the catalogue with a saved model, and the popularity baseline."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import SparkSession

from recspark import constants as C
from recspark.evaluation.baselines import most_popular
from recspark.scoring import recommend, top_k_from_logits

NUM_ITEMS, LENGTH = 8, 3


def test_top_k_never_returns_pad_oov_or_excluded_items() -> None:
    logits = np.array([[9.0, 8.0, 1.0, 5.0, 3.0, 4.0], [9.0, 9.0, 7.0, 1.0, 6.0, 2.0]])
    items, scores, probabilities = top_k_from_logits(logits, 2, [np.array([3]), np.array([], dtype=int)])
    assert items.tolist() == [[5, 4], [2, 4]]
    assert scores.tolist() == [[4.0, 3.0], [7.0, 6.0]]
    # Softmax over items 2..5 (PAD, OOV and excluded ones removed): e^4 / (e^1 + e^3 + e^4).
    assert probabilities[0, 0] == pytest.approx(np.exp(4) / (np.exp(1) + np.exp(3) + np.exp(4)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recspark.models.mean_pool import build_mean_pool_model

    folder = tmp_path_factory.mktemp("model")
    build_mean_pool_model(NUM_ITEMS, 4, LENGTH, seed=3).save(folder / "model.keras")
    (folder / "model_meta.json").write_text(json.dumps({"num_items": NUM_ITEMS, "max_seq_len": LENGTH}))
    return folder


def test_udf_scores_every_user_like_the_model_itself(spark: SparkSession, model_dir: Path) -> None:
    import tensorflow as tf

    histories = [("u1", [0, 2, 3], [2, 3]), ("u2", [4, 5, 6], [4, 5, 6]), ("u3", [0, 0, 7], [7]), ("u4", [0, 0, 0], [])]
    df = spark.createDataFrame(histories, "user_id string, history array<int>, seen_idx array<int>")
    vocab = spark.createDataFrame([(f"item-{i}", i) for i in range(2, NUM_ITEMS)], "item_id string, item_idx int")
    got = recommend(df, vocab, str(model_dir), k=3, exclude_seen=True, batch_size=2).collect()

    model = tf.keras.models.load_model(model_dir / "model.keras")
    inputs = np.array([h for _, h, _ in histories], dtype=np.int32)
    inputs[3, -1] = C.OOV_IDX  # the scorer's stand-in for an empty history
    logits = model(inputs).numpy()
    for row, (user, _, seen) in enumerate(histories):
        allowed = [i for i in range(2, NUM_ITEMS) if i not in seen]
        expected = sorted(allowed, key=lambda i: -logits[row, i])[:3]
        mine = sorted((r for r in got if r[C.USER_ID] == user), key=lambda r: r[C.RANK])
        assert [r[C.RANK] for r in mine] == [1, 2, 3]
        assert [r[C.ITEM_ID] for r in mine] == [f"item-{i}" for i in expected]
        assert [r[C.SCORE] for r in mine] == pytest.approx([logits[row, i] for i in expected], abs=1e-5)
        assert all(0 < r[C.CONFIDENCE] <= 1 for r in mine)


def test_most_popular_skips_seen_items(spark: SparkSession) -> None:
    vocab = spark.createDataFrame([("a", 2, 50), ("b", 3, 40), ("c", 4, 30), ("d", 5, 20)],
                                  "item_id string, item_idx int, train_count long")
    queries = spark.createDataFrame([("u1", ["a", "c"]), ("u2", [])], "user_id string, seen array<string>")
    rows = most_popular(vocab, queries, k=2, exclude_seen=True).collect()
    got = {(r[C.USER_ID], r[C.RANK]): (r[C.ITEM_ID], r[C.SCORE]) for r in rows}
    assert got == {("u1", 1): ("b", 40.0), ("u1", 2): ("d", 20.0), ("u2", 1): ("a", 50.0), ("u2", 2): ("b", 40.0)}
    with_seen = most_popular(vocab, queries, k=2, exclude_seen=False).collect()
    assert sorted((r[C.USER_ID], r[C.ITEM_ID]) for r in with_seen) == [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b")]
