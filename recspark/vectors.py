"""The model's vectors as tables: one per user, one per item, and each item's most similar items.

The score stage writes three Delta tables beside `recommendations` (a shop's search, "similar
products" shelves and its own analyses read them; a feature store could serve them):

- ``user_vectors``: every scored user's vector (the user side the model's scores come from);
- ``item_vectors``: every vocabulary item's vector (the item side);
- ``similar_items``: for every vocabulary item, its ``score.similar_k`` most similar items by cosine
  of the item vectors, never itself, a reserved index or an item nobody is recommended.

Everything runs on the Python workers with the scorer's cached plan (recspark.scoring: the model and
its item matrix are loaded once per worker): the item ranges are spread over Spark tasks, and
``similar_items`` is the scorer's blocked top-K with the unit item vectors in place of users, so a
worker holds its query block x one item block of similarities beside the matrix, whatever the
catalogue size, and nothing but the output rows leaves the worker.

Per model: the factored models' (mean_pool, sasrec, towers, repeatnet's explore head) user and item
vectors are those whose dot product (+ item bias) is the score; the dnn's are the user and item
halves of its first layer (its score is an MLP over their sum, so they are representations, not a
dot product). A model whose plan has no vectors gets empty tables (null user vectors).
"""
from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.scoring import (ITEM_BLOCK, _plan, blocked_top_k, excluded_pairs, item_mask, model_batch,
                              model_input_columns, ranked_rows)

USER_VECTORS, ITEM_VECTORS, SIMILAR_ITEMS = "user_vectors", "item_vectors", "similar_items"
VECTOR = "vector"
SIMILAR_ITEM_ID, SIMILAR_ITEM_IDX, SIMILARITY = "similar_item_id", "similar_item_idx", "similarity"
# Vocabulary items per Spark task when the item side is spread over the workers.
ITEMS_PER_TASK = 65_536


def _meta(model_dir: str) -> dict:
    return json.loads((Path(model_dir) / "model_meta.json").read_text())


def _item_range(spark: SparkSession, first_item: int, num_items: int) -> DataFrame:
    """The vocabulary's item_idx, ITEMS_PER_TASK per Spark task."""
    tasks = max(1, math.ceil((num_items - first_item) / ITEMS_PER_TASK))
    return spark.range(first_item, num_items, numPartitions=tasks).select(F.col("id").cast("int").alias(C.ITEM_IDX))


