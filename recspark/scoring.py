"""Scoring: a trained model ranks the whole catalogue for every user, inside Spark.

The model runs in a pandas UDF of the Iterator form, so each Python worker loads it once and then
streams Arrow batches through it; the top-K is taken on the worker, and only K (item, score,
confidence) triples per user come back to the JVM.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recspark import constants as C

SEEN_IDX = "seen_idx"
TOP_K_SCHEMA = "items array<int>, scores array<float>, confidences array<float>"

# One loaded model per model directory per Python worker (Spark reuses workers between tasks).
_MODELS: dict[str, object] = {}


def _load(model_dir: str):
    if model_dir not in _MODELS:
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        from recspark.models.training import load_model

        _MODELS[model_dir] = load_model(model_dir)[0]
    return _MODELS[model_dir]


def top_k_from_logits(logits: np.ndarray, k: int, excluded: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k item indices, their logits and softmax probabilities, for a batch of logit rows.

    PAD and OOV never come out; ``excluded`` holds per row the indices that must not either (items
    the user has already seen). The probability is over the items that may be recommended.
    """
    logits = np.array(logits, dtype=np.float64, copy=True)
    logits[:, [C.PAD_IDX, C.OOV_IDX]] = -np.inf
    for row, indices in enumerate(excluded or []):
        if len(indices):
            logits[row, np.asarray(indices, dtype=np.int64)] = -np.inf
    k = min(k, logits.shape[1] - 2)
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    top_logits = np.take_along_axis(logits, top, axis=1)
    order = np.argsort(-top_logits, axis=1, kind="stable")
    top, top_logits = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_logits, order, axis=1)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = np.take_along_axis(shifted, top, axis=1) / shifted.sum(axis=1, keepdims=True)
    return top, top_logits, probabilities


def top_k_udf(model_dir: str, k: int, exclude_seen: bool):
    """A pandas UDF (history, seen_idx) -> struct(items, scores, confidences) for a saved model."""

    @F.pandas_udf(TOP_K_SCHEMA)
    def top_k(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        model = _load(model_dir)
        for histories, seen in batches:
            inputs = np.stack(histories.to_numpy()).astype(np.int32)
            # An all-padding history would make the masked mean 0/0: give it one unknown item.
            inputs[~inputs.any(axis=1), -1] = C.OOV_IDX
            logits = model(inputs, training=False).numpy()
            items, scores, confidences = top_k_from_logits(logits, k, list(seen) if exclude_seen else None)
            yield pd.DataFrame({
                "items": list(items.astype(np.int32)),
                "scores": list(scores.astype(np.float32)),
                "confidences": list(confidences.astype(np.float32)),
            })

    return top_k


def recommend(histories: DataFrame, vocab: DataFrame, model_dir: str, k: int, exclude_seen: bool,
              batch_size: int = 512) -> DataFrame:
    """One row per (user, rank): the model's top-k items with score (logit) and confidence
    (probability), for every row of ``histories`` (columns user_id, history, seen_idx)."""
    histories.sparkSession.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
    scored = histories.select(C.USER_ID, top_k_udf(model_dir, k, exclude_seen)(C.HISTORY, SEEN_IDX).alias("_top"))
    exploded = scored.select(
        C.USER_ID,
        F.posexplode(F.arrays_zip(F.col("_top.items").alias("i"), F.col("_top.scores").alias("s"),
                                  F.col("_top.confidences").alias("c"))).alias("_pos", "_hit"),
    )
    index_to_item = F.broadcast(vocab.select(C.ITEM_ID, C.ITEM_IDX))
    return exploded.select(
        C.USER_ID,
        (F.col("_pos") + 1).alias(C.RANK),
        F.col("_hit.i").alias(C.ITEM_IDX),
        F.col("_hit.s").alias(C.SCORE),
        F.col("_hit.c").alias(C.CONFIDENCE),
    ).join(index_to_item, C.ITEM_IDX).drop(C.ITEM_IDX)


def ranked_list(value: str = C.ITEM_ID) -> Column:
    """Aggregate expression: a user's items as an array ordered by rank."""
    return F.transform(F.array_sort(F.collect_list(F.struct(C.RANK, value))), lambda hit: hit[value])
