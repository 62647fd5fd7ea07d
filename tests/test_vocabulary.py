"""A model scored after gold was refitted reads its own item indices: serving rows translated by item id."""
from __future__ import annotations

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.vocabulary import to_saved_vocabulary, vocabularies_differ


def test_serving_rows_move_to_the_models_indices_and_unknown_items_to_their_bucket(spark: SparkSession) -> None:
    layout = C.ItemLayout(oov_buckets=4)  # PAD 0, unknown 1, buckets 2..5, items from 6
    first = layout.first_item
    # The model knew a, b, c as 6, 7, 8; gold now counts c first, then a, and has a new item d.
    saved = spark.createDataFrame([("a", first), ("b", first + 1), ("c", first + 2)], "item_id string, item_idx int")
    gold = spark.createDataFrame([("c", first), ("a", first + 1), ("d", first + 2)], "item_id string, item_idx int")
    bucket_of_d = spark.range(1).select(layout.unknown_index(F.lit("d")).alias("b")).first()["b"]
    histories = spark.createDataFrame(
        [("u1", [0, first + 2, first, first + 1], [first, first + 2], [first + 1], [0.5] * 10),
         ("u2", [0, 0, 0, 3], [], [], [0.0] * 10)],  # 3: a bucket stays a bucket
        f"user_id string, {C.HISTORY} array<int>, {C.REPEAT_ITEMS} array<int>, {C.SEEN_IDX} array<int>, "
        f"{C.REPEAT_FEATURES} array<float>")
    features = spark.createDataFrame([("c", first, 5), ("a", first + 1, 3), ("d", first + 2, 1)],
                                     "item_id string, item_idx int, stock long")

    assert vocabularies_differ(gold, saved) and not vocabularies_differ(saved, saved)
    # The reasons' basket items: (user, basket, gold index).
    baskets = spark.createDataFrame([("u1", "b1", first), ("u1", "b1", first + 2)],
                                    f"user_id string, _basket string, {C.ITEM_IDX} int")
    moved, moved_features, moved_baskets = to_saved_vocabulary(histories, features, gold, saved, layout, baskets)
    rows = {row[C.USER_ID]: row for row in moved.collect()}
    assert rows["u1"][C.HISTORY] == [0, bucket_of_d, first + 2, first]  # d -> its bucket, c -> 8, a -> 6
    assert rows["u1"][C.REPEAT_ITEMS] == [first + 2, bucket_of_d] and rows["u1"][C.SEEN_IDX] == [first]
    assert rows["u1"][C.REPEAT_FEATURES] == [0.5] * 10  # aligned by position: untouched
    assert rows["u2"][C.HISTORY] == [0, 0, 0, 3] and rows["u2"][C.REPEAT_ITEMS] == [] and rows["u2"][C.SEEN_IDX] == []
    assert sorted((r[C.ITEM_ID], r[C.ITEM_IDX]) for r in moved_features.collect()) == [("a", first), ("c", first + 2)]
    assert sorted(r[C.ITEM_IDX] for r in moved_baskets.collect()) == sorted([first + 2, bucket_of_d])
