"""RepeatNet: a repeat-aware next-basket Transformer (after Ren et al., AAAI 2019).

Grocery baskets are mostly re-buys: the strongest simple predictor of a household's next basket is
its own past purchases ("buy again"), and neural models that only score the catalogue lose to it.
This model keeps SASRec's sequence encoder (:class:`recspark.models.sasrec.SASRec`: item, event type,
time gap and position embeddings, causal Transformer, over the latest ``ENCODER_STEPS`` steps; the
last step's state ``h``) and mixes two distributions over the items by a learned per-user gate
``g = sigmoid(w . [h, log(1 + candidates)])``:

- **repeat**: a softmax over the user's repeat profile (gold ``repeat_items`` / ``repeat_features``,
  built by :func:`recspark.pipeline.repeat_profiles.with_repeat_profile` from the baskets before each
  example, query or serving row, so point-in-time by construction): the items bought in the most
  baskets, each with log(1 + baskets with it), its share of the user's baskets, baskets and days
  since it was last bought, the mean days between its purchases, and the item's repurchase rate and
  cycle over all buyers (milk is re-bought weekly by most). A candidate's score is an MLP
  over those features and ``h * e_item``, plus the match ``h . e_item`` and the item's learned
  repeat propensity (a per-item bias: milk is re-bought, a barbecue is not);
- **explore**: SASRec's softmax over the whole catalogue (tied item embeddings plus a bias).

``p(i) = g * p_repeat(i) + (1 - g) * p_explore(i)`` and the model's logits are ``log p``, so ranking,
evaluation and serving treat it as every other model. A row without a profile item has ``g = 0``.

The loss, stated once (:meth:`RepeatNet.compute_training_loss`): the mean negative log-likelihood
of the target basket's items, ``-1/|B| sum_{i in B} log p(i)``: every item of the next basket is a
target (``train_baskets``), not only the next step. With ``train.ignored_weight`` w > 0 each row
adds ``w * 1/|S| sum_{j in S} -log(1 - p(j))`` over its shown-and-ignored items S (gold
``ignored``: the list served before the basket, items that drew no response): an unlikelihood term
that pushes down what the user was shown and passed over. The softmax already counts every item
outside the basket as a negative; this term weighs the ones the user demonstrably saw, in proportion
to the mass the model gives them (its gradient vanishes as p(j) -> 0).

Ablations, trained and evaluated in the same run: :class:`RepeatNetExplore` (no repeat head: the
gate is 0, so the model is SASRec's encoder with basket targets) and :class:`RepeatNetNextItem`
(the repeat head, trained on the first item of the next basket only: a next-item target).
"""
from __future__ import annotations

from typing import Any, ClassVar

import tensorflow as tf

from recspark import constants as C
from recspark.models.sasrec import SASRec

# Added to the log of a probability: keeps log finite where a distribution puts no mass.
_EPS = 1e-9


