"""Early stopping on validation NDCG@10, the same decision on every rank.

:func:`collect_validation_set` takes a bounded sample of the gold validation queries to the driver
as numpy arrays (:class:`ValidationSet`); at each epoch end rank 0 ranks it with the model
(:func:`ndcg_at_10`: the scorer's own top-k and the project's one NDCG) and broadcasts the value, so
every rank takes the same stop decision (a rank that stopped alone would leave the others waiting
in an allreduce forever).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np

from recspark.constants import PAD_IDX
from recspark.models.checkpoints import RunState

if TYPE_CHECKING:
    import tensorflow as tf
    from pyspark.sql import DataFrame


NDCG_K = 10
VAL_METRIC = "val_ndcg_at_10"


# --------------------------------------------------------------------------------------------------
# Validation NDCG@10 and early stopping
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ValidationSet:
    """A bounded sample of validation queries as numpy arrays, small enough to ship to every rank.

    ``inputs`` maps model input names (gold columns, e.g. ``history``) to arrays [n, ...];
    ``relevant`` holds each query's held-out item indices padded with -1, and ``num_relevant`` their
    true count (an item outside the vocabulary cannot be hit but still counts in the ideal DCG, as
    in the evaluation); ``seen`` (padded with PAD_IDX) is excluded from the ranking when
    ``exclude_seen``.
    """

    inputs: dict
    relevant: np.ndarray
    num_relevant: np.ndarray
    seen: Optional[np.ndarray] = None
    exclude_seen: bool = False

    def __len__(self) -> int:
        return len(self.relevant)


def top_k_items(logits: np.ndarray, k: int, seen: Optional[np.ndarray] = None, *,
                first_item: int) -> np.ndarray:
    """Indices of the k best logits per row, best first (ties: the lower index), never a reserved
    index (below ``first_item``), nor ``seen`` items when given (PAD-padded rows); -1 where a row has
    fewer than k items left. The scorer's own top-k (:func:`recspark.topk.blocked_top_k`, one
    block): validation ranks exactly as serving does."""
    from recspark.topk import blocked_top_k, excluded_pairs, ranked_order

    n, num_items = logits.shape
    k = min(k, num_items - first_item)
    excluded = excluded_pairs(None if seen is None else [row[row >= first_item] for row in seen], n)
    top = blocked_top_k(lambda lo, hi: logits[:, lo:hi], n, num_items, first_item, k, block=num_items,
                        excluded=excluded)
    return np.take_along_axis(top.items, ranked_order(top.items, top.scores), axis=1)


def ndcg_from_top_k(top: np.ndarray, relevant: np.ndarray, num_relevant: np.ndarray, k: int = NDCG_K) -> float:
    """Mean NDCG@k of the ranked item indices ``top`` ([n, >= k]) against ``relevant`` (held-out
    indices padded with -1; an item unknown to the vocabulary is -1 too and counts in
    ``num_relevant``): :func:`recspark.evaluation.metrics.ndcg_at_k`, the project's one NDCG, on
    these arrays. An unknown item is never hit but counts in the ideal DCG, as in evaluation."""
    from recspark.evaluation.metrics import ndcg_at_k

    lists = [[int(i) for i in row] for row in top]
    # Each unknown item becomes its own id that no prediction (always >= 0) can match.
    held_out = [[int(i) if i >= 0 else -1 - j for j, i in enumerate(row[:count])]
                for row, count in zip(relevant, num_relevant)]
    return ndcg_at_k(lists, held_out, k) if lists else math.nan


def ndcg_at_10(model: "tf.keras.Model", validation: ValidationSet, batch_size: int = 512) -> float:
    """The model's mean NDCG@10 on ``validation`` (full ranking over the catalogue)."""
    logits = model.predict(validation.inputs, batch_size=batch_size, verbose=0)
    seen = validation.seen if validation.exclude_seen else None
    return ndcg_from_top_k(top_k_items(logits, NDCG_K, seen, first_item=model.spec.first_item_idx), validation.relevant,
                           validation.num_relevant)


