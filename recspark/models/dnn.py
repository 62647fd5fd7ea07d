"""The DNN of the original design: [user features, item features] -> MLP -> sigmoid P(interaction).

User features: ``user_vector`` and the masked mean of the history's item embeddings (shared with
the towers: :class:`~recspark.models.towers.UserFeatures`). Item features: the item's id embedding
(zeroed for rare items), category, price-bucket and popularity embeddings
(:class:`~recspark.models.towers.ItemAttributeEncoder`, tables stored in the model).

Training (:meth:`DNNModel.compute_training_loss`): each example's target is a positive; ``negatives`` items
drawn uniformly from the vocabulary (seeded, stateless: the seed and the step number) are its
negatives; a negative that happens to be the target is given weight 0. The loss is :func:`loss`,
binary cross-entropy on the logits, stated once. Only 1 + negatives candidates per example go
through the MLP, so a training step costs batch * (1 + negatives) MLP evaluations.

Ranking and scoring (``model(inputs)``): logits [n, num_items] for every vocabulary item, so the
trainer's validation, the evaluator and the scorer use the DNN unchanged. That is
n * num_items MLP evaluations: the first layer is split into a user part and an item part (the
same affine map of the concatenation), the item part computed once per call, and the rest runs in
chunks of ``SCORE_CHUNK`` items to bound memory. :func:`predict_pairs` gives the probability of
given (user, item) pairs, for AUC, log loss and F1; :func:`recspark.scoring.with_pair_probability` does it in Spark.

The probability is P(positive | the pair is a positive or one of the sampled negatives): it depends
on ``negatives`` and on the uniform sampler, so a decision threshold is chosen on validation pairs.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from recspark import constants as C
from recspark.models.item_tables import ItemTables
from recspark.models.towers import (FeatureModel, ItemAttributeScores, apply_mlp, build_mlp, mlp_layers,
                                    model_spec_dict)

NAME = "dnn"
# Items scored per chunk in the full-vocabulary pass: a chunk holds batch * SCORE_CHUNK * units[0]
# floats (512 users * 512 items * 128 units * 4 bytes = 128 MiB).
SCORE_CHUNK = 512
_init = tf.keras.initializers


def loss(labels: tf.Tensor, logits: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """The DNN's training loss, stated once: weighted mean binary cross-entropy on logits."""
    per_pair = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_sum(per_pair * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)