@tf.keras.utils.register_keras_serializable(package="recspark")
class RepeatNet(SASRec):
    """SASRec's encoder, a repeat head over the user's own items and a gate mixing it with the catalogue."""

    NAME = "repeatnet"
    INPUTS = (C.HISTORY, C.HISTORY_TYPES, C.HISTORY_GAPS, C.REPEAT_ITEMS, C.REPEAT_FEATURES)
    REPEAT_HEAD: ClassVar[bool] = True
    SETTINGS: ClassVar[tuple[str, ...]] = (*SASRec.SETTINGS, "ignored_weight")
    # The encoder reads the latest ENCODER_STEPS steps (SASRec peaked with 50-step windows on
    # Complete Journey); a longer max_seq_len is then cheap for the other models' tables only.
    ENCODER_STEPS: ClassVar[int] = 50

    def __init__(self, spec: dict[str, Any], settings: dict[str, Any], **kwargs: Any) -> None:
        self._repeat_layers_ready = False
        super().__init__(spec, settings, **kwargs)

    @classmethod
    def model_config(cls, spec: dict[str, Any], settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        # An export from before ignored_weight existed trained without the term.
        return super().model_config(spec, {"ignored_weight": 0.0, **settings})

    def _build_now(self) -> None:
        # SASRec's __init__ ends by calling this; the repeat layers are created first, here (not at
        # all without the head: a variable without a gradient would trouble Horovod's allreduce).
        if not self.REPEAT_HEAD:
            self._repeat_layers_ready = True
            return super()._build_now()
        if self.spec.repeat_candidates < 1:
            raise ValueError(f"{self.NAME} needs ModelSpec.repeat_candidates >= 1 (features.repeat_candidates)")
        if self.spec.repeat_features != C.REPEAT_FEATURE_COUNT:
            # Gold rows of this recspark carry another width: the reshape below would fail in the
            # middle of scoring, or worse, fit and read the numbers shifted.
            found = self.spec.repeat_features or "an unrecorded number of (exported before 2026-12-02)"
            raise ValueError(f"{self.NAME} was trained on {found} repeat features per candidate, and this recspark's "
                             f"features stage writes {C.REPEAT_FEATURE_COUNT}: train it again (or serve it with "
                             "the recspark that trained it)")
        dim, seed = self.settings["embedding_dim"], self.settings["seed"]
        init = tf.keras.initializers
        self.repeat_hidden = tf.keras.layers.Dense(
            dim, activation="relu", kernel_initializer=init.GlorotUniform(seed=seed + 103), name="repeat_hidden")
        self.repeat_out = tf.keras.layers.Dense(1, kernel_initializer=init.GlorotUniform(seed=seed + 104),
                                                name="repeat_out")
        self.repeat_item_bias = tf.keras.layers.Embedding(
            self.spec.num_items, 1, embeddings_initializer="zeros", name="repeat_item_bias")
        self.gate = tf.keras.layers.Dense(1, kernel_initializer=init.GlorotUniform(seed=seed + 105), name="gate")
        self._repeat_layers_ready = True
        super()._build_now()

    def dummy_inputs(self, rows: int = 1) -> dict[str, tf.Tensor]:
        inputs = super().dummy_inputs(rows)
        if self.REPEAT_HEAD:
            size = self.spec.repeat_candidates
            inputs[C.REPEAT_ITEMS] = tf.zeros([rows, size], tf.int32)
            inputs[C.REPEAT_FEATURES] = tf.zeros([rows, size * C.REPEAT_FEATURE_COUNT], tf.float32)
        return inputs

    def _cast_inputs(self, inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        missing = [name for name in self.INPUTS if name not in inputs]
        if missing:
            raise KeyError(f"{self.name} needs inputs {list(self.INPUTS)}, missing {missing}")
        return {name: tf.cast(inputs[name], tf.float32 if name in C.FLOAT_INPUTS else tf.int32)
                for name in self.INPUTS}

    def user_vectors(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """The encoder's state at the latest step, from the latest ``ENCODER_STEPS`` steps."""
        steps = min(self.ENCODER_STEPS, self.spec.max_seq_len)
        latest = {name: inputs[name][:, -steps:] for name in SASRec.INPUTS}
        return self.sequence_states(latest, training=training, latest_only=True)[:, -1, :]

    # -- the two heads -------------------------------------------------------------------------------

    def repeat_scores(self, inputs: dict[str, tf.Tensor], state: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """([n, R] repeat logit of each candidate of the repeat profile, [n, R] bool: a real candidate).

        The score: an MLP over the candidate's repeat features and the state-item product, plus the
        match ``h . e_item`` and the item's learned repeat propensity."""
        items = inputs[C.REPEAT_ITEMS]
        features = tf.reshape(inputs[C.REPEAT_FEATURES], [-1, self.spec.repeat_candidates, C.REPEAT_FEATURE_COUNT])
        real = items >= self.spec.first_item_idx
        embedded = self.item_embedding(items)  # [n, R, dim]
        match = tf.reduce_sum(embedded * state[:, None, :], axis=2)
        hidden = self.repeat_hidden(tf.concat([features, match[:, :, None], embedded * state[:, None, :]], axis=2))
        scores = (tf.squeeze(self.repeat_out(hidden), -1) + match + tf.squeeze(self.repeat_item_bias(items), -1))
        return scores, real

    def distributions(self, inputs: dict[str, tf.Tensor],
                      training: bool = False) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """([n, num_items] p_repeat, [n, num_items] log p_explore, [n] gate): the two heads and the
        gate. p_repeat is 0 off the user's history items and sums to 1 when there is one (else 0,
        and the gate is 0)."""
        state = self.user_vectors(inputs, training=training)
        explore = tf.matmul(state, self.output_embeddings(), transpose_b=True) + self.output_bias
        reserved = tf.range(self.spec.num_items) < self.spec.first_item_idx
        explore = tf.where(reserved[None, :], tf.fill(tf.shape(explore), -1e9), explore)
        log_explore = tf.nn.log_softmax(explore)
        if not self.REPEAT_HEAD:
            return tf.zeros_like(explore), log_explore, tf.zeros(tf.shape(state)[:1])
        p_positions, gate = self.repeat_head(inputs, state)
        # Candidates -> items: the profile lists each item once.
        rows = tf.broadcast_to(tf.range(tf.shape(p_positions)[0])[:, None], tf.shape(p_positions))
        index = tf.stack([rows, inputs[C.REPEAT_ITEMS]], axis=2)
        p_repeat = tf.scatter_nd(index, p_positions, tf.shape(explore))
        return p_repeat, log_explore, gate

    def repeat_head(self, inputs: dict[str, tf.Tensor], state: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """([n, R] p_repeat of each repeat-profile candidate, 0 off the real ones; [n] gate, 0 for a
        row without a candidate): the head per candidate, so the scorer need not spread it over the
        catalogue (:class:`recspark.scoring.RepeatPlan`)."""
        scores, real = self.repeat_scores(inputs, state)
        has_repeat = tf.reduce_any(real, axis=1)
        p_positions = tf.nn.softmax(tf.where(real, scores, tf.fill(tf.shape(scores), -1e9)), axis=1)
        p_positions = p_positions * tf.cast(real, tf.float32)
        n_items = tf.reduce_sum(tf.cast(real, tf.float32), axis=1, keepdims=True)
        gate = tf.sigmoid(self.gate(tf.concat([state, tf.math.log1p(n_items)], axis=1)))
        gate = tf.squeeze(gate, 1) * tf.cast(has_repeat, tf.float32)
        return p_positions, gate

    def mixture(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """[n, num_items] log p(item) of the gated mixture (the explore log-softmax without the head)."""
        p_repeat, log_explore, gate = self.distributions(inputs, training=training)
        if not self.REPEAT_HEAD:
            return log_explore
        mixed = gate[:, None] * p_repeat + (1.0 - gate[:, None]) * tf.exp(log_explore)
        return tf.math.log(mixed + _EPS)

    # -- inference and the loss ----------------------------------------------------------------------

    def call(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """[n, num_items] log-probabilities of the next basket's items (logits for ranking)."""
        if not self._repeat_layers_ready:  # SASRec's own dummy call while its layers are built
            return super().call(inputs, training=training)
        return self.mixture(self._cast_inputs(inputs), training=training)

    def compute_training_loss(self, inputs: dict[str, tf.Tensor], target: tf.Tensor, training: bool = True) -> tf.Tensor:
        """Mean over rows of the mean negative log-likelihood of the row's target items: ``target``
        is [n, B] item_idx padded with PAD (every item of the next basket) or [n] (one next item);
        plus, with ``ignored_weight`` > 0 and ``inputs["ignored"]`` ([n, K] item_idx, PAD-padded),
        that weight times the mean of ``-log(1 - p)`` over the row's shown-and-ignored items."""
        log_p = self.mixture(self._cast_inputs(inputs), training=training)
        target = tf.cast(target, tf.int32)
        if target.shape.rank == 1:
            target = target[:, None]
        first = self.spec.first_item_idx
        valid = tf.cast(target >= first, tf.float32)
        picked = tf.gather(log_p, target, batch_dims=1)  # [n, B]
        per_row = -tf.reduce_sum(picked * valid, axis=1) / tf.maximum(tf.reduce_sum(valid, axis=1), 1.0)
        weight = float(self.settings["ignored_weight"])
        if weight > 0 and C.IGNORED in inputs:
            ignored = tf.cast(inputs[C.IGNORED], tf.int32)
            shown = tf.cast(ignored >= first, tf.float32)
            p_ignored = tf.exp(tf.gather(log_p, ignored, batch_dims=1))  # [n, K]
            unlikely = -tf.math.log(tf.maximum(1.0 - p_ignored, _EPS)) * shown
            per_row += weight * tf.reduce_sum(unlikely, axis=1) / tf.maximum(tf.reduce_sum(shown, axis=1), 1.0)
        has_target = tf.cast(tf.reduce_sum(valid, axis=1) > 0, tf.float32)
        return tf.reduce_sum(per_row * has_target) / tf.maximum(tf.reduce_sum(has_target), 1.0)


@tf.keras.utils.register_keras_serializable(package="recspark")
class RepeatNetExplore(RepeatNet):
    """Ablation: no repeat head (gate 0): SASRec's encoder trained on next-basket targets."""

    NAME = "repeatnet_explore"
    INPUTS = SASRec.INPUTS
    REPEAT_HEAD = False


@tf.keras.utils.register_keras_serializable(package="recspark")
class RepeatNetNextItem(RepeatNet):
    """Ablation: the repeat head trained on the next item (the first of the next basket) alone."""

    NAME = "repeatnet_next_item"

    def compute_training_loss(self, inputs: dict[str, tf.Tensor], target: tf.Tensor, training: bool = True) -> tf.Tensor:
        target = tf.cast(target, tf.int32)
        return super().compute_training_loss(inputs, target[:, :1] if target.shape.rank == 2 else target, training)
