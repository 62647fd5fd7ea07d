"""Scoring: the pandas UDF ranks the catalogue with a saved model, and the popularity baseline."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import SparkSession

from recspark import constants as C
from recspark.config import FeaturesConfig
from recspark.evaluation.baselines import most_popular
from recspark.models.early_stopping import top_k_items
from recspark.scoring import recommend

# The default layout: PAD 0, unknown 1, 64 hashed buckets 2..65, items from 66.
DEFAULT_BUCKETS = 64
assert FeaturesConfig().oov_buckets == DEFAULT_BUCKETS, "these tests are about the default layout"
FIRST = 2 + DEFAULT_BUCKETS  # written out, not taken from the layout under test
REAL_ITEMS, LENGTH = 6, 3
NUM_ITEMS = FIRST + REAL_ITEMS


def test_default_layout_reserves_pad_unknown_and_64_buckets() -> None:
    layout = FeaturesConfig().item_layout
    assert (layout.pad, layout.unknown, layout.first_item) == (0, 1, 66)
    assert list(layout.buckets) == list(range(2, 66))
    assert [i for i in range(70) if layout.reserved(i)] == list(range(66))


def test_top_k_never_returns_reserved_or_excluded_items() -> None:
    # Item i sits at FIRST + i; every reserved index (PAD, unknown, each bucket) scores above any item.
    items_logits = [[1.0, 5.0, 3.0, 4.0], [7.0, 1.0, 6.0, 2.0]]
    logits = np.concatenate([np.full((2, FIRST), 9.0), np.array(items_logits)], axis=1)
    seen = np.array([[FIRST + 1, C.PAD_IDX], [C.PAD_IDX, C.PAD_IDX]])  # PAD-padded, as validation sets are
    items = top_k_items(logits, 2, seen, first_item=FIRST)
    assert items.tolist() == [[FIRST + 3, FIRST + 2], [FIRST + 0, FIRST + 2]]


@pytest.mark.parametrize("reserved", [C.PAD_IDX, C.OOV_IDX, 2, 33, FIRST - 1])
def test_top_k_asking_for_every_index_still_returns_only_items(reserved: int) -> None:
    """k beyond the catalogue: the answer is every item once, never a reserved index, however
    high that index scores."""
    logits = np.zeros((1, NUM_ITEMS))
    logits[0, reserved] = 1e9
    items = top_k_items(logits, NUM_ITEMS, first_item=FIRST)
    assert items[0].tolist() == list(range(FIRST, NUM_ITEMS))  # all tied: the lower index first


def _save(folder: Path, name: str) -> Path:
    from recspark.config import TrainConfig
    from recspark.models import ModelSpec, build_model

    spec = ModelSpec(num_items=NUM_ITEMS, max_seq_len=LENGTH, num_event_types=5, num_gap_buckets=4,
                     first_item_idx=FeaturesConfig().first_item_idx)
    model = build_model(name, spec, TrainConfig(embedding_dim=4, num_layers=1, num_heads=2, seed=3))
    model.save(folder / "model.keras")
    (folder / "model_meta.json").write_text(json.dumps({"num_items": NUM_ITEMS, "max_seq_len": LENGTH,
                                                        "inputs": list(model.INPUTS)}))
    return folder


@pytest.fixture(scope="module", params=["mean_pool", "sasrec"])
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(tmp_path_factory.mktemp(request.param), request.param)


def test_udf_scores_every_user_like_the_model_itself(spark: SparkSession, model_dir: Path) -> None:
    import tensorflow as tf

    import recspark.models  # noqa: F401  registers the model classes for tf.keras.models.load_model

    # Types and gaps are 0 on padding; u5's differ from u2's only there and in its seen items.
    a, b, c, d, e, f = range(FIRST, NUM_ITEMS)
    # u6 read an item outside the vocabulary (a hashed bucket): still only items come back.
    histories = [("u1", [0, a, b], [0, 1, 2], [0, 2, 1], [a, b]), ("u2", [c, d, e], [1, 1, 3], [3, 2, 1], [c, d, e]),
                 ("u3", [0, 0, f], [0, 0, 4], [0, 0, 1], [f]), ("u4", [0, 0, 0], [0, 0, 0], [0, 0, 0], []),
                 ("u5", [0, d, e], [0, 1, 3], [0, 2, 1], []), ("u6", [0, 40, a], [0, 1, 1], [0, 1, 1], [a])]
    # The scorer picks its columns from a wider table (here with an unrelated column).
    df = spark.createDataFrame([(*row, "x") for row in histories],
                               "user_id string, history array<int>, history_types array<int>, "
                               "history_gaps array<int>, seen_idx array<int>, other string")
    vocab = spark.createDataFrame([(f"item-{i}", i) for i in range(FIRST, NUM_ITEMS)], "item_id string, item_idx int")
    got = recommend(df, vocab, str(model_dir), k=3, exclude_seen=True, batch_size=2).collect()
    # recommend() joins the vocabulary, which would hide a reserved index: check the raw UDF too.
    from recspark.scoring import model_input_columns, top_k_udf

    columns = model_input_columns(str(model_dir))
    raw = df.select(top_k_udf(str(model_dir), columns, NUM_ITEMS, False)(*columns, "seen_idx").alias("t")).collect()
    assert all(sorted(row["t"]["items"]) == list(range(FIRST, NUM_ITEMS)) for row in raw)

    model = tf.keras.models.load_model(model_dir / "model.keras")
    inputs = {name: np.array([row[column] for row in histories], dtype=np.int32)
              for column, name in enumerate((C.HISTORY, C.HISTORY_TYPES, C.HISTORY_GAPS), start=1)}
    inputs[C.HISTORY][3, -1] = C.OOV_IDX  # the scorer's stand-in for an empty history
    logits = model(inputs).numpy()
    assert np.abs(logits[4] - logits[1]).max() > 1e-6, "u5's shorter history should change its scores"
    for row, (user, *_, seen) in enumerate(histories):
        allowed = [i for i in range(FIRST, NUM_ITEMS) if i not in seen]
        expected = sorted(allowed, key=lambda i: -logits[row, i])[:3]
        mine = sorted((r for r in got if r[C.USER_ID] == user), key=lambda r: r[C.RANK])
        assert [r[C.RANK] for r in mine] == [1, 2, 3]
        assert [r[C.ITEM_ID] for r in mine] == [f"item-{i}" for i in expected]
        assert [r[C.SCORE] for r in mine] == pytest.approx([logits[row, i] for i in expected], abs=1e-5)
        assert all(0 < r[C.CONFIDENCE] <= 1 for r in mine)


def test_scorer_names_the_missing_column(spark: SparkSession, tmp_path: Path) -> None:
    folder = _save(tmp_path, "sasrec")
    df = spark.createDataFrame([("u1", [0, FIRST, FIRST + 1], [FIRST])], "user_id string, history array<int>, seen_idx array<int>")
    vocab = spark.createDataFrame([(f"item-{FIRST}", FIRST)], "item_id string, item_idx int")
    with pytest.raises(ValueError, match="history_types"):
        recommend(df, vocab, str(folder), k=3, exclude_seen=False)


def test_most_popular_skips_seen_items(spark: SparkSession) -> None:
    vocab = spark.createDataFrame([("a", FIRST, 50), ("b", FIRST + 1, 40), ("c", FIRST + 2, 30), ("d", FIRST + 3, 20)],
                                  "item_id string, item_idx int, train_count long")
    queries = spark.createDataFrame([("u1", ["a", "c"]), ("u2", [])], "user_id string, seen array<string>")
    rows = most_popular(vocab, queries, k=2, exclude_seen=True).collect()
    got = {(r[C.USER_ID], r[C.RANK]): (r[C.ITEM_ID], r[C.SCORE]) for r in rows}
    assert got == {("u1", 1): ("b", 40.0), ("u1", 2): ("d", 20.0), ("u2", 1): ("a", 50.0), ("u2", 2): ("b", 40.0)}
    with_seen = most_popular(vocab, queries, k=2, exclude_seen=False).collect()
    assert sorted((r[C.USER_ID], r[C.ITEM_ID]) for r in with_seen) == [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b")]


def test_the_model_cache_reloads_a_model_trained_again(tmp_path: Path) -> None:
    """Python workers live as long as the Spark application (jobs/pipeline.py runs every stage in one):
    a model exported again under the same directory must not be served from the cache."""
    import os

    from recspark.scoring import _load

    folder = _save(tmp_path, "mean_pool")
    first = _load(str(folder))
    assert _load(str(folder)) is first
    stat = (folder / "model.keras").stat()
    _save(tmp_path, "mean_pool")
    os.utime(folder / "model.keras", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a later export
    assert _load(str(folder)) is not first