def item_vectors(spark: SparkSession, model_dir: str, first_item: int, item_block: int = ITEM_BLOCK) -> DataFrame:
    """(item_idx, vector array<float>) of every vocabulary item, read from the workers' cached plan."""

    def rows(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        plan = _plan(model_dir, item_block)
        if not plan.HAS_VECTORS:
            return
        items = plan.item_embeddings()
        for batch in batches:
            index = batch[C.ITEM_IDX].to_numpy()
            yield pd.DataFrame({C.ITEM_IDX: index, VECTOR: list(items[index])})

    return _item_range(spark, first_item, _meta(model_dir)["num_items"]).mapInPandas(
        rows, f"{C.ITEM_IDX} int, {VECTOR} array<float>")


def user_vectors(histories: DataFrame, model_dir: str, batch_size: int = 512, item_block: int = ITEM_BLOCK
                 ) -> DataFrame:
    """(user_id, vector array<float>) for every row of ``histories`` (the model's input columns, as
    for :func:`recspark.scoring.recommend_indices`), ``batch_size`` rows at a time."""
    columns = model_input_columns(model_dir)

    @F.pandas_udf("array<float>")
    def vector(batches: Iterator[tuple[pd.Series, ...]]) -> Iterator[pd.Series]:
        plan = _plan(model_dir, item_block)
        for sequences in batches:
            if isinstance(sequences, pd.Series):  # a model reading one column gets bare Series
                sequences = (sequences,)
            if not plan.HAS_VECTORS:  # a null vector per row: the plan has none
                yield pd.Series([None] * len(sequences[0]), dtype=object)
                continue
            out = []
            for start in range(0, len(sequences[0]), batch_size):
                part = slice(start, start + batch_size)
                out.extend(plan.users(model_batch(columns, [values.iloc[part] for values in sequences])))
            yield pd.Series(out)

    return histories.select(C.USER_ID, vector(*columns).alias(VECTOR))


def similar_items(spark: SparkSession, model_dir: str, first_item: int, k: int, *, batch_size: int = 512,
                  item_block: int = ITEM_BLOCK, never: np.ndarray | list = ()) -> DataFrame:
    """(item_idx, rank, similar_item_idx, similarity): each vocabulary item's ``k`` most similar
    items by cosine of the item vectors (best first, ties to the lower index), never itself, a
    reserved index or one of ``never`` (out of stock, category rules). The scorer's blocked top-K
    over the unit vectors: ``batch_size`` query items x ``item_block`` items at a time."""
    num_items = _meta(model_dir)["num_items"]
    blocked = item_mask([i for i in never if first_item <= i < num_items], num_items) if len(never) else None

    def rows(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        plan = _plan(model_dir, item_block)
        if not plan.HAS_VECTORS:
            return
        unit = plan.unit_item_embeddings()
        mask = (None if blocked is None
                else np.unpackbits(np.frombuffer(blocked, np.uint8), count=num_items).astype(bool))
        for batch in batches:
            index = batch[C.ITEM_IDX].to_numpy()
            for start in range(0, len(index), batch_size):
                query = index[start:start + batch_size]
                vectors = unit[query]
                top = blocked_top_k(lambda lo, hi: vectors @ unit[lo:hi].T, len(query), num_items, first_item, k,
                                    item_block, excluded_pairs(query[:, None], len(query)), mask)
                items, scores, _ = ranked_rows(top.items, top.scores, top.scores)
                lengths = [len(row) for row in items]
                if not sum(lengths):
                    continue
                yield pd.DataFrame({
                    C.ITEM_IDX: np.repeat(query, lengths).astype(np.int32),
                    C.RANK: np.concatenate([np.arange(1, n + 1) for n in lengths]).astype(np.int32),
                    SIMILAR_ITEM_IDX: np.concatenate(items).astype(np.int32),
                    SIMILARITY: np.concatenate(scores).astype(np.float32)})

    return _item_range(spark, first_item, num_items).mapInPandas(
        rows, f"{C.ITEM_IDX} int, {C.RANK} int, {SIMILAR_ITEM_IDX} int, {SIMILARITY} float")


def with_item_ids(df: DataFrame, vocab: DataFrame, *pairs: tuple[str, str]) -> DataFrame:
    """Each (index column, id column) of ``pairs``: item_idx -> the item's id through ``vocab``."""
    for index, name in pairs:
        ids = vocab.select(F.col(C.ITEM_ID).alias(name), F.col(C.ITEM_IDX).alias(index))
        df = df.join(ids, index).drop(index)
    return df


def write_vector_tables(spark: SparkSession, config, histories: DataFrame, model_dir: str, vocab: DataFrame, *,
                        never: list[int], to_shop_ids: Callable[[DataFrame], DataFrame], run_id: str,
                        model_name: str, generated_at: dt.datetime) -> dict[str, str]:
    """Writes ``user_vectors`` (every row of ``histories``, user ids mapped by ``to_shop_ids``),
    ``item_vectors`` and ``similar_items`` under ``config.outputs_dir``, each replaced in one atomic
    commit (a reader sees the previous run's table or this one's). Returns a summary line per table."""
    from recspark.utils.delta import overwrite_table, row_count

    score, first_item = config.score, config.features.first_item_idx
    stamp = [F.lit(model_name).alias(C.MODEL_NAME), F.lit(run_id).alias(C.RUN_ID),
             F.lit(generated_at).cast("timestamp").alias("generated_at")]
    tables = {
        USER_VECTORS: to_shop_ids(user_vectors(histories, model_dir, score.batch_size, score.item_block))
        .select(C.USER_ID, VECTOR, *stamp),
        ITEM_VECTORS: with_item_ids(item_vectors(spark, model_dir, first_item, score.item_block), vocab,
                                    (C.ITEM_IDX, C.ITEM_ID)).select(C.ITEM_ID, VECTOR, *stamp),
        SIMILAR_ITEMS: with_item_ids(similar_items(spark, model_dir, first_item, score.similar_k,
                                                   batch_size=score.batch_size, item_block=score.item_block,
                                                   never=never),
                                     vocab, (C.ITEM_IDX, C.ITEM_ID), (SIMILAR_ITEM_IDX, SIMILAR_ITEM_ID))
        .select(C.ITEM_ID, C.RANK, SIMILAR_ITEM_ID, SIMILARITY, *stamp),
    }
    summary = {}
    for name, df in tables.items():
        path = vector_table_path(config, name)
        overwrite_table(df, path)
        summary[name] = f"{row_count(spark, path):,} rows -> {path}"
    return summary


def vector_table_path(config, name: str) -> str:
    """Where the score stage writes ``name`` (user_vectors, item_vectors, similar_items): beside recommendations."""
    return str(config.outputs_dir / name)
