"""Scoring: a trained model ranks the whole catalogue for every user, inside Spark.

The model runs in a pandas UDF of the Iterator form, so each Python worker loads it once and then
streams Arrow batches through it; the top-K is taken on the worker, and only K (item, score,
confidence) triples per user come back to the JVM. The UDF receives exactly the gold columns the
model reads (``inputs`` in its ``model_meta.json``), in that order, followed by ``seen_idx``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recspark import constants as C

SEEN_IDX = C.SEEN_IDX  # named here too: the scorer's input column beside the model's
TOP_K_SCHEMA = "items array<int>, scores array<float>, confidences array<float>"

# One loaded model per model directory per Python worker (Spark reuses workers between tasks, and
# between stages of one application: jobs/pipeline.py), with the export's modification time, so a
# model trained again in the same application is loaded again rather than served from the cache.
_MODELS: dict[str, tuple[int, object]] = {}


def _load(model_dir: str):
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from recspark.models.training import MODEL_FILE, load_model

    written = os.stat(os.path.join(model_dir, MODEL_FILE)).st_mtime_ns
    if model_dir not in _MODELS or _MODELS[model_dir][0] != written:
        _MODELS[model_dir] = (written, load_model(model_dir)[0])
    return _MODELS[model_dir][1]


def top_k_from_logits(logits: np.ndarray, k: int, excluded: list[np.ndarray] | None = None, *,
                      first_item: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k item indices, their logits and softmax probabilities, for a batch of logit rows.

    No reserved index (below ``first_item``: PAD, OOV and the hashed out-of-vocabulary buckets, the
    model's ``spec.first_item_idx``) ever comes out; ``excluded`` holds per row the indices that must
    not either (items the user has already seen). The probability is over the items that may be
    recommended.
    """
    logits = np.array(logits, dtype=np.float64, copy=True)
    logits[:, :first_item] = -np.inf
    for row, indices in enumerate(excluded or []):
        if len(indices):
            logits[row, np.asarray(indices, dtype=np.int64)] = -np.inf
    k = min(k, logits.shape[1] - first_item)
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    top_logits = np.take_along_axis(logits, top, axis=1)
    order = np.argsort(-top_logits, axis=1, kind="stable")
    top, top_logits = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_logits, order, axis=1)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = np.take_along_axis(shifted, top, axis=1) / shifted.sum(axis=1, keepdims=True)
    return top, top_logits, probabilities


def model_input_columns(model_dir: str) -> list[str]:
    """The gold columns the saved model reads, from its model_meta.json (read on the driver)."""
    meta = json.loads((Path(model_dir) / "model_meta.json").read_text())
    if "inputs" not in meta:
        raise ValueError(f"{model_dir}: model_meta.json lists no inputs; train the model again")
    return list(meta["inputs"])


def with_model_inputs(spark, config, df: DataFrame, model_dir: str) -> DataFrame:
    """``df`` (gold rows with user_id) plus whatever else the model in ``model_dir`` reads: feature
    models (towers, dnn) also read ``user_vector``, joined from gold user_features."""
    if C.USER_VECTOR not in model_input_columns(model_dir):
        return df
    from recspark.models.item_tables import with_gold_user_vector  # loads TensorFlow: only when needed

    return with_gold_user_vector(spark, config, df)


def model_batch(columns: list[str], series: list[pd.Series]) -> dict[str, np.ndarray]:
    """Arrow batch -> the model's input dict of int32 [n, max_seq_len] arrays.

    A history made only of padding gets one unknown item (OOV) at its last position, so every row
    has a latest real step (the other sequences keep their padding values there).
    """
    # Sequences are item/type/gap indices; the feature models' user_vector stays float.
    inputs = {name: np.stack(values.to_numpy()).astype(np.float32 if name in C.FLOAT_INPUTS else np.int32)
              for name, values in zip(columns, series)}
    history = inputs[C.HISTORY]
    history[~history.any(axis=1), -1] = C.OOV_IDX
    return inputs


def top_k_udf(model_dir: str, columns: list[str], k: int, exclude_seen: bool):
    """A pandas UDF (*columns, seen_idx) -> struct(items, scores, confidences) for a saved model."""

    @F.pandas_udf(TOP_K_SCHEMA)
    def top_k(batches: Iterator[tuple[pd.Series, ...]]) -> Iterator[pd.DataFrame]:
        model = _load(model_dir)
        for *sequences, seen in batches:
            logits = model(model_batch(columns, sequences), training=False).numpy()
            items, scores, confidences = top_k_from_logits(logits, k, list(seen) if exclude_seen else None,
                                                           first_item=model.spec.first_item_idx)
            yield pd.DataFrame({
                "items": list(items.astype(np.int32)),
                "scores": list(scores.astype(np.float32)),
                "confidences": list(confidences.astype(np.float32)),
            })

    return top_k


def recommend(histories: DataFrame, vocab: DataFrame, model_dir: str, k: int, exclude_seen: bool,
              batch_size: int = 512) -> DataFrame:
    """One row per (user, rank): the model's top-k items with score (logit) and confidence
    (probability), for every row of ``histories``: user_id, seen_idx and the sequence columns the
    model reads (model_meta.json ``inputs``); other columns are ignored."""
    columns = model_input_columns(model_dir)
    missing = [name for name in (C.USER_ID, *columns, SEEN_IDX) if name not in histories.columns]
    if missing:
        raise ValueError(f"{model_dir} needs columns {missing}, not in {histories.columns}")
    histories.sparkSession.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
    scored = histories.select(C.USER_ID, top_k_udf(model_dir, columns, k, exclude_seen)(*columns, SEEN_IDX).alias("_top"))
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


PROBABILITY = "probability"  # the column recspark.evaluation.classification reads


def with_pair_probability(pairs: DataFrame, model_dir: str, batch_size: int = 1024) -> DataFrame:
    """Adds ``probability`` (:func:`recspark.models.dnn.predict_pairs`) to ``pairs`` (columns ``history``,
    ``user_vector``, ``item_idx``; e.g. the evaluation's labelled pairs) with the saved model in
    ``model_dir``: a pandas UDF of the Iterator form, so each Python worker loads the model once."""

    @F.pandas_udf("float")
    def probability(batches: Iterator[tuple[pd.Series, pd.Series, pd.Series]]) -> Iterator[pd.Series]:
        from recspark.models.dnn import predict_pairs  # loads TensorFlow: on the workers only

        model = _load(model_dir)
        for history, user_vector, item_idx in batches:
            users = pd.DataFrame({C.HISTORY: history, C.USER_VECTOR: user_vector})
            yield pd.Series(predict_pairs(model, users, item_idx.to_numpy(), batch_size).astype(np.float32))

    return pairs.withColumn(PROBABILITY, probability(C.HISTORY, C.USER_VECTOR, C.ITEM_IDX))


def ranked_list(value: str = C.ITEM_ID) -> Column:
    """Aggregate expression: a user's items as an array ordered by rank."""
    return F.transform(F.array_sort(F.collect_list(F.struct(C.RANK, value))), lambda hit: hit[value])
