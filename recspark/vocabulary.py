"""Scoring a model with gold tables refitted after its training: item indices translated by item id.

Every export saves the item vocabulary it was trained with (``vocab/item_vocab.parquet``). When the
gold vocabulary has since been refitted (a model kept while the features moved on: the loop's frozen
reference, or a model served after a features run without training), the serving rows' item indices
(``history``, ``repeat_items``, ``seen_idx``) and the item features are translated to the model's:
an item the model knows gets its index, any other its hashed out-of-vocabulary bucket
(``ItemLayout.unknown_index``), as features would have given it; reserved indices stay. No Python
UDF: each array is exploded, joined with the (broadcast) translation and gathered back in order.
"""
from __future__ import annotations

from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import constants as C

INDEX_ARRAYS = (C.HISTORY, C.REPEAT_ITEMS, C.SEEN_IDX)


def saved_item_vocabulary(spark: SparkSession, model_dir: str | Path) -> DataFrame | None:
    """The item vocabulary the export in ``model_dir`` was trained with, or None (an older export)."""
    from recspark.models.warm_start import ITEM_VOCAB_FILE, read_saved_vocabulary  # no TensorFlow import

    return read_saved_vocabulary(spark, Path(model_dir), ITEM_VOCAB_FILE)


def vocabularies_differ(gold: DataFrame, saved: DataFrame) -> bool:
    """True when some (item_id, item_idx) pair is in one vocabulary and not the other (one small action)."""
    pairs = lambda df: df.select(C.ITEM_ID, C.ITEM_IDX)
    return pairs(gold).exceptAll(pairs(saved)).limit(1).count() + pairs(saved).exceptAll(pairs(gold)).limit(1).count() > 0


def translation(gold: DataFrame, saved: DataFrame, layout: C.ItemLayout) -> DataFrame:
    """(_old, _new): each gold item_idx -> the saved vocabulary's index of the same item, else its bucket."""
    return (gold.select(C.ITEM_ID, F.col(C.ITEM_IDX).alias("_old"))
            .join(saved.select(C.ITEM_ID, F.col(C.ITEM_IDX).alias("_saved")), C.ITEM_ID, "left")
            .select("_old", F.coalesce("_saved", layout.unknown_index(F.col(C.ITEM_ID))).cast("int").alias("_new")))


def with_translated_array(df: DataFrame, column: str, mapping: DataFrame, key: str = C.USER_ID) -> DataFrame:
    """``df`` (unique on ``key``) with the int array ``column`` translated by ``mapping`` (_old, _new),
    order kept; indices outside the mapping (PAD, buckets) stay as they are."""
    exploded = df.select(key, F.posexplode(column).alias("_pos", "_old"))
    mapped = (exploded.join(F.broadcast(mapping), "_old", "left")
              .select(key, "_pos", F.coalesce("_new", "_old").alias("_value")))
    gathered = mapped.groupBy(key).agg(F.array_sort(F.collect_list(F.struct("_pos", "_value"))).alias("_steps"))
    translated = gathered.select(key, F.transform("_steps", lambda step: step["_value"]).alias("_translated"))
    return (df.join(translated, key, "left")
            .withColumn(column, F.when(F.col(column).isNull(), F.col(column))
                        .otherwise(F.coalesce("_translated", F.array().cast("array<int>"))))
            .drop("_translated"))


def to_saved_vocabulary(histories: DataFrame, item_features: DataFrame | None, gold: DataFrame, saved: DataFrame,
                        layout: C.ItemLayout, baskets: DataFrame | None = None
                        ) -> tuple[DataFrame, DataFrame | None, DataFrame | None]:
    """Serving ``histories``, gold ``item_features`` and ``baskets`` (rows with an ``item_idx``: the
    reasons' basket items) with their item indices translated from the ``gold`` vocabulary to the
    ``saved`` one (see the module docstring)."""
    mapping = translation(gold, saved, layout)
    for column in INDEX_ARRAYS:
        if column in histories.columns:
            histories = with_translated_array(histories, column, mapping)
    if item_features is not None and C.ITEM_ID in item_features.columns:
        item_features = (item_features.drop(C.ITEM_IDX)
                         .join(saved.select(C.ITEM_ID, C.ITEM_IDX), C.ITEM_ID, "inner"))
    if baskets is not None:
        baskets = (baskets.join(F.broadcast(mapping), F.col(C.ITEM_IDX) == F.col("_old"), "left")
                   .withColumn(C.ITEM_IDX, F.coalesce("_new", C.ITEM_IDX)).drop("_old", "_new"))
    return histories, item_features, baskets
