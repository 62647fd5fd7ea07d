"""Bounded-memory scoring: the blocked top-K against brute-force NumPy on the default reserved layout
(item blocks smaller than the catalogue, so the running merge crosses block boundaries), seen and
out-of-stock exclusions, and every model kind through the Spark UDF against its own full logits."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import SparkSession

from recspark import constants as C
from recspark.config import FeaturesConfig
from recspark.scoring import blocked_top_k, excluded_pairs, ranked_rows, recommend_indices

FIRST = 2 + 64  # the default layout (PAD, unknown, 64 hashed buckets), written out
assert FeaturesConfig().first_item_idx == FIRST, "these tests are about the default layout"
REAL_ITEMS = 150
NUM_ITEMS = FIRST + REAL_ITEMS
LENGTH, CANDIDATES, USER_DIM = 6, 5, 3


def brute_force(logits: np.ndarray, k: int, seen: list, blocked: np.ndarray | None) -> list[tuple[list, np.ndarray]]:
    """Per row: (top-k item_idx best first, ties to the lower index; softmax of the allowed logits)."""
    out = []
    for row, values in enumerate(np.asarray(logits, dtype=np.float64)):
        allowed = np.arange(FIRST, len(values))
        allowed = allowed[~np.isin(allowed, seen[row])]
        if blocked is not None:
            allowed = allowed[~blocked[allowed]]
        ranked = sorted(allowed.tolist(), key=lambda i: (-values[i], i))[:k]
        if not len(allowed):
            out.append(([], np.zeros(0)))
            continue
        shifted = np.exp(values[allowed] - values[allowed].max())
        probabilities = dict(zip(allowed.tolist(), shifted / shifted.sum()))
        out.append((ranked, np.array([probabilities[i] for i in ranked])))
    return out


@pytest.mark.parametrize("block", [1, 7, 32, 10_000])
def test_blocked_top_k_equals_brute_force(block: int) -> None:
    rng = np.random.default_rng(block)
    n, dim, k = 40, 16, 12
    users = rng.normal(size=(n, dim)).astype(np.float32)
    items = rng.normal(size=(NUM_ITEMS, dim)).astype(np.float32)
    bias = rng.normal(size=NUM_ITEMS).astype(np.float32)
    items[:FIRST] *= 100  # reserved rows score far above every item: they must still never come out
    seen = [rng.choice(NUM_ITEMS, size=rng.integers(0, 30), replace=False) for _ in range(n)]
    seen[0] = np.arange(FIRST, NUM_ITEMS - 3)  # three items left: fewer than k rows
    seen[1] = np.arange(NUM_ITEMS)  # nothing left
    blocked = rng.random(NUM_ITEMS) < 0.1
    top = blocked_top_k(lambda lo, hi: users @ items[lo:hi].T + bias[lo:hi], n, NUM_ITEMS, FIRST, k, block,
                        excluded_pairs(seen, n), blocked)
    with np.errstate(invalid="ignore"):  # -inf - -inf on the places of rows with fewer than k items
        confidences = np.exp(top.scores - top.lse_rest[:, None])
    got_items, got_scores, got_conf = ranked_rows(top.items, top.scores, confidences)
    full = users.astype(np.float64) @ items.T.astype(np.float64) + bias
    expected = brute_force(full, k, seen, blocked)
    assert len(got_items[0]) == 3 - int(blocked[NUM_ITEMS - 3:].sum()) and len(got_items[1]) == 0
    for row, (ranked, probabilities) in enumerate(expected):
        assert got_items[row].tolist() == ranked, row
        assert all(i >= FIRST and not blocked[i] and i not in seen[row] for i in got_items[row])
        np.testing.assert_allclose(got_scores[row], full[row, ranked], rtol=0, atol=1e-4)
        np.testing.assert_allclose(got_conf[row], probabilities, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("block", [1, 5, 32])
def test_tied_scores_go_to_the_lower_item_index(block: int) -> None:
    """An untrained or dead model scores many items exactly alike: the top-k is then the lowest
    allowed indices, as a full sort ranks them, whichever block and merge path they pass through."""
    n, k = 4, 7
    scores = np.zeros((n, NUM_ITEMS), np.float32)
    scores[2, FIRST + 40] = 1.0  # one item above the tie, far into the catalogue
    scores[3, FIRST + 90:] = -1.0  # the tie only in the first part
    seen = [[], [FIRST, FIRST + 2], [], []]
    top = blocked_top_k(lambda lo, hi: scores[:, lo:hi], n, NUM_ITEMS, FIRST, k, block, excluded_pairs(seen, n))
    got = [row.tolist() for row in ranked_rows(top.items, top.scores, np.zeros_like(top.scores))[0]]
    assert got == [ranked for ranked, _ in brute_force(scores, k, seen, None)]
    assert got[1][:2] == [FIRST + 1, FIRST + 3] and got[2][0] == FIRST + 40


def _spec(name: str):
    from recspark.models import ModelSpec
    from recspark.models.item_tables import ItemTables, feature_spec

    features = None
    if name in ("towers", "dnn"):
        rng = np.random.default_rng(4)
        category, price = np.zeros(NUM_ITEMS, np.int32), np.zeros(NUM_ITEMS, np.int32)
        category[FIRST:], price[FIRST:] = rng.integers(2, 6, REAL_ITEMS), rng.integers(1, 4, REAL_ITEMS)
        tables = ItemTables(category, price, np.where(np.arange(NUM_ITEMS) >= FIRST, 3, 0).astype(np.int32),
                            (np.arange(NUM_ITEMS) >= FIRST).astype(np.float32))
        features = feature_spec(USER_DIM, tables)
    return ModelSpec(num_items=NUM_ITEMS, max_seq_len=LENGTH, num_event_types=5, num_gap_buckets=4,
                     first_item_idx=FIRST, repeat_candidates=CANDIDATES, features=features)


def _save(folder: Path, name: str) -> Path:
    from recspark.config import TrainConfig
    from recspark.models import build_model

    model = build_model(name, _spec(name), TrainConfig(embedding_dim=8, num_layers=1, num_heads=2, hidden_units=[8],
                                                       negatives=3, dropout=0.0, seed=3))
    model.save(folder / "model.keras")
    (folder / "model_meta.json").write_text(json.dumps({"num_items": NUM_ITEMS, "max_seq_len": LENGTH,
                                                        "inputs": list(model.INPUTS)}))
    return folder


def _histories(n: int) -> list[dict]:
    """Users with histories, behaviour channels, a repeat profile of their own items, a user vector and
    seen items (some users none, one seeing almost the whole catalogue)."""
    rng = np.random.default_rng(11)
    rows = []
    for u in range(n):
        length = int(rng.integers(0, LENGTH + 1))
        steps = rng.integers(FIRST, NUM_ITEMS, length).tolist()
        pad = [0] * (LENGTH - length)
        profile = list(dict.fromkeys(steps))[:CANDIDATES]
        features = rng.random((len(profile), C.REPEAT_FEATURE_COUNT)).astype(np.float32).ravel().tolist()
        seen = [] if u % 3 == 0 else steps[:1]
        if u == 1:
            seen = list(range(FIRST, NUM_ITEMS - 2))
        rows.append({C.USER_ID: f"u{u}", C.HISTORY: pad + steps, C.HISTORY_TYPES: pad + [1] * length,
                     C.HISTORY_GAPS: pad + list(range(length, 0, -1)),
                     C.REPEAT_ITEMS: profile + [0] * (CANDIDATES - len(profile)),
                     C.REPEAT_FEATURES: features + [0.0] * (CANDIDATES - len(profile)) * C.REPEAT_FEATURE_COUNT,
                     C.USER_VECTOR: rng.normal(size=USER_DIM).astype(np.float32).tolist(), C.SEEN_IDX: seen})
    return rows


@pytest.mark.parametrize("name", ["mean_pool", "sasrec", "repeatnet", "repeatnet_explore", "towers", "dnn"])
def test_udf_top_k_equals_the_models_full_logits(spark: SparkSession, tmp_path: Path, name: str) -> None:
    """Through Spark: blocks of 32 items over 150 (and the 66 reserved indices skipped), batches of 3
    users, seen and out-of-stock items excluded; the same lists as ranking the model's own full
    logits in NumPy, every user once with at most k rows."""
    from recspark.models.training import load_model
    from recspark.scoring import model_batch

    folder = _save(tmp_path, name)
    rows = _histories(23)
    schema = (f"{C.USER_ID} string, {C.HISTORY} array<int>, {C.HISTORY_TYPES} array<int>, {C.HISTORY_GAPS} array<int>, "
              f"{C.REPEAT_ITEMS} array<int>, {C.REPEAT_FEATURES} array<float>, {C.USER_VECTOR} array<float>, "
              f"{C.SEEN_IDX} array<int>")
    df = spark.createDataFrame([tuple(r.values()) for r in rows], schema)
    out_of_stock = list(range(FIRST + 3, NUM_ITEMS, 9))
    k = 7
    got = recommend_indices(df, str(folder), k, exclude_seen=True, batch_size=3, never_recommend=out_of_stock,
                            item_block=32).collect()

    model, meta = load_model(folder)
    import pandas as pd

    from recspark.scoring import ScoringPlan, build_plan

    # The bounded path of each model kind, not the full-logits fallback.
    assert type(build_plan(model)) is not ScoringPlan

    frame = pd.DataFrame(rows)
    logits = model(model_batch(meta["inputs"], [frame[c] for c in meta["inputs"]]), training=False).numpy()
    blocked = np.isin(np.arange(NUM_ITEMS), out_of_stock)
    expected = brute_force(logits, k, [r[C.SEEN_IDX] for r in rows], blocked)
    by_user: dict[str, list] = {}
    for r in got:
        by_user.setdefault(r[C.USER_ID], []).append(r)
    # Every user once: each has something left to recommend here.
    assert sorted(by_user) == sorted(r[C.USER_ID] for r in rows)
    for row, (ranked, probabilities) in enumerate(expected):
        mine = sorted(by_user.get(rows[row][C.USER_ID], []), key=lambda r: r[C.RANK])
        assert len(mine) <= k and [r[C.RANK] for r in mine] == list(range(1, len(mine) + 1))
        assert [r[C.ITEM_IDX] for r in mine] == ranked, (name, row)
        np.testing.assert_allclose([r[C.SCORE] for r in mine], logits[row, ranked], rtol=0, atol=2e-4)
        np.testing.assert_allclose([r[C.CONFIDENCE] for r in mine], probabilities, rtol=2e-3, atol=1e-6)
    assert len(by_user["u1"]) == 2 - int(blocked[NUM_ITEMS - 2:].sum())  # only two unseen items left
    if name == "repeatnet":  # the repeat head must have put some own (unseen) item into a list
        assert any(r[C.ITEM_IDX] in rows[int(r[C.USER_ID][1:])][C.REPEAT_ITEMS] for r in got)


def test_calibrated_confidence_and_threshold(spark: SparkSession, tmp_path: Path) -> None:
    """A calibration maps each raw confidence; min_confidence drops the tail of a list, never a middle."""
    from recspark.calibration import Calibration

    folder = _save(tmp_path, "mean_pool")
    rows = _histories(12)
    df = spark.createDataFrame([(r[C.USER_ID], r[C.HISTORY], r[C.SEEN_IDX]) for r in rows],
                               f"{C.USER_ID} string, {C.HISTORY} array<int>, {C.SEEN_IDX} array<int>")
    k = 6
    arrow_batch = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    raw = {(r[C.USER_ID], r[C.RANK]): r for r in recommend_indices(df, str(folder), k, exclude_seen=True,
                                                                   batch_size=5).collect()}
    # The scorer's batch size is its own: the session's Arrow batch size is left as it was.
    assert spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch") == arrow_batch
    confidences = sorted(r[C.CONFIDENCE] for r in raw.values())
    # A steep map over the observed range, and a threshold in the middle of the mapped values.
    calibration = Calibration(boundaries=(confidences[0], confidences[-1]), predictions=(0.05, 0.95))
    mapped = {key: float(calibration.apply(np.array([r[C.CONFIDENCE]]))[0]) for key, r in raw.items()}
    threshold = float(np.median(list(mapped.values())))
    got = recommend_indices(df, str(folder), k, exclude_seen=True, calibration=calibration,
                            min_confidence=threshold).collect()
    expected = {key for key, value in mapped.items() if value >= threshold}
    assert {(r[C.USER_ID], r[C.RANK]) for r in got} == expected and 0 < len(expected) < len(raw)
    for r in got:
        assert r[C.CONFIDENCE] == pytest.approx(mapped[(r[C.USER_ID], r[C.RANK])], abs=1e-6)
        assert r[C.ITEM_IDX] == raw[(r[C.USER_ID], r[C.RANK])][C.ITEM_IDX]


def test_blocked_top_k_memory_does_not_grow_with_the_catalogue() -> None:
    """Peak NumPy allocation during the top-K over 400k items stays a small multiple of batch x block,
    far below the batch x catalogue logits (100 MB here) a full ranking would hold."""
    import tracemalloc

    rng = np.random.default_rng(0)
    n, dim, k, block, num_items = 64, 8, 100, 1024, FIRST + 400_000
    users = rng.normal(size=(n, dim)).astype(np.float32)
    items = rng.normal(size=(num_items, dim)).astype(np.float32)
    seen = [rng.choice(num_items, 50, replace=False) for _ in range(n)]
    tracemalloc.start()
    try:
        top = blocked_top_k(lambda lo, hi: users @ items[lo:hi].T, n, num_items, FIRST, k, block,
                            excluded_pairs(seen, n))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (top.items >= FIRST).all()
    assert peak < 16 * n * block * 4 + 4 * n * k * 8, f"peak {peak / 2**20:.1f} MiB"
    assert peak < n * (num_items - FIRST) * 4 / 10
