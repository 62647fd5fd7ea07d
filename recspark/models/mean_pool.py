"""Mean-pool model: the average embedding of the items in a history predicts the next item.

Built only from standard Keras layers, so a saved ``model.keras`` loads with
``tf.keras.models.load_model(path)`` and no custom objects (a Lambda layer would need
``safe_mode=False``). Input: ``history`` int32 [n, max_seq_len], left-padded with PAD_IDX.
Output: logits [n, num_items] over the whole vocabulary, PAD and OOV included; keeping those two
out of recommendations is the scorer's job.

A history made only of padding has an empty mask, and its masked mean is 0/0 = NaN: the gold stage
never produces one (every example and serving history holds at least one item or OOV_IDX), and
the scorer must not feed one.
"""
from __future__ import annotations

import tensorflow as tf

from recspark.constants import HISTORY

NAME = "mean_pool"


def build_mean_pool_model(num_items: int, embedding_dim: int, max_seq_len: int, seed: int) -> tf.keras.Model:
    """Embedding (PAD masked) -> masked mean -> Dense(relu) -> Dense(num_items) logits."""
    if num_items < 3:
        raise ValueError(f"num_items must count PAD, OOV and at least one item, got {num_items}")
    # Seeded initialisers give every Horovod rank the same starting weights even before rank 0's
    # broadcast (which only happens after the first batch).
    init = tf.keras.initializers
    history = tf.keras.Input(shape=(max_seq_len,), dtype="int32", name=HISTORY)
    embedded = tf.keras.layers.Embedding(
        num_items, embedding_dim, mask_zero=True,  # PAD_IDX == 0 is what mask_zero masks
        embeddings_initializer=init.RandomUniform(-0.05, 0.05, seed=seed), name="item_embedding",
    )(history)
    # GlobalAveragePooling1D honours the Embedding's mask: padding does not dilute the mean.
    pooled = tf.keras.layers.GlobalAveragePooling1D(name="masked_mean")(embedded)
    hidden = tf.keras.layers.Dense(
        embedding_dim, activation="relu", kernel_initializer=init.GlorotUniform(seed=seed + 1), name="hidden",
    )(pooled)
    logits = tf.keras.layers.Dense(
        num_items, kernel_initializer=init.GlorotUniform(seed=seed + 2), name="logits",
    )(hidden)
    return tf.keras.Model(history, logits, name=NAME)


def loss() -> tf.keras.losses.Loss:
    """The training loss, stated once: the target item's softmax cross-entropy over all logits."""
    return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
