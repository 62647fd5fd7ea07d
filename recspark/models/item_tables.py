"""Per-item attribute lookup tables for the feature models (towers, dnn), built on the driver.

Light on purpose (Spark and numpy, no TensorFlow): the train stage's driver builds the tables and
hands them to every Horovod rank, which copies them into the model as non-trainable weights.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import constants as C

# Items with fewer training events than this keep only their attribute features: their id
# embedding has seen too few gradients to mean anything (cold start).
ID_MIN_COUNT = 5
# Popularity bucket = floor(log2(1 + training events)), capped: 2^15 events and more share a bucket.
POPULARITY_BUCKETS = 16
EVENTS_ALL = "events_all"  # gold item_features: training events of the item
PRICE_BUCKET = "price_bucket"  # gold item_features: 0 .. price_buckets-1, null without a price
# The models that read user_vector and the item tables (recspark.models.towers, recspark.models.dnn).
FEATURE_MODELS = ("towers", "dnn")
ITEM_FEATURES = "item_features"  # gold tables (names owned by recspark.pipeline.item_features
USER_FEATURES = "user_features"  # and recspark.pipeline.user_features)

if TYPE_CHECKING:
    from recspark.config import Config


@dataclasses.dataclass(frozen=True)
class ItemTables:
    """Item attributes indexed by item_idx (length num_items; rows PAD and OOV stay 0).

    - category: category_idx (0 missing, 1 OOV, categories from 2);
    - price: 1 + price_bucket, 0 when the price is unknown;
    - popularity: min(floor(log2(1 + training events)), POPULARITY_BUCKETS - 1);
    - use_id: 1.0 where the item's id embedding is used, 0.0 where attributes alone describe it.
    """

    category: np.ndarray
    price: np.ndarray
    popularity: np.ndarray
    use_id: np.ndarray

    def __post_init__(self) -> None:
        lengths = {len(self.category), len(self.price), len(self.popularity), len(self.use_id)}
        if len(lengths) != 1:
            raise ValueError(f"item tables differ in length: {sorted(lengths)}")

    @property
    def num_items(self) -> int:
        return len(self.category)

    @property
    def num_categories(self) -> int:
        # At least the PAD and unknown rows, whatever the buckets.
        return max(int(self.category.max(initial=0)) + 1, C.OOV_IDX + 1)

    @property
    def num_prices(self) -> int:
        return int(self.price.max(initial=0)) + 1

    def to_dict(self) -> dict[str, list]:
        """JSON values (for ModelSpec.features): lists indexed by item_idx."""
        return {"category": [int(v) for v in self.category], "price": [int(v) for v in self.price],
                "popularity": [int(v) for v in self.popularity], "use_id": [float(v) for v in self.use_id]}

    @staticmethod
    def from_dict(values: dict[str, list]) -> "ItemTables":
        return ItemTables(np.asarray(values["category"], np.int32), np.asarray(values["price"], np.int32),
                          np.asarray(values["popularity"], np.int32), np.asarray(values["use_id"], np.float32))

    @staticmethod
    def empty(num_items: int) -> "ItemTables":
        """All-zero tables: the shape a model is built with before its real tables are loaded."""
        zeros = np.zeros(num_items, dtype=np.int32)
        return ItemTables(zeros, zeros, zeros, np.zeros(num_items, dtype=np.float32))


def item_tables(item_features: DataFrame, vocab: DataFrame, num_items: int,
                id_min_count: int = ID_MIN_COUNT) -> ItemTables:
    """Builds :class:`ItemTables` on the driver from gold ``item_features`` and ``item_vocab``.

    One row per vocabulary item comes back to the driver: that is model-sized (the model holds an
    embedding row per item anyway), so this collect is fine. Items without attributes keep zeros.
    """
    rows = (vocab.select(C.ITEM_ID, C.ITEM_IDX, C.TRAIN_COUNT)
            .join(item_features.select(C.ITEM_ID, C.CATEGORY_IDX, PRICE_BUCKET, EVENTS_ALL), C.ITEM_ID, "left")
            .select(C.ITEM_IDX,
                    F.coalesce(F.col(C.CATEGORY_IDX), F.lit(0)).cast("int").alias("category"),
                    F.coalesce(F.col(PRICE_BUCKET) + 1, F.lit(0)).cast("int").alias("price"),
                    F.least(F.floor(F.log2(F.lit(1) + F.coalesce(F.col(EVENTS_ALL), F.col(C.TRAIN_COUNT)))),
                            F.lit(POPULARITY_BUCKETS - 1)).cast("int").alias("popularity"),
                    (F.col(C.TRAIN_COUNT) >= id_min_count).cast("float").alias("use_id"))
            .toPandas())
    if len(rows) and int(rows[C.ITEM_IDX].max()) >= num_items:
        raise ValueError(f"item_idx {int(rows[C.ITEM_IDX].max())} does not fit num_items={num_items}")
    tables = ItemTables.empty(num_items)
    index = rows[C.ITEM_IDX].to_numpy()
    category, price, popularity, use_id = (tables.category.copy(), tables.price.copy(),
                                           tables.popularity.copy(), tables.use_id.copy())
    category[index] = rows["category"].to_numpy()
    price[index] = rows["price"].to_numpy()
    popularity[index] = rows["popularity"].to_numpy()
    use_id[index] = rows["use_id"].to_numpy()
    return ItemTables(category, price, popularity, use_id)


def feature_spec(user_vector_dim: int, tables: ItemTables) -> dict[str, Any]:
    """The ``features`` entry of a ModelSpec for the feature models (towers, dnn): the sizes their
    layers need and the item tables (copied into the model's weights when it is built)."""
    return {"user_vector_dim": int(user_vector_dim), "num_categories": tables.num_categories,
            "num_prices": tables.num_prices, "tables": tables.to_dict()}


def feature_spec_from_gold(spark: SparkSession, config: "Config", num_items: int,
                           id_min_count: int = ID_MIN_COUNT) -> dict[str, Any]:
    """:func:`feature_spec` from the gold tables of ``config``: the user_vector length (one
    aggregate over user_features) and the item tables (one row per vocabulary item to the driver)."""
    from recspark.utils.delta import read_table

    gold = lambda table: read_table(spark, config.table_path(C.GOLD, table))  # noqa: E731
    dim = user_vector_dim(gold(USER_FEATURES))
    return feature_spec(dim, item_tables(gold(ITEM_FEATURES), gold(C.ITEM_VOCAB), num_items, id_min_count))


def user_vector_dim(user_features: DataFrame) -> int:
    """The one length of ``user_vector`` in gold user_features (one aggregate); fails otherwise."""
    dims = user_features.agg(F.min(F.size(C.USER_VECTOR)).alias("lo"), F.max(F.size(C.USER_VECTOR)).alias("hi")).first()
    if dims["hi"] is None or dims["lo"] != dims["hi"]:
        raise ValueError(f"gold user_features.{C.USER_VECTOR} must have one fixed length, found {dims['lo']}..{dims['hi']}")
    return int(dims["hi"])
