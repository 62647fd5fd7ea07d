"""ALS baseline on a tiny shop whose answer is known: two groups of users with disjoint tastes."""
from __future__ import annotations

from pyspark.sql import SparkSession

from recspark import constants as C
from recspark.evaluation.baselines import als


def test_als_recommends_the_users_own_group_and_skips_seen(spark: SparkSession, tmp_path) -> None:
    # Items 2..7 are group 0's, 8..13 group 1's; every user has seen 4 of their group's 6 items.
    sequences, queries, vocab = [], [], [(f"item-{i}", i) for i in range(2, 14)]
    for user in range(20):
        group = range(2, 8) if user % 2 == 0 else range(8, 14)
        seen = [i for n, i in enumerate(group) if (n + user) % 6 < 4]
        sequences.append((f"u{user}", seen, ["train"] * len(seen)))
        queries.append((f"u{user}", [f"item-{i}" for i in seen], seen))
    result = als(
        spark.createDataFrame(sequences, "user_id string, item_idx array<int>, split array<string>"),
        spark.createDataFrame(vocab, "item_id string, item_idx int"),
        spark.createDataFrame(queries, "user_id string, seen array<string>, seen_idx array<int>"),
        k=2, exclude_seen=True, rank=4, reg_param=0.01, max_iter=15, alpha=20.0, seed=1,
        checkpoint_dir=str(tmp_path / "spark-checkpoints"),
    ).collect()
    by_user: dict[str, list] = {}
    for row in result:
        by_user.setdefault(row[C.USER_ID], []).append(row)
    assert sorted(by_user) == sorted(f"u{u}" for u in range(20))
    for user, rows in by_user.items():
        number = int(user[1:])
        seen = set(next(q[1] for q in queries if q[0] == user))
        assert sorted(r[C.RANK] for r in rows) == [1, 2]
        assert not seen & {r[C.ITEM_ID] for r in rows}
        # The two unseen items of the user's own group are the right answer.
        own = {f"item-{i}" for i in (range(2, 8) if number % 2 == 0 else range(8, 14))}
        assert {r[C.ITEM_ID] for r in rows} == own - seen