def early_stopping_callback(
    validation: ValidationSet, patience: int, state: RunState, *, rank: int, broadcast: Callable[[float], float],
) -> "tf.keras.callbacks.Callback":
    """A callback that tracks validation NDCG@10 in ``state`` and stops all ranks together.

    Rank 0 computes the metric; ``broadcast`` (``hvd.broadcast`` of a scalar) hands every rank the
    same value, so every rank updates an identical ``state`` and sets ``stop_training`` at the same
    epoch. ``patience`` 0 records the metric but never stops. The callback keeps the best epoch's
    weights in memory (``best_weights``) for the export.
    """
    import tensorflow as tf

    class EarlyStopping(tf.keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.state = state
            # The best epoch's weights: set by a resumed run whose best epoch is older, else here.
            self.best_weights: Optional[list[np.ndarray]] = None

        def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
            value = ndcg_at_10(self.model, validation) if rank == 0 else 0.0
            value = float(broadcast(value))
            if logs is not None:
                logs[VAL_METRIC] = value  # later callbacks (progress, checkpoint) see it
            self.state.val_ndcg_history.append(value)
            if self.state.best_ndcg is None or value > self.state.best_ndcg:
                self.state.best_ndcg, self.state.best_epoch, self.state.wait = value, epoch + 1, 0
                self.best_weights = [np.array(w) for w in self.model.get_weights()]
            else:
                self.state.wait += 1
                if patience > 0 and self.state.wait >= patience:
                    self.model.stop_training = True

    return EarlyStopping()


# --------------------------------------------------------------------------------------------------
# The validation sample (driver side)
# --------------------------------------------------------------------------------------------------

def collect_validation_set(
    eval_queries: "DataFrame", item_vocab: "DataFrame", *, inputs: Sequence[str], max_users: int,
    exclude_seen: bool, seed: int,
) -> Optional[ValidationSet]:
    """Up to ``max_users`` validation queries of the gold ``eval_queries`` as numpy arrays, or None.

    None when there is no validation query, ``max_users`` is 0, or the model reads a column that
    eval_queries does not have (its early stopping is then off). The sample is a hash order of the
    users (stable across runs of the same data). Relevant item ids become item indices through
    the vocabulary (-1: not in it). User ids stay in Spark: the arrays hold only indices.
    """
    from pyspark.sql import functions as F

    from recspark import constants as C

    missing = [name for name in inputs if name not in eval_queries.columns]
    if max_users <= 0 or missing:
        return None
    sample = (eval_queries.filter(F.col(C.SPLIT) == C.VALIDATION)
              .orderBy(F.xxhash64(C.USER_ID, F.lit(seed)), C.USER_ID)
              .limit(max_users))
    relevant = (sample.select(C.USER_ID, F.posexplode(C.RELEVANT).alias("_pos", C.ITEM_ID))
                .join(item_vocab.select(C.ITEM_ID, C.ITEM_IDX), C.ITEM_ID, "left")
                .groupBy(C.USER_ID)
                .agg(F.sort_array(F.collect_list(F.struct(
                    F.col("_pos"), F.coalesce(F.col(C.ITEM_IDX), F.lit(-1)).alias("_idx")))).alias("_relevant")))
    # This collect is bounded: at most max_users rows (train.validation_users), each a few
    # max_seq_len-long int arrays plus the user's held-out and seen item indices, no user id.
    rows = (sample.join(relevant, C.USER_ID)
            .select(*inputs, F.col("_relevant._idx").alias("_relevant"), C.SEEN_IDX)
            .collect())
    if not rows:
        return None

    def padded(lists: list[list[int]], fill: int) -> np.ndarray:
        out = np.full((len(lists), max(1, max(len(x) for x in lists))), fill, dtype=np.int32)
        for i, values in enumerate(lists):
            out[i, :len(values)] = values
        return out

    relevant_lists = [list(row["_relevant"]) for row in rows]
    return ValidationSet(
        inputs={name: np.array([row[name] for row in rows], dtype=np.float32 if name in C.FLOAT_INPUTS else np.int32)
                for name in inputs},
        relevant=padded(relevant_lists, -1),
        num_relevant=np.array([len(x) for x in relevant_lists], dtype=np.int32),
        seen=padded([list(row[C.SEEN_IDX]) for row in rows], PAD_IDX),
        exclude_seen=exclude_seen,
    )


def validation_digest(validation: Optional[ValidationSet]) -> Optional[str]:
    """sha256 of a validation sample: part of the fingerprint (it decides the best epoch)."""
    if validation is None:
        return None
    digest = hashlib.sha256()
    for name in sorted(validation.inputs):
        digest.update(name.encode() + np.ascontiguousarray(validation.inputs[name]).tobytes())
    for array in (validation.relevant, validation.num_relevant):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(str(validation.exclude_seen).encode())
    return digest.hexdigest()
