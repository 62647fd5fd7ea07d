"""Mean-pool model: the average embedding of the items in a history predicts the next item.

The small, fast model (the pipeline's tests train it). Input: ``history`` int32 [n, max_seq_len],
left-padded with PAD_IDX. Output: logits over every item (see :mod:`recspark.models.base`, which
also states its loss). A history made only of padding has a zero mean (no NaN), whose scores are
the output biases: the item popularity the model learnt.
"""
from __future__ import annotations

from typing import Any

import tensorflow as tf

from recspark import constants as C
from recspark.models.base import SequenceRecommender


@tf.keras.utils.register_keras_serializable(package="recspark")
class MeanPool(SequenceRecommender):
    """Embedding (PAD masked) -> masked mean -> Dense(relu) -> a Dense-like [dim, num_items] output
    kernel (same initial weights as the functional model it replaces, so its runs are comparable)."""

    NAME = "mean_pool"
    INPUTS = (C.HISTORY,)

    def __init__(self, spec: dict[str, Any], settings: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(spec, settings, **kwargs)
        dim, seed = self.settings["embedding_dim"], self.settings["seed"]
        # Seeded initialisers give every Horovod rank the same starting weights even before rank 0's
        # broadcast (which only happens after the first batch).
        init = tf.keras.initializers
        self.item_embedding = tf.keras.layers.Embedding(
            self.spec.num_items, dim, embeddings_initializer=init.RandomUniform(-0.05, 0.05, seed=seed),
            name="item_embedding")
        self.hidden = tf.keras.layers.Dense(dim, activation="relu",
                                            kernel_initializer=init.GlorotUniform(seed=seed + 1), name="hidden")
        self.output_kernel = self.add_weight(
            name="output_kernel", shape=(dim, self.spec.num_items), initializer=init.GlorotUniform(seed=seed + 2))
        self._build_now()

    def user_vectors(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        history = inputs[C.HISTORY]
        mask = tf.cast(tf.not_equal(history, C.PAD_IDX), tf.float32)[:, :, None]
        # Padding does not dilute the mean; an all-padding row divides 0 by 0 and gets 0.
        summed = tf.reduce_sum(self.item_embedding(history) * mask, axis=1)
        return self.hidden(tf.math.divide_no_nan(summed, tf.reduce_sum(mask, axis=1)))

    def output_embeddings(self) -> tf.Tensor:
        return tf.transpose(self.output_kernel)
