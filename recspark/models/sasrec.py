"""SASRec: a causal self-attention Transformer over the behaviour sequence (Kang & McAuley, 2018).

Inputs (gold columns, int32 [n, max_seq_len], left-padded with 0): ``history`` (item_idx),
``history_types`` (event type ids) and ``history_gaps`` (log2 time-gap buckets to the latest step).
Each step is embedded as item + event type + time gap + learned position; ``num_layers`` pre-norm
blocks of causal multi-head self-attention (padding keys masked) and a point-wise feed-forward
network, each with dropout and a residual connection, follow; a final layer norm gives the
sequence's states. Sequences are left-padded, so the last position is always the latest real step
(and position ``max_seq_len - 1`` always means "latest"): its state is the user vector.

Output scores are tied to the input item embeddings (score = state . item_embedding[i] + bias[i]),
as in SASRec: items are scored in the space they are read in, the catalogue costs one table instead
of two (the output table is the largest variable), and sampled softmax then updates the same rows
the inputs use. The per-item bias carries popularity. The loss is :mod:`recspark.models.base`'s, taken
at every real step in training (each step predicts the next, see :meth:`SASRec.training_pairs`).

Padding never reaches a real step: the attention mask hides padding keys, so the type, gap or
position values at padded steps do not change any real step's state. The causal mask makes step t
see only steps <= t.
"""
from __future__ import annotations

import math
from typing import Any

import tensorflow as tf

from recspark import constants as C
from recspark.models.base import SequenceRecommender


@tf.keras.utils.register_keras_serializable(package="recspark")
class TransformerBlock(tf.keras.layers.Layer):
    """Pre-norm block: x + Dropout(MHA(LN(x))), then x + Dropout(FFN(LN(x))); padded steps zeroed."""

    def __init__(self, dim: int, num_heads: int, dropout: float, seed: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.dropout, self.seed = dim, num_heads, dropout, seed
        init = tf.keras.initializers
        self.attention_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="attention_norm")
        self.attention = tf.keras.layers.MultiHeadAttention(
            num_heads=num_heads, key_dim=max(1, math.ceil(dim / num_heads)), dropout=dropout,
            kernel_initializer=init.GlorotUniform(seed=seed), name="attention")
        self.attention_dropout = tf.keras.layers.Dropout(dropout, seed=seed + 1)
        self.ffn_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="ffn_norm")
        self.ffn_in = tf.keras.layers.Dense(dim, activation="relu", kernel_initializer=init.GlorotUniform(seed=seed + 2),
                                            name="ffn_in")
        self.ffn_out = tf.keras.layers.Dense(dim, kernel_initializer=init.GlorotUniform(seed=seed + 3), name="ffn_out")
        self.ffn_dropout = tf.keras.layers.Dropout(dropout, seed=seed + 4)

    def call(self, x: tf.Tensor, attention_mask: tf.Tensor, step_mask: tf.Tensor, training: bool = False,
             latest_only: bool = False) -> tf.Tensor:
        """[n, L, dim] states of every step, or with ``latest_only`` [n, 1, dim]: the latest step's
        alone (its query over every step's keys and values; the other steps' outputs are not computed)."""
        normed = self.attention_norm(x)
        query = normed
        if latest_only:
            x, query = x[:, -1:, :], normed[:, -1:, :]
            attention_mask, step_mask = attention_mask[:, -1:, :], step_mask[:, -1:, :]
        attended = self.attention(query=query, value=normed, key=normed, attention_mask=attention_mask,
                                  training=training)
        x = x + self.attention_dropout(attended, training=training)
        hidden = self.ffn_out(self.ffn_dropout(self.ffn_in(self.ffn_norm(x)), training=training))
        x = x + self.ffn_dropout(hidden, training=training)
        return x * step_mask

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads, "dropout": self.dropout,
                "seed": self.seed}


