"""TIFU-KNN in Spark against a brute-force NumPy version written here from the paper's formulas
(Hu et al., SIGIR 2020), on a small shop; the basket weights against numbers worked out by hand."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from recspark import constants as C
from recspark.evaluation.tifu_knn import (
    BASKET_END, BASKET_ID, WEIGHT, history_baskets, own_and_neighbour_weights, tifu_knn, tifu_scores,
    top_candidates, user_neighbours, user_vectors, with_basket_weights,
)

ITEMS = "abcdefghij"  # vocabulary indices 2 .. 11; "z" is outside the vocabulary
IDX = {item: 2 + n for n, item in enumerate(ITEMS)}
# Distinct training counts: the popular fillers are j, i, h, ... (j is bought only in the test period).
VOCAB = [(item, IDX[item], 100 + 10 * IDX[item]) for item in ITEMS]
SEQUENCE_SCHEMA = ("user_id string, item_id array<string>, item_idx array<int>, event_ts array<timestamp>, "
                   "split array<string>, session_id array<string>")
DAY0 = dt.datetime(2024, 1, 1)


def make_shop(seed: int = 11) -> tuple[list[tuple], dict[str, list[set[int]]]]:
    """Events (user, item, time, session, event id, file, row, split) of 9 users (with
    out-of-vocabulary items, a session-less user, validation and test events) and the training
    baskets the reference sees: vocabulary items only, empty baskets gone."""
    rng = np.random.default_rng(seed)
    basket_counts = {"u0": 1, "u1": 2, "u2": 3, "u3": 5, "u4": 6, "u5": 7, "u6": 9, "u7": 14, "u8": 4}
    taste = {user: rng.permutation(list("abcdefghi"))[:5] for user in basket_counts}  # j: never in training
    events, baskets, row = [], {}, 0
    for user, n in basket_counts.items():
        baskets[user] = []
        for b in range(n):
            size = int(rng.integers(1, 5))
            items = {str(i) for i in rng.choice(taste[user], size=size, replace=bool(rng.random() < 0.3))}
            if rng.random() < 0.25:
                items.add("z")
            for item in sorted(items):
                row += 1
                # u8 has no sessions: each event is its own basket (as the features stage's split).
                session = None if user == "u8" else f"{user}-s{b}"
                events.append((user, item, DAY0 + dt.timedelta(days=b, minutes=int(rng.integers(0, 60))), session,
                               f"e{row}", "f.csv", row, "train"))
            if user != "u8" and items - {"z"}:
                baskets[user].append({IDX[i] for i in items if i != "z"})
        if user == "u8":  # u8's one-event baskets share a day; the reference order is by minute, then row
            days = [e for e in events if e[0] == "u8"]
            order = sorted((e[2], e[6], e[1]) for e in days if e[1] != "z")
            baskets[user] = [{IDX[item]} for _, _, item in order]
        # Later periods: never part of the history.
        for split, day in ((C.VALIDATION, 40), (C.TEST, 50)):
            for item in ("j", str(taste[user][0])):
                row += 1
                events.append((user, item, DAY0 + dt.timedelta(days=day), f"{user}-{split}", f"e{row}", "f.csv",
                               row, split))
    # A basket of only out-of-vocabulary items is no basket: u2's second basket.
    events.append(("u2", "z", DAY0 + dt.timedelta(days=1, hours=5), "u2-oov", "e-oov", "f.csv", 10_000, "train"))
    return events, baskets


def reference(baskets: dict[str, list[set[int]]], queries: list[str], *, group_count: int, within_decay: float,
              group_decay: float, neighbours: int, alpha: float) -> dict[str, np.ndarray]:
    """p for every query user, straight from the paper: groups of consecutive baskets (the latest
    equal-sized, the earliest the rest), g_i = 1/|G_i| sum_j r_b^(|G_i|-j) v_j,
    u = 1/m sum_i r_g^(m-i) g_i, cosine k nearest other users, p = alpha u + (1 - alpha) mean."""
    size = 2 + len(ITEMS)
    vectors = {}
    for user, sequence in baskets.items():
        n = len(sequence)
        m = min(group_count, n)
        s = n // m
        sizes = [n - (m - 1) * s] + [s] * (m - 1)
        u, start = np.zeros(size), 0
        for i, length in enumerate(sizes, start=1):
            group = sequence[start:start + length]
            start += length
            g = np.zeros(size)
            for j, basket in enumerate(group, start=1):
                v = np.zeros(size)
                v[list(basket)] = 1.0
                g += within_decay ** (length - j) * v
            u += group_decay ** (m - i) * g / length
        vectors[user] = u / m
    predictions = {}
    for user in queries:
        u = vectors[user]
        sims = []
        for other, w in vectors.items():
            cosine = float(u @ w / (np.linalg.norm(u) * np.linalg.norm(w)))
            if other != user and cosine > 0:
                sims.append((-round(cosine, 12), other))
        near = [other for _, other in sorted(sims)[:neighbours]]
        mean = np.mean([vectors[o] for o in near], axis=0) if near else np.zeros(size)
        predictions[user] = alpha * u + (1 - alpha) * mean
    return predictions


def reference_top_k(p: np.ndarray, k: int, seen: set[int]) -> list[str]:
    """The k best positive items (ties: smaller index), then the most popular unlisted items."""
    scored = sorted((-round(float(p[i]), 12), i) for i in range(len(p)) if p[i] > 0 and i not in seen)
    top = [i for _, i in scored[:k]]
    popular = [idx for _, _, idx in sorted((-count, item_id, idx) for item_id, idx, count in VOCAB)]
    top += [i for i in popular if i not in top and i not in seen][:k - len(top)]
    by_index = {idx: item for item, idx, _ in VOCAB}
    return [by_index[i] for i in top]


def gold_sequences(spark: SparkSession, events: list[tuple]):
    """The gold sequences of ``events``: per user in (time, file, row) order, the basket of a step
    its session, else the event itself; "z" gets index 1 (outside the vocabulary)."""
    rows = []
    for user in sorted({e[0] for e in events}):
        steps = sorted((e for e in events if e[0] == user), key=lambda e: (e[2], e[5], e[6]))
        rows.append((user, [e[1] for e in steps], [IDX.get(e[1], 1) for e in steps], [e[2] for e in steps],
                     [e[7] for e in steps], [e[3] or e[4] for e in steps]))
    return spark.createDataFrame(rows, SEQUENCE_SCHEMA)


@pytest.fixture(scope="module")
def shop(spark: SparkSession):
    events, baskets = make_shop()
    vocab = spark.createDataFrame(VOCAB, "item_id string, item_idx int, train_count long")
    history = history_baskets(gold_sequences(spark, events), ("train",), first_item_idx=2).persist()
    query_users = sorted(baskets)[:-1]  # u8 is a possible neighbour but gets no query
    seen = {user: sorted(set().union(*baskets[user])) for user in query_users}
    by_index = {idx: item for item, idx, _ in VOCAB}
    queries = spark.createDataFrame([(u, [by_index[i] for i in seen[u]], seen[u]) for u in query_users],
                                    "user_id string, seen array<string>, seen_idx array<int>")
    yield history, vocab, queries, baskets, query_users, seen
    history.unpersist()


def test_history_baskets_are_the_training_baskets_of_vocabulary_items(shop) -> None:
    history, _, _, baskets, _, _ = shop
    rows = history.collect()
    got: dict[str, dict[object, set[int]]] = {}
    ends: dict[str, dict[object, object]] = {}
    for r in rows:
        got.setdefault(r[C.USER_ID], {}).setdefault(r[BASKET_ID], set()).add(r[C.ITEM_IDX])
        ends.setdefault(r[C.USER_ID], {})[r[BASKET_ID]] = r[BASKET_END]
    for user, expected in baskets.items():
        ordered = [got[user][b] for b in sorted(got[user], key=lambda b: (ends[user][b], b))]
        assert ordered == expected, user
    # The held-out periods never enter: neither their baskets nor j, bought only then.
    assert not {r[BASKET_ID] for r in rows if r[BASKET_ID].endswith(("-validation", "-test"))}
    assert IDX["j"] not in {r[C.ITEM_IDX] for r in rows}


def test_basket_weights_by_hand(spark: SparkSession) -> None:
    # r_b = 0.5, r_g = 0.25, 3 groups. 6 baskets: groups of 2 (b1 b2 | b3 b4 | b5 b6);
    # 5 baskets: s = floor(5/3) = 1, the earliest group takes 5 - 2 = 3 (b1 b2 b3 | b4 | b5);
    # 2 baskets: 2 groups of one.
    rows = [(user, f"b{b}", b, 2) for user, n in (("six", 6), ("five", 5), ("two", 2)) for b in range(1, n + 1)]
    baskets = spark.createDataFrame(rows, f"user_id string, {BASKET_ID} string, {BASKET_END} int, item_idx int")
    got = {(r[C.USER_ID], r[BASKET_ID]): r[WEIGHT] for r in with_basket_weights(baskets, 3, 0.5, 0.25).collect()}
    expected = {
        # weight = r_b^(|G| - j) / |G| * r_g^(m - i) / m
        ("six", "b1"): 0.5 / 2 * 0.0625 / 3, ("six", "b2"): 1 / 2 * 0.0625 / 3,
        ("six", "b3"): 0.5 / 2 * 0.25 / 3, ("six", "b4"): 1 / 2 * 0.25 / 3,
        ("six", "b5"): 0.5 / 2 / 3, ("six", "b6"): 1 / 2 / 3,
        ("five", "b1"): 0.25 / 3 * 0.0625 / 3, ("five", "b2"): 0.5 / 3 * 0.0625 / 3, ("five", "b3"): 1 / 3 * 0.0625 / 3,
        ("five", "b4"): 0.25 / 3, ("five", "b5"): 1 / 3,
        ("two", "b1"): 0.25 / 2, ("two", "b2"): 1 / 2,
    }
    assert got == pytest.approx(expected, rel=1e-12)
    # u sums a basket's weight over its items: item 2 is in every basket of "two".
    vectors = user_vectors(baskets, 3, 0.5, 0.25)
    assertDataFrameEqual(vectors.filter(F.col(C.USER_ID) == "two").select(C.USER_ID, C.ITEM_IDX, WEIGHT),
                         spark.createDataFrame([("two", 2, 0.625)], "user_id string, item_idx int, weight double"))
    # The dense user index follows the user id order (the neighbours' tie-break).
    assert sorted((r[C.USER_ID], r["user_idx"]) for r in vectors.select(C.USER_ID, "user_idx").distinct().collect()) \
        == [("five", 1), ("six", 2), ("two", 3)]


# Two settings cover the cases (each costs a minute of Spark on 2 cores): fewer neighbours than users
# with fewer groups than most users have baskets; more neighbours than users, 7 groups (users with
# 9 and 14 baskets: an uneven earliest group), no within-group decay, and seen items excluded.
SETTINGS = [
    # block_users: the similarity in blocks of 2 users (5 blocks, 25 block pairs), or all in one.
    dict(group_count=3, within_decay=0.9, group_decay=0.7, neighbours=2, alpha=0.3, exclude_seen=False, block_users=2),
    dict(group_count=7, within_decay=1.0, group_decay=0.1, neighbours=20, alpha=0.8, exclude_seen=True,
         block_users=2048),
]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"m{s['group_count']}-k{s['neighbours']}-a{s['alpha']}")
def test_tifu_knn_equals_the_numpy_reference(shop, setting: dict) -> None:
    history, vocab, queries, baskets, query_users, seen = shop
    params = {key: setting[key] for key in ("group_count", "within_decay", "group_decay", "neighbours", "alpha")}
    expected = reference(baskets, query_users, **params)
    k = 4
    exclude_seen = setting["exclude_seen"]

    # Persisted as the evaluation does: each is read several times below.
    vectors = user_vectors(history, params["group_count"], params["within_decay"], params["group_decay"]).persist()
    near = user_neighbours(vectors, queries, params["neighbours"], block_users=setting["block_users"]).persist()
    scores = tifu_scores(vectors, near, queries, neighbours=params["neighbours"], alpha=params["alpha"],
                         exclude_seen=exclude_seen).collect()
    got = {(r[C.USER_ID], r[C.ITEM_IDX]): r[C.SCORE] for r in scores}
    want = {(u, i): float(p[i]) for u, p in expected.items() for i in range(len(p))
            if p[i] > 0 and not (exclude_seen and i in seen[u])}
    assert set(got) == set(want)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert IDX["j"] not in {i for _, i in got}  # bought only in the test period

    # The floor cut keeps every item of the reference top k, and does cut (users with >= k own items).
    weights = own_and_neighbour_weights(vectors, near, queries, params["neighbours"], block_users=setting["block_users"])
    candidates = {(r[C.USER_ID], r[C.ITEM_IDX])
                  for r in top_candidates(weights, queries, params["alpha"], exclude_seen, k).collect()}
    for user in query_users:
        best = sorted((-round(float(p), 12), i) for i, p in enumerate(expected[user])
                      if p > 0 and not (exclude_seen and i in seen[user]))[:k]
        assert {(user, i) for _, i in best} <= candidates, user
    assert exclude_seen or len(candidates) < len(got)

    # The alpha-free cut keeps every reference top-k item for any alpha >= its min_alpha, and does cut
    # (the lists of exclude_seen read uncut weights: the user's own items are not listed there).
    for min_alpha in (params["alpha"], params["alpha"] / 2):
        reach = None if exclude_seen else (k, min_alpha)
        kept = {(r[C.USER_ID], r[C.ITEM_IDX]) for r in own_and_neighbour_weights(
            vectors, near, queries, params["neighbours"], reachable=reach, block_users=setting["block_users"]).collect()}
        for alpha in (min_alpha, (1 + min_alpha) / 2, 1.0):
            at_alpha = reference(baskets, query_users, **{**params, "alpha": alpha})
            for user in query_users:
                best = sorted((-round(float(p), 12), i) for i, p in enumerate(at_alpha[user])
                              if p > 0 and not (exclude_seen and i in seen[user]))[:k]
                assert {(user, i) for _, i in best} <= kept, (user, min_alpha, alpha)
        if exclude_seen:
            assert len(kept) == weights.count()  # no cut: the user's own items are not listed
        elif min_alpha == params["alpha"]:
            assert len(kept) < weights.count()  # (at half of it, this small shop keeps every row)
    vectors.unpersist()
    near.unpersist()

    persisted = tifu_knn(history, vocab, queries, k, exclude_seen, **params)
    lists = persisted.collect()
    persisted.unpersist()
    by_user: dict[str, list] = {}
    for r in sorted(lists, key=lambda r: (r[C.USER_ID], r[C.RANK])):
        by_user.setdefault(r[C.USER_ID], []).append(r)
    assert sorted(by_user) == query_users
    for user in query_users:
        top = reference_top_k(expected[user], k, set(seen[user]) if exclude_seen else set())
        assert [r[C.ITEM_ID] for r in by_user[user]] == top, user
        assert [r[C.RANK] for r in by_user[user]] == list(range(1, k + 1))
        # Listed items score p; fillers (only ever items with p = 0) score 0.
        assert [r[C.SCORE] for r in by_user[user]] == pytest.approx(
            [float(expected[user][IDX[r[C.ITEM_ID]]]) for r in by_user[user]], rel=1e-6, abs=1e-12)


def test_neighbours_and_weights_do_not_depend_on_the_blocks(shop) -> None:
    """The same neighbours (similarities, ranks) and the same own and neighbour weights, cut or not,
    whatever the block size: one block, blocks of 1 (every pair of users its own task), 2 and 4 (a
    last block smaller than the others is avoided, so 9 users make 3 blocks of 3)."""
    history, _, queries, baskets, query_users, _ = shop
    vectors = user_vectors(history, 3, 0.9, 0.7).persist()
    near = {size: user_neighbours(vectors, queries, 3, block_users=size).persist() for size in (2048, 1, 2, 4)}
    whole = near[2048]
    assert whole.select(C.USER_ID).distinct().count() == len(query_users)
    for reach in (None, (2, 0.5)):
        weights = own_and_neighbour_weights(vectors, whole, queries, 3, reachable=reach).persist()
        assert weights.select(C.USER_ID).distinct().count() == len(query_users)
        for size in (1, 2, 4):
            assertDataFrameEqual(near[size], whole, checkRowOrder=False, rtol=1e-12)
            assertDataFrameEqual(own_and_neighbour_weights(vectors, near[size], queries, 3, reachable=reach,
                                                           block_users=size), weights, checkRowOrder=False, rtol=1e-12)
        weights.unpersist()
    for df in (*near.values(), vectors):
        df.unpersist()


def test_the_reference_shop_has_the_cases_that_matter(shop) -> None:
    # Guards the test itself: some users have fewer positive-similarity users than k = 3, fewer
    # baskets than groups, a basket count not divisible by the groups, and fewer own items than k.
    _, _, _, baskets, query_users, seen = shop
    counts = {u: len(b) for u, b in baskets.items()}
    assert min(counts.values()) < 3 and any(n % 3 and n > 3 for n in counts.values()) and max(counts.values()) > 7
    assert any(len(seen[u]) < 4 for u in query_users)


def test_tifu_knn_is_reported_beside_buy_again_only_when_seen_items_are_allowed() -> None:
    from recspark.evaluation.evaluate import TIFU, baseline_names

    assert TIFU == "tifu_knn"
    assert TIFU in baseline_names(exclude_seen=False) and TIFU not in baseline_names(exclude_seen=True)


def test_one_configured_point_is_chosen_without_a_validation_pass() -> None:
    """The default grid is one point: it is the choice, and the validation data is never read (the
    tables passed here are None, so any read would fail); a grid of two is tuned (test_pipeline)."""
    from recspark.config import load_config
    from recspark.evaluation.evaluate import choose_tifu, tifu_tuning_lines

    config = load_config(None, ["evaluate.tifu_alphas=[0.8]", "evaluate.tifu_neighbours=[50]"])
    tuning = choose_tifu(None, None, None, config)
    assert tuning["chosen_by"] == "configuration" and tuning["grid"] == []
    assert tuning["chosen"] == {"group_count": 7, "within_decay": 0.9, "group_decay": 0.9, "neighbours": 50,
                                "alpha": 0.8}
    text = "\n".join(tifu_tuning_lines({"tifu_knn_tuning": tuning}))
    assert "chosen by configuration: 7 groups" in text and "alpha 0.8" in text and "| groups |" not in text
    with pytest.raises(AttributeError):  # two points: the validation queries are read
        choose_tifu(None, None, None, load_config(None, ["evaluate.tifu_alphas=[0.5,0.8]"]))