@tf.keras.saving.register_keras_serializable(package="recspark")
class DNNScorer(ItemAttributeScores):
    """User features [n, F] -> interaction logits, for chosen items (:meth:`pair_logits`) or for
    every vocabulary item (:meth:`call`)."""

    def __init__(self, num_items: int, num_categories: int, num_prices: int, embedding_dim: int,
                 hidden_units: Sequence[int], dropout: float, seed: int, **kwargs) -> None:
        if not hidden_units:
            raise ValueError("the dnn needs at least one hidden layer (train.hidden_units)")
        super().__init__(num_items, num_categories, num_prices, embedding_dim, hidden_units, dropout, seed, **kwargs)
        first = self.hidden_units[0]
        # Dense(first) over [user, item] == user_part(user) + item_part(item): the item part is then
        # computed once per item, not once per (user, item) pair.
        self.user_part = tf.keras.layers.Dense(first, name="first_user",
                                               kernel_initializer=_init.GlorotUniform(seed=seed + 10))
        self.item_part = tf.keras.layers.Dense(first, use_bias=False, name="first_item",
                                               kernel_initializer=_init.GlorotUniform(seed=seed + 11))
        self.first_dropout = tf.keras.layers.Dropout(dropout, seed=seed + 12) if dropout else None
        self.mlp = mlp_layers(self.hidden_units[1:], dropout, seed + 20, "dnn")
        self.out = tf.keras.layers.Dense(1, name="dnn_out", kernel_initializer=_init.GlorotUniform(seed=seed + 30))

    def build(self, input_shape) -> None:
        self.attributes.build()
        self.user_part.build((None, int(input_shape[-1])))
        self.item_part.build((None, self.attributes.output_width))
        self.out.build((None, build_mlp(self.mlp, self.hidden_units[0])))
        super().build(input_shape)

    def _rest(self, first: tf.Tensor, training=None) -> tf.Tensor:
        """relu(first layer pre-activation) -> the other hidden layers -> logit, last axis dropped."""
        hidden = tf.nn.relu(first)
        if self.first_dropout is not None:
            hidden = self.first_dropout(hidden, training=training)
        return tf.squeeze(self.out(apply_mlp(self.mlp, hidden, training)), -1)

    def pair_logits(self, user: tf.Tensor, items: tf.Tensor, training=None) -> tf.Tensor:
        """Logits [n, m] of user row i with items[i, j] (item indices [n, m])."""
        first = self.user_part(user)[:, None, :] + self.item_part(self.attributes(items))
        return self._rest(first, training)

    def call(self, user: tf.Tensor, training=None) -> tf.Tensor:
        """Logits [n, num_items] for every vocabulary item, SCORE_CHUNK items at a time."""
        user_first = self.user_part(user)  # [n, h]
        item_first = self.item_part(self.attributes(tf.range(self.num_items)))  # [N, h]
        chunks = -(-self.num_items // SCORE_CHUNK)
        padded = tf.pad(item_first, [[0, chunks * SCORE_CHUNK - self.num_items], [0, 0]])
        per_chunk = tf.map_fn(
            lambda chunk: self._rest(user_first[:, None, :] + chunk[None, :, :], training),
            tf.reshape(padded, [chunks, SCORE_CHUNK, -1]),
            fn_output_signature=tf.TensorSpec([None, SCORE_CHUNK], user_first.dtype),
        )  # [chunks, n, SCORE_CHUNK]
        logits = tf.reshape(tf.transpose(per_chunk, [1, 0, 2]), [-1, chunks * SCORE_CHUNK])
        return logits[:, : self.num_items]


@tf.keras.saving.register_keras_serializable(package="recspark")
class DNNModel(FeatureModel):
    """Outputs logits [n, num_items]; trains on target vs ``negatives`` sampled items with :func:`loss`."""

    NAME = NAME

    def head(self, user: tf.Tensor, num_items: int, features: dict, settings: dict) -> tf.Tensor:
        if settings["negatives"] < 1:
            raise ValueError(f"the dnn needs train.negatives >= 1, got {settings['negatives']}")
        return DNNScorer(num_items, features["num_categories"], features["num_prices"], settings["embedding_dim"],
                         settings["hidden_units"], settings["dropout"], settings["seed"], name="dnn_scorer")(user)

    @property
    def scorer(self) -> DNNScorer:
        return self.get_layer("dnn_scorer")

    def pair_logits(self, inputs: dict, items: tf.Tensor, training=None) -> tf.Tensor:
        """Logits [n, m] of each input row with its row of item indices ``items`` [n, m]."""
        return self.scorer.pair_logits(self.user_features(inputs, training), tf.cast(items, tf.int32), training)

    def sampled_loss(self, inputs: dict, target: tf.Tensor, step: tf.Tensor, training=None) -> tf.Tensor:
        """:func:`loss` of the targets (label 1) against uniform negatives (label 0) drawn from the
        vocabulary items (never PAD, unknown or a hashed bucket) with the stateless seed (settings seed, ``step``): a run is repeatable."""
        settings, num_items = self.settings, self.scorer.num_items
        target = tf.reshape(tf.cast(target, tf.int32), [-1, 1])
        seed = tf.stack([tf.constant(settings["seed"], tf.int64), tf.cast(step, tf.int64)])
        negatives = tf.random.stateless_uniform(tf.stack([tf.shape(target)[0], settings["negatives"]]), seed=seed,
                                                minval=self.spec.first_item_idx, maxval=num_items,
                                                dtype=tf.int32)
        candidates = tf.concat([target, negatives], axis=1)
        labels = tf.concat([tf.ones_like(target, tf.float32), tf.zeros_like(negatives, tf.float32)], axis=1)
        # A sampled "negative" equal to the target is not a negative: it does not count.
        weights = tf.concat([tf.ones_like(target, tf.float32), tf.cast(negatives != target, tf.float32)], axis=1)
        return loss(labels, self.pair_logits(inputs, candidates, training), weights)

    def compute_training_loss(self, inputs: dict, target: tf.Tensor, training: bool = True) -> tf.Tensor:
        """:meth:`sampled_loss` with the step counter of fit (training) or evaluate as the seed's step."""
        return self.sampled_loss(inputs, target, self._train_counter if training else self._test_counter, training)


def build_dnn_model(num_items: int, max_seq_len: int, user_vector_dim: int, *, embedding_dim: int,
                    hidden_units: Sequence[int], dropout: float, seed: int, negatives: int,
                    tables: Optional[ItemTables] = None, num_categories: Optional[int] = None,
                    num_prices: Optional[int] = None) -> DNNModel:
    """A :class:`DNNModel` holding ``tables`` (default: zeros); see the towers' builder for the sizes."""
    spec = model_spec_dict(num_items, max_seq_len, user_vector_dim, tables, num_categories, num_prices)
    return DNNModel(spec, dict(embedding_dim=embedding_dim, hidden_units=hidden_units, dropout=dropout, seed=seed,
                               negatives=negatives))


def model_inputs(users: pd.DataFrame) -> dict:
    """Model inputs from a pandas frame with ``history`` and ``user_vector`` (arrays per row)."""
    return {C.HISTORY: np.stack(users[C.HISTORY].to_numpy()).astype(np.int32),
            C.USER_VECTOR: np.stack(users[C.USER_VECTOR].to_numpy()).astype(np.float32)}


def predict_pairs(model: tf.keras.Model, users: pd.DataFrame, item_idx: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """P(interaction) of each row's user (``history``, ``user_vector``) with ``item_idx[row]``.

    The DNN: sigmoid of its pair logit. Any other model of logits over the vocabulary: the item's
    softmax probability (what the scorer reports as confidence), which is not a calibrated
    interaction probability.
    """
    item_idx = np.asarray(item_idx, dtype=np.int32)
    if len(item_idx) != len(users):
        raise ValueError(f"{len(users)} users but {len(item_idx)} items")
    inputs = model_inputs(users)
    out = []
    for start in range(0, len(item_idx), batch_size):
        batch = {name: value[start:start + batch_size] for name, value in inputs.items()}
        items = item_idx[start:start + batch_size]
        if isinstance(model, DNNModel):
            logits = model.pair_logits(batch, items[:, None], training=False)[:, 0]
            out.append(tf.sigmoid(logits).numpy())
        else:
            probabilities = tf.nn.softmax(model(batch, training=False), axis=-1).numpy()
            out.append(probabilities[np.arange(len(items)), items])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
