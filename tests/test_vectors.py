"""user_vectors, item_vectors and similar_items against the model and brute-force NumPy cosine, on the
default reserved layout with item blocks smaller than the catalogue (the running merge crosses blocks)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pyspark.sql import SparkSession
from conftest import save_export

from recspark import constants as C
from recspark.vectors import SIMILAR_ITEM_IDX, SIMILARITY, VECTOR, item_vectors, similar_items, user_vectors

FIRST = 66  # the default layout's first item
NUM_ITEMS, LENGTH = FIRST + 40, 4


def _save_mean_pool(folder: Path):
    from recspark.config import TrainConfig
    from recspark.models import ModelSpec, build_model

    model = build_model("mean_pool", ModelSpec(num_items=NUM_ITEMS, max_seq_len=LENGTH, first_item_idx=FIRST),
                        TrainConfig(embedding_dim=6, seed=2))
    save_export(folder, model, NUM_ITEMS, LENGTH)
    return model


def test_vectors_and_similar_items_equal_the_model_and_brute_force(spark: SparkSession, tmp_path: Path) -> None:
    model = _save_mean_pool(tmp_path / "model")
    folder = str(tmp_path / "model")
    items = model.output_embeddings().numpy()
    # Two items pointing the same way: their cosine is 1, so each must be the other's first neighbour.
    items[FIRST + 5] = 3.0 * items[FIRST + 9]
    model.output_kernel.assign(items.T)
    model.save(Path(folder) / "model.keras")

    got_items = {r[C.ITEM_IDX]: np.array(r[VECTOR]) for r in item_vectors(spark, folder, FIRST).collect()}
    assert sorted(got_items) == list(range(FIRST, NUM_ITEMS))  # every vocabulary item, no reserved index
    np.testing.assert_allclose(np.stack([got_items[i] for i in range(FIRST, NUM_ITEMS)]), items[FIRST:], atol=1e-6)

    k, never = 5, [FIRST + 1, FIRST + 30]
    got = similar_items(spark, folder, FIRST, k, batch_size=7, item_block=8, never=never).collect()
    unit = items / np.linalg.norm(items, axis=1, keepdims=True)
    cosine = unit @ unit.T
    by_item: dict[int, list] = {}
    for r in got:
        by_item.setdefault(r[C.ITEM_IDX], []).append(r)
    assert sorted(by_item) == list(range(FIRST, NUM_ITEMS))
    for item, rows in by_item.items():
        rows.sort(key=lambda r: r[C.RANK])
        allowed = [j for j in range(FIRST, NUM_ITEMS) if j != item and j not in never]
        expected = sorted(allowed, key=lambda j: (-cosine[item, j], j))[:k]
        assert [r[C.RANK] for r in rows] == list(range(1, k + 1))
        assert [r[SIMILAR_ITEM_IDX] for r in rows] == expected, item
        np.testing.assert_allclose([r[SIMILARITY] for r in rows], cosine[item, expected], atol=1e-5)
    assert by_item[FIRST + 5][0][SIMILAR_ITEM_IDX] == FIRST + 9 and by_item[FIRST + 9][0][SIMILAR_ITEM_IDX] == FIRST + 5

    histories = [(f"u{u}", [0] * (LENGTH - 1 - u % 2) + [FIRST + u] * (1 + u % 2)) for u in range(5)]
    df = spark.createDataFrame(histories, f"{C.USER_ID} string, {C.HISTORY} array<int>")
    got_users = {r[C.USER_ID]: np.array(r[VECTOR]) for r in user_vectors(df, folder, batch_size=2).collect()}
    expected_users = model.user_vectors({C.HISTORY: np.array([h for _, h in histories], np.int32)}).numpy()
    assert sorted(got_users) == [u for u, _ in histories]
    np.testing.assert_allclose(np.stack([got_users[u] for u, _ in histories]), expected_users, atol=1e-5)