@tf.keras.utils.register_keras_serializable(package="recspark")
class SASRec(SequenceRecommender):
    """Item + event-type + time-gap + position embeddings -> causal Transformer -> last state."""

    NAME = "sasrec"
    INPUTS = (C.HISTORY, C.HISTORY_TYPES, C.HISTORY_GAPS)

    def __init__(self, spec: dict[str, Any], settings: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(spec, settings, **kwargs)
        dim, seed = self.settings["embedding_dim"], self.settings["seed"]
        spec_ = self.spec
        normal = tf.keras.initializers.RandomNormal
        # Unit-norm-ish item vectors: scores of the final (layer-normed, norm ~sqrt(dim)) state start near 1.
        self.item_embedding = tf.keras.layers.Embedding(
            spec_.num_items, dim, embeddings_initializer=normal(stddev=dim ** -0.5, seed=seed), name="item_embedding")
        self.type_embedding = tf.keras.layers.Embedding(
            spec_.num_event_types, dim, embeddings_initializer=normal(stddev=0.02, seed=seed + 1), name="type_embedding")
        self.gap_embedding = tf.keras.layers.Embedding(
            spec_.num_gap_buckets + 1, dim, embeddings_initializer=normal(stddev=0.02, seed=seed + 2),
            name="gap_embedding")
        self.position_embedding = tf.keras.layers.Embedding(
            spec_.max_seq_len, dim, embeddings_initializer=normal(stddev=0.02, seed=seed + 3), name="position_embedding")
        self.input_dropout = tf.keras.layers.Dropout(self.settings["dropout"], seed=seed + 4)
        self.blocks = [
            TransformerBlock(dim, self.settings["num_heads"], self.settings["dropout"], seed=seed + 10 * (layer + 1),
                             name=f"block_{layer}")
            for layer in range(self.settings["num_layers"])
        ]
        self.final_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="final_norm")
        self._build_now()

    def sequence_states(self, inputs: dict[str, tf.Tensor], training: bool = False,
                        latest_only: bool = False) -> tf.Tensor:
        """[n, L, dim]: the state of every step (L = the inputs' length, at most max_seq_len); step t
        depends on steps <= t only. ``latest_only``: [n, 1, dim], the latest step's state alone, which
        is all a user vector reads: the last block then computes one query per row instead of L (its
        keys and values, and every earlier block, still cover every step). A quarter less work per
        training step of repeatnet on Complete Journey (results/encoder-latest-20261203/)."""
        history = inputs[C.HISTORY]
        # Out-of-range ids would fail the embedding lookup on CPU: gaps beyond the last bucket are
        # the last bucket (log scale saturates), unknown type ids share the highest id.
        types = tf.clip_by_value(inputs[C.HISTORY_TYPES], 0, self.spec.num_event_types - 1)
        gaps = tf.clip_by_value(inputs[C.HISTORY_GAPS], 0, self.spec.num_gap_buckets)
        real = tf.not_equal(history, C.PAD_IDX)  # [n, L]
        step_mask = tf.cast(real, tf.float32)[:, :, None]
        # The inputs may be the last `length` steps of a longer history (RepeatNet's encoder): their
        # positions are the last `length` ones, so "latest" is always position max_seq_len - 1.
        length = history.shape[1]
        positions = tf.range(self.spec.max_seq_len - length, self.spec.max_seq_len)
        x = (self.item_embedding(history) + self.type_embedding(types) + self.gap_embedding(gaps)
             + self.position_embedding(positions)[None, :, :])
        x = self.input_dropout(x, training=training) * step_mask
        causal = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)  # [query, key]: key <= query
        attention_mask = tf.logical_and(causal[None, :, :], real[:, None, :])  # and the key is a real step
        for number, block in enumerate(self.blocks, start=1):
            x = block(x, attention_mask=attention_mask, step_mask=step_mask, training=training,
                      latest_only=latest_only and number == len(self.blocks))
        return self.final_norm(x)

    def user_vectors(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        return self.sequence_states(inputs, training=training, latest_only=True)[:, -1, :]

    def output_embeddings(self) -> tf.Variable:
        return self.item_embedding.embeddings

    def training_pairs(self, inputs: dict[str, tf.Tensor], target: tf.Tensor,
                       training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        """In training, every real step predicts the step after it (the row's target after the last
        step), as SASRec trains: one causal pass gives up to ``max_seq_len`` pairs per row instead of
        one. A next step outside the vocabulary (PAD, unknown, a hashed bucket) is no pair. Outside
        training only the last step counts, the prediction the evaluation ranks."""
        if not training:
            return super().training_pairs(inputs, target, training)
        history = inputs[C.HISTORY]
        next_items = tf.concat([history[:, 1:], tf.cast(tf.reshape(target, [-1, 1]), history.dtype)], axis=1)
        pairs = tf.logical_and(tf.not_equal(history, C.PAD_IDX), next_items >= self.spec.first_item_idx)
        states = self.sequence_states(inputs, training=True)
        return tf.boolean_mask(states, pairs), tf.cast(tf.boolean_mask(next_items, pairs), tf.int64)
