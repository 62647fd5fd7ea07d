"""Scoring: a trained model ranks the whole catalogue for every user, inside Spark, in bounded memory.

The model runs in a pandas UDF of the Iterator form, so each Python worker loads it once and then
streams Arrow batches through it; the top-K is taken on the worker, and only K (item, score,
confidence) triples per user come back to the JVM. The UDF receives exactly the gold columns the
model reads (``inputs`` in its ``model_meta.json``), in that order, followed by ``seen_idx``.

Memory does not grow with the catalogue beyond the item matrix itself: a :class:`ScoringPlan`
(built once per Python worker and model, like the model) holds the item side, and
:func:`blocked_top_k` scores ``batch_size`` users against ``item_block`` items at a time, keeping a
running top-K, so a worker holds batch x block + batch x K values. Exclusions (reserved indices,
seen items, items out of stock) are applied inside each block. Per model:

- factored models (mean_pool, sasrec, towers): user vectors x the cached item matrix (+ bias);
- repeatnet: the explore head is factored; its repeat head only moves the user's own repeat
  candidates, and any other item's mixture score is a monotone function of its explore logit, so the
  top-K is the blocked top-K of the other items merged with the exactly scored candidates;
- dnn: no factoring (an MLP over user + item), so each block's logits are computed densely from the
  cached item half of the first layer: exact, batch x block x hidden memory;
- any other model: its full logits per batch (correct, not bounded).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.topk import _NO_PAIRS, TopK, blocked_top_k, excluded_pairs, ranked_order, top_k_positions  # noqa: F401 (re-exported)

# Items per block of the blocked top-K: a block holds batch x ITEM_BLOCK float32 scores (512 x 4096 x
# 4 bytes = 8 MiB) and a few same-sized temporaries; large enough that NumPy's per-call overhead vanishes.
ITEM_BLOCK = 4096
# The dnn's block is batch x block x hidden first-layer values: at most this many (64 MiB of float32).
DNN_BLOCK_VALUES = 16 * 2**20
# Items per chunk when an item tower is evaluated once per worker (its attribute features are 4 x dim wide).
ITEM_TOWER_CHUNK = 65_536

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


def model_input_columns(model_dir: str) -> list[str]:
    """The gold columns the saved model reads, from its model_meta.json (read on the driver)."""
    meta = json.loads((Path(model_dir) / "model_meta.json").read_text())
    if "inputs" not in meta:
        raise ValueError(f"{model_dir}: model_meta.json lists no inputs; train the model again")
    return list(meta["inputs"])


def require_model_inputs(df: DataFrame, model_dir: str, table: str) -> DataFrame:
    """``df`` (the gold ``table``) itself, once it holds every column the model in ``model_dir``
    reads; a clear error otherwise."""
    return require_columns(df, model_input_columns(model_dir), table)


def require_columns(df: DataFrame, columns: Sequence[str], table: str) -> DataFrame:
    """``df`` itself if it has every one of ``columns``, which a model reads; else a ValueError
    naming the missing ones: gold tables from an older version (before 2026-12-02 the feature
    models' ``user_vector`` was joined at training time, not stored by the features stage)."""
    missing = [column for column in columns if column not in df.columns]
    if missing:
        raise ValueError(f"{table} has no column {', '.join(missing)}, which the model reads: "
                         f"build the gold tables again with this version (make features)")
    return df


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


def ranked_rows(items: np.ndarray, scores: np.ndarray, confidences: np.ndarray
                ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per row: items, scores and confidences best first (ties: lower item_idx first), without the
    -inf places of a row that had fewer than k items to recommend."""
    order = ranked_order(items, scores)
    items, scores = np.take_along_axis(items, order, axis=1), np.take_along_axis(scores, order, axis=1)
    confidences = np.take_along_axis(confidences, order, axis=1)
    lengths = np.isfinite(scores).sum(axis=1)
    return ([row[:m].astype(np.int32) for row, m in zip(items, lengths)],
            [row[:m].astype(np.float32) for row, m in zip(scores, lengths)],
            [row[:m].astype(np.float32) for row, m in zip(confidences, lengths)])


class ScoringPlan:
    """How a model ranks the catalogue in blocks: the item side computed once (per Python worker,
    cached like the model) and each batch's user side once. The base scores the model's full logits
    per batch: correct for any model, but not bounded (subclasses are)."""

    # Whether the plan has one vector per user and per item (user_vectors / item_vectors / similar_items).
    HAS_VECTORS = False

    def __init__(self, model, item_block: int = ITEM_BLOCK) -> None:
        self.model, self.item_block = model, item_block
        self.num_items, self.first_item = model.spec.num_items, model.spec.first_item_idx
        self._unit_items: np.ndarray | None = None

    def item_embeddings(self) -> np.ndarray:
        """[num_items, dim] float32: each item's vector (the item side the scores are computed from)."""
        raise NotImplementedError(f"{type(self.model).__name__}: its scores do not factor into item vectors")

    def unit_item_embeddings(self) -> np.ndarray:
        """The item vectors scaled to length 1 (a zero vector stays zero), made once per worker: cosine
        similarity is then one matrix product per block (recspark.vectors.similar_items)."""
        if self._unit_items is None:
            items = self.item_embeddings()
            norms = np.linalg.norm(items, axis=1, keepdims=True)
            self._unit_items = (items / np.maximum(norms, 1e-12)).astype(np.float32)
        return self._unit_items

    def users(self, inputs: dict[str, np.ndarray]):
        return self.model(inputs, training=False).numpy()

    def scores(self, users, lo: int, hi: int) -> np.ndarray:
        return users[:, lo:hi]

    def block_size(self, n: int) -> int:
        return self.item_block

    def top_k(self, inputs: dict[str, np.ndarray], k: int, seen: Sequence | None = None,
              blocked: np.ndarray | None = None) -> tuple[list, list, list]:
        """Per row: the top-k items, their scores (the model's logits) and confidences (softmax share
        among the items that may be recommended)."""
        users = self.users(inputs)
        n = len(next(iter(inputs.values())))
        top = blocked_top_k(lambda lo, hi: self.scores(users, lo, hi), n, self.num_items, self.first_item, k,
                            self.block_size(n), excluded_pairs(seen, n), blocked)
        with np.errstate(under="ignore", invalid="ignore"):  # -inf - -inf: a place left empty, dropped
            confidences = np.exp(top.scores - top.lse_rest[:, None])
        return ranked_rows(top.items, top.scores, confidences)


class FactoredPlan(ScoringPlan):
    """Scores that factor as user vector . item vector (+ item bias): one float32 matrix product per
    block against the cached item matrix."""

    HAS_VECTORS = True

    def __init__(self, model, user_vectors: Callable[[dict], np.ndarray], item_vectors: np.ndarray,
                 item_bias: np.ndarray | None, item_block: int = ITEM_BLOCK) -> None:
        super().__init__(model, item_block)
        self.user_vectors = user_vectors
        self.item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        self.item_bias = None if item_bias is None else np.asarray(item_bias, dtype=np.float32)

    def users(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.user_vectors(inputs), dtype=np.float32)

    def item_embeddings(self) -> np.ndarray:
        return self.item_vectors

    def scores(self, users: np.ndarray, lo: int, hi: int) -> np.ndarray:
        block = users @ self.item_vectors[lo:hi].T
        if self.item_bias is not None:
            block += self.item_bias[lo:hi]
        return block


class RepeatPlan(FactoredPlan):
    """RepeatNet: p(i) = g p_repeat(i) + (1 - g) p_explore(i), scored as log(p + eps). The explore
    logits factor; p_repeat is non-zero only on the user's own repeat candidates, so every other
    item's score is increasing in its explore logit: the blocked top-k of the non-candidates, merged
    with the candidates scored exactly, is the model's top-k. The explore softmax needs the
    log-sum-exp over the whole catalogue, which the blocks accumulate."""

    def top_k(self, inputs: dict[str, np.ndarray], k: int, seen: Sequence | None = None,
              blocked: np.ndarray | None = None) -> tuple[list, list, list]:
        from recspark.models.repeatnet import _EPS

        model = self.model
        tensors = model._cast_inputs(inputs)
        state = model.user_vectors(tensors, training=False)
        users = state.numpy().astype(np.float32)
        n = len(users)
        excluded = excluded_pairs(seen, n)
        if model.REPEAT_HEAD:
            p_positions, gate = (t.numpy().astype(np.float64) for t in model.repeat_head(tensors, state))
            candidates = np.asarray(inputs[C.REPEAT_ITEMS], dtype=np.int64)
            real = (candidates >= self.first_item) & (candidates < self.num_items)
            held_out = excluded_pairs([row[mask] for row, mask in zip(candidates, real)], n)
        else:
            gate, held_out = np.zeros(n), _NO_PAIRS
        top = blocked_top_k(lambda lo, hi: self.scores(users, lo, hi), n, self.num_items, self.first_item, k,
                            self.block_size(n), excluded, blocked, held_out, need_lse_all=True)
        lse_all = top.lse_all[:, None]
        if not model.REPEAT_HEAD:  # the model's scores are the explore log-softmax
            with np.errstate(under="ignore", invalid="ignore"):
                confidences = np.exp(top.scores - top.lse_rest[:, None])
            return ranked_rows(top.items, (top.scores - lse_all).astype(np.float32), confidences)
        keep = 1.0 - gate[:, None]
        with np.errstate(under="ignore", invalid="ignore"):
            p_top = keep * np.exp(top.scores - lse_all)
            safe = np.where(real, candidates, 0)
            explore = np.einsum("nd,nrd->nr", users, self.item_vectors[safe]) + self.item_bias[safe]
            p_candidates = gate[:, None] * p_positions + keep * np.exp(explore - lse_all)
        allowed = real.copy()
        if blocked is not None:
            allowed &= ~blocked[safe]
        rows, items = excluded
        if len(rows):
            pair = np.arange(n)[:, None] * self.num_items + candidates
            allowed &= ~np.isin(pair, rows * self.num_items + items)
        # Softmax of the model's scores log(p + eps) over the items that may be recommended.
        total = (keep[:, 0] * np.exp(top.lse_rest - top.lse_all) + _EPS * top.rest
                 + np.where(allowed, p_candidates + _EPS, 0.0).sum(axis=1))
        p = np.concatenate([np.where(np.isfinite(top.scores), p_top, np.nan),
                            np.where(allowed, p_candidates, np.nan)], axis=1)
        items = np.concatenate([top.items, np.where(allowed, candidates, -1)], axis=1)
        scores = np.where(np.isnan(p), -np.inf, np.log(np.nan_to_num(p) + _EPS)).astype(np.float32)
        confidences = np.nan_to_num(p + _EPS) / np.maximum(total, 1e-300)[:, None]
        best = top_k_positions(scores, items, k) if scores.shape[1] > k else np.arange(scores.shape[1])[None]
        return ranked_rows(*(np.take_along_axis(a, best, axis=1) for a in (items, scores, confidences)))


class DNNPlan(ScoringPlan):
    """The dnn: an MLP over [user, item] does not factor, so each block's logits are computed densely.
    Its first layer does split (user part + item part): the item part is cached for the catalogue,
    the user part computed once per batch, and a block costs the MLP's remaining layers on
    batch x block pairs (the block shrinks with the batch so that stays under DNN_BLOCK_VALUES)."""

    HAS_VECTORS = True  # the first layer's user and item halves: the closest the MLP has to vectors

    def __init__(self, model, item_block: int = ITEM_BLOCK) -> None:
        import tensorflow as tf

        super().__init__(model, item_block)
        scorer = self.scorer = model.scorer
        self.item_first = np.concatenate([
            scorer.item_part(scorer.attributes(tf.range(lo, min(lo + ITEM_TOWER_CHUNK, self.num_items)))).numpy()
            for lo in range(0, self.num_items, ITEM_TOWER_CHUNK)]).astype(np.float32)

    def users(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.scorer.user_part(self.model.user_features(inputs, training=False)).numpy()

    def item_embeddings(self) -> np.ndarray:
        return self.item_first

    def block_size(self, n: int) -> int:
        return max(16, min(self.item_block, DNN_BLOCK_VALUES // max(1, n * self.item_first.shape[1])))

    def scores(self, users: np.ndarray, lo: int, hi: int) -> np.ndarray:
        first = users[:, None, :] + self.item_first[None, lo:hi, :]
        return self.scorer._rest(first, training=False).numpy()


def build_plan(model, item_block: int = ITEM_BLOCK) -> ScoringPlan:
    """The cheapest exact way to rank the catalogue with ``model`` (see the module docstring)."""
    import tensorflow as tf

    from recspark.models.base import SequenceRecommender
    from recspark.models.dnn import DNNModel
    from recspark.models.repeatnet import RepeatNet
    from recspark.models.towers import TowersModel

    if isinstance(model, RepeatNet):
        # top_k computes the state itself (the repeat head needs it too); users() is the user's vector alone.
        return RepeatPlan(model, lambda inputs: model.user_vectors(model._cast_inputs(inputs), training=False).numpy(),
                          model.output_embeddings().numpy(), model.output_bias.numpy(), item_block)
    if isinstance(model, SequenceRecommender):
        return FactoredPlan(model, lambda inputs: model.user_vectors(model._cast_inputs(inputs), training=False).numpy(),
                            model.output_embeddings().numpy(), model.output_bias.numpy(), item_block)
    if isinstance(model, TowersModel):
        tower = model.get_layer("item_tower")
        # The user tower ends where the item tower's layer takes its input.
        user_tower = tf.keras.Model(model.input, tower.input)
        items = np.concatenate([
            tower.item_vectors(tower.attributes(tf.range(lo, min(lo + ITEM_TOWER_CHUNK, model.spec.num_items))),
                               training=False).numpy()
            for lo in range(0, model.spec.num_items, ITEM_TOWER_CHUNK)])
        return FactoredPlan(model, lambda inputs: user_tower(inputs, training=False).numpy(), items, None, item_block)
    if isinstance(model, DNNModel):
        return DNNPlan(model, item_block)
    return ScoringPlan(model, item_block)


# One plan (the item side) per model directory and block size per Python worker, beside the model,
# rebuilt when the cached model is (a model trained again in the same application).
_PLANS: dict[tuple[str, int], tuple[object, ScoringPlan]] = {}


def _plan(model_dir: str, item_block: int) -> ScoringPlan:
    model = _load(model_dir)
    key = (model_dir, item_block)
    if key not in _PLANS or _PLANS[key][0] is not model:
        _PLANS[key] = (model, build_plan(model, item_block))
    return _PLANS[key][1]


def item_mask(indices: Sequence[int], num_items: int) -> bytes:
    """A bit per item_idx, set for ``indices`` (e.g. out of stock): 125 KB at 1M items, shipped with the UDF."""
    mask = np.zeros(num_items, dtype=bool)
    mask[np.asarray(list(indices), dtype=np.int64)] = True
    return np.packbits(mask).tobytes()


def top_k_udf(model_dir: str, columns: list[str], k: int, exclude_seen: bool, *, batch_size: int = 512,
              item_block: int = ITEM_BLOCK, blocked_items: bytes | None = None, calibration=None,
              min_confidence: float = 0.0):
    """A pandas UDF (*columns, seen_idx) -> struct(items, scores, confidences) for a saved model.

    Each Arrow batch is scored ``batch_size`` rows at a time, so the worker's memory is bounded by
    this UDF's own setting whatever the session's Arrow batch size. ``blocked_items``
    (:func:`item_mask`) are never recommended to anyone. ``calibration``
    (:class:`recspark.calibration.Calibration`) maps the softmax share to a probability; items whose
    confidence is below ``min_confidence`` are dropped (monotone in the score, so a list loses its tail)."""

    @F.pandas_udf(TOP_K_SCHEMA)
    def top_k(batches: Iterator[tuple[pd.Series, ...]]) -> Iterator[pd.DataFrame]:
        plan = _plan(model_dir, item_block)
        blocked = None
        if blocked_items is not None:
            blocked = np.unpackbits(np.frombuffer(blocked_items, np.uint8), count=plan.num_items).astype(bool)
        for *sequences, seen in batches:
            items, scores, confidences = score_rows(plan, columns, sequences, seen if exclude_seen else None, k,
                                                    batch_size=batch_size, blocked=blocked, calibration=calibration,
                                                    min_confidence=min_confidence)
            yield pd.DataFrame({"items": items, "scores": scores, "confidences": confidences})

    return top_k


def score_rows(plan: ScoringPlan, columns: list[str], sequences: Sequence[pd.Series], seen: pd.Series | None, k: int,
               *, batch_size: int = 512, blocked: np.ndarray | None = None, calibration=None,
               min_confidence: float = 0.0) -> tuple[list, list, list]:
    """Per row of ``sequences`` (the model's input columns): its top-``k`` item_idx, scores and
    confidences best first, ``batch_size`` rows at a time; ``seen`` items (when given) and
    ``blocked`` ones excluded, confidences calibrated and below ``min_confidence`` dropped. The one
    arithmetic of the bulk UDF and of the real-time model (recspark.serving)."""
    items, scores, confidences = [], [], []
    for start in range(0, len(sequences[0]), batch_size):
        part = slice(start, start + batch_size)
        inputs = model_batch(columns, [values.iloc[part] for values in sequences])
        rows = plan.top_k(inputs, k, list(seen.iloc[part]) if seen is not None else None, blocked)
        for row_items, row_scores, row_confidences in zip(*rows):
            if calibration is not None:
                row_confidences = calibration.apply(row_confidences)
            kept = row_confidences >= min_confidence
            items.append(row_items[kept])
            scores.append(row_scores[kept])
            confidences.append(row_confidences[kept])
    return items, scores, confidences


def recommend_indices(histories: DataFrame, model_dir: str, k: int, exclude_seen: bool, batch_size: int = 512, *,
                      never_recommend: Sequence[int] = (), item_block: int = ITEM_BLOCK,
                      keep: Sequence[str] = (), calibration=None, min_confidence: float = 0.0) -> DataFrame:
    """One row per (user, rank) with ``item_idx``, score and confidence (see :func:`recommend`), and
    the ``keep`` columns of ``histories``; ``never_recommend`` item indices (out of stock, business
    rules) go to nobody; ``calibration`` and ``min_confidence`` as in :func:`top_k_udf`."""
    columns = model_input_columns(model_dir)
    missing = [name for name in (C.USER_ID, *columns, SEEN_IDX, *keep) if name not in histories.columns]
    if missing:
        raise ValueError(f"{model_dir} needs columns {missing}, not in {histories.columns}")
    blocked = None
    if len(never_recommend):
        num_items = json.loads((Path(model_dir) / "model_meta.json").read_text())["num_items"]
        blocked = item_mask([i for i in never_recommend if 0 <= i < num_items], num_items)
    udf = top_k_udf(model_dir, columns, k, exclude_seen, batch_size=batch_size, item_block=item_block,
                    blocked_items=blocked, calibration=calibration, min_confidence=min_confidence)
    scored = histories.select(C.USER_ID, *keep, udf(*columns, SEEN_IDX).alias("_top"))
    exploded = scored.select(
        C.USER_ID, *keep,
        F.posexplode(F.arrays_zip(F.col("_top.items").alias("i"), F.col("_top.scores").alias("s"),
                                  F.col("_top.confidences").alias("c"))).alias("_pos", "_hit"),
    )
    return exploded.select(
        C.USER_ID,
        (F.col("_pos") + 1).alias(C.RANK),
        F.col("_hit.i").alias(C.ITEM_IDX),
        F.col("_hit.s").alias(C.SCORE),
        F.col("_hit.c").alias(C.CONFIDENCE),
        *keep,
    )


def recommend(histories: DataFrame, vocab: DataFrame, model_dir: str, k: int, exclude_seen: bool,
              batch_size: int = 512, *, never_recommend: Sequence[int] = (), item_block: int = ITEM_BLOCK) -> DataFrame:
    """One row per (user, rank): the model's top-k items with score (logit) and confidence
    (probability among the items that may be recommended), for every row of ``histories``: user_id,
    seen_idx and the sequence columns the model reads (model_meta.json ``inputs``); other columns
    are ignored. A user with fewer than k items left to recommend gets fewer rows."""
    top = recommend_indices(histories, model_dir, k, exclude_seen, batch_size, never_recommend=never_recommend,
                            item_block=item_block)
    index_to_item = F.broadcast(vocab.select(C.ITEM_ID, C.ITEM_IDX))
    return top.join(index_to_item, C.ITEM_IDX).drop(C.ITEM_IDX)


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
