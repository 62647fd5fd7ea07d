"""The base of every model: dict of gold columns -> logits over all items, and the loss in one place.

:class:`Recommender` is what every model shares (spec and settings, config, ``from_train_config``,
and a ``train_step`` around the model's one :meth:`Recommender.compute_training_loss`); the
feature models (towers, dnn) build on it in :class:`recspark.models.towers.FeatureModel`.

A sequence model is a subclass of :class:`SequenceRecommender` that creates its layers in
``__init__``, reads the columns named in ``INPUTS`` and turns them into one user vector per row
(:meth:`SequenceRecommender.user_vectors`). Scores are ``user_vector . output_embeddings[i] + output_bias[i]`` for every item i, PAD and OOV
included (keeping those out of recommendations is the scorer's job).

Training (``fit``) uses :meth:`SequenceRecommender.compute_training_loss`, the one statement of its loss:
softmax cross-entropy over the whole catalogue (``softmax="full"``), or sampled softmax over
``num_sampled`` negatives (``"sampled"``), which never computes the full logits. Evaluation,
``predict`` and serving always use the full logits.

Saving: ``get_config`` holds only JSON values (the ModelSpec and the training settings the model
uses), the class rebuilds every layer and variable in ``__init__`` (it runs itself once on a dummy
batch), so ``tf.keras.models.load_model`` recreates it and loads the weights by layer path, with no
custom objects beyond the registration that ``import recspark.models`` performs.
"""
from __future__ import annotations

import json
from typing import Any, ClassVar, Optional

import tensorflow as tf

from recspark import constants as C
from recspark.models.spec import ModelSpec

# The TrainConfig fields a sequence model's config keeps (everything else is irrelevant to the network).
SETTINGS = ("embedding_dim", "num_layers", "num_heads", "dropout", "softmax", "num_sampled", "sampler", "seed")


@tf.keras.utils.register_keras_serializable(package="recspark")
class Recommender(tf.keras.Model):
    """Base class of every model: gold columns ``INPUTS`` in, logits [n, num_items] out.

    What every model shares: ``spec`` (the ModelSpec) and ``settings`` (the TrainConfig fields named
    in ``SETTINGS``), kept as JSON so ``get_config`` / ``from_config`` rebuild the model by calling
    its constructor; ``from_train_config``; and a ``train_step`` / ``test_step`` whose loss is
    :meth:`compute_training_loss`, the one statement of each model's loss. Subclasses:
    :class:`SequenceRecommender` (mean_pool, sasrec) and
    :class:`recspark.models.towers.FeatureModel` (towers, dnn).
    """

    NAME: ClassVar[str] = ""
    INPUTS: ClassVar[tuple[str, ...]] = (C.HISTORY,)
    SETTINGS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, spec: dict[str, Any], settings: dict[str, Any], name: Optional[str] = None,
                 **kwargs: Any) -> None:
        """``spec`` and ``settings`` as the subclass keeps them (JSON values, see :meth:`model_config`);
        ``kwargs`` go to Keras (a feature model's ``inputs`` and ``outputs``)."""
        super().__init__(name=name or self.NAME, **kwargs)
        # JSON strings, not dicts: Keras would wrap a dict attribute for tracking.
        self._spec_json, self._settings_json = json.dumps(spec), json.dumps(settings)
        # The epoch's mean loss for fit's logs. Set around Keras's attribute tracking: its two
        # counters are not weights (not saved, not in get_weights, so ranks compare only the model).
        object.__setattr__(self, "loss_tracker", tf.keras.metrics.Mean(name="loss"))

    @classmethod
    def model_config(cls, spec: dict[str, Any], settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The (spec, settings) the model keeps, checked: by default ``settings`` cut to ``SETTINGS``."""
        return dict(spec), {key: settings[key] for key in cls.SETTINGS}

    # -- construction, saving ------------------------------------------------------------------------

    @classmethod
    def from_train_config(cls, spec: Any, train: Any) -> "Recommender":
        """From a ModelSpec (or its dict) and a TrainConfig, as ``recspark.models.build_model`` calls it."""
        values = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
        return cls(spec=values, settings={key: getattr(train, key) for key in cls.SETTINGS})

    @property
    def spec(self) -> ModelSpec:
        """The ModelSpec (decoded once: the layers read it on every call)."""
        cached = self.__dict__.get("_spec_cache")
        if cached is None:
            cached = ModelSpec.from_dict(json.loads(self._spec_json))
            object.__setattr__(self, "_spec_cache", cached)
        return cached

    @property
    def settings(self) -> dict[str, Any]:
        return json.loads(self._settings_json)

    def get_config(self) -> dict[str, Any]:
        return {"spec": json.loads(self._spec_json), "settings": self.settings, "name": self.name}

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> "Recommender":
        return cls(**config)

    # -- training: the loss, stated once per model ---------------------------------------------------

    def compute_training_loss(self, inputs: dict[str, tf.Tensor], target: tf.Tensor, training: bool = True) -> tf.Tensor:
        """The model's loss: a scalar for a batch of ``inputs`` and their ``target`` item_idx."""
        raise NotImplementedError

    @property
    def metrics(self) -> list:
        return [self.loss_tracker]

    def train_step(self, data: tuple) -> dict[str, tf.Tensor]:
        inputs, target = data[0], data[1]
        with tf.GradientTape() as tape:
            loss = self.compute_training_loss(inputs, target, training=True)
            total = loss + tf.add_n(self.losses) if self.losses else loss
        # minimize(), not apply_gradients(grads): Horovod's DistributedOptimizer averages the
        # gradients across ranks inside compute_gradients, which minimize() calls.
        self.optimizer.minimize(total, self.trainable_variables, tape=tape)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data: tuple) -> dict[str, tf.Tensor]:
        inputs, target = data[0], data[1]
        self.loss_tracker.update_state(self.compute_training_loss(inputs, target, training=False))
        return {"loss": self.loss_tracker.result()}


class SequenceRecommender(Recommender):
    """Base of the sequence models; subclasses set ``NAME``, ``INPUTS`` and implement layers,
    ``user_vectors`` and ``output_embeddings``."""

    SETTINGS: ClassVar[tuple[str, ...]] = SETTINGS

    def __init__(self, spec: dict[str, Any], settings: dict[str, Any], **kwargs: Any) -> None:
        spec, settings = self.model_config(spec, settings)
        super().__init__(spec, settings, **kwargs)
        self.output_bias = self.add_weight(
            name="output_bias", shape=(self.spec.num_items,), initializer="zeros", trainable=True)

    @classmethod
    def model_config(cls, spec: dict[str, Any], settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The whole ModelSpec (checked by ModelSpec itself) and the sequence settings, checked."""
        spec, settings = ModelSpec.from_dict(spec).to_dict(), super().model_config(spec, settings)[1]
        if settings["softmax"] not in ("full", "sampled"):
            raise ValueError(f"softmax must be 'full' or 'sampled', got {settings['softmax']!r}")
        if settings["sampler"] not in ("log_uniform", "popularity"):
            raise ValueError(f"sampler must be 'log_uniform' or 'popularity', got {settings['sampler']!r}")
        if settings["softmax"] == "sampled" and settings["sampler"] == "popularity" and spec["item_counts"] is None:
            raise ValueError("the popularity sampler needs ModelSpec.item_counts (item_vocab train_count)")
        return spec, settings

    # -- what subclasses provide -------------------------------------------------------------------

    def user_vectors(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """[n, embedding_dim]: one vector per row, the query the items are scored against."""
        raise NotImplementedError

    def output_embeddings(self) -> tf.Tensor:
        """[num_items, embedding_dim]: the item side of the score (tied or separate)."""
        raise NotImplementedError

    # -- construction --------------------------------------------------------------------------------

    def _build_now(self) -> None:
        """Creates every variable (call once at the end of a subclass's ``__init__``)."""
        self(self.dummy_inputs(), training=False)

    def dummy_inputs(self, rows: int = 1) -> dict[str, tf.Tensor]:
        """A batch of one real item (OOV) at the last position, the rest padding."""
        batch = tf.concat([tf.zeros([rows, self.spec.max_seq_len - 1], tf.int32),
                           tf.fill([rows, 1], C.OOV_IDX)], axis=1)
        return {name: batch for name in self.INPUTS}

    def get_build_config(self) -> Optional[dict]:
        # Every variable exists once __init__ returns: nothing to rebuild from an input shape.
        return None

    # -- inference -----------------------------------------------------------------------------------

    def _cast_inputs(self, inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        missing = [name for name in self.INPUTS if name not in inputs]
        if missing:
            raise KeyError(f"{self.name} needs inputs {list(self.INPUTS)}, missing {missing}")
        return {name: tf.cast(inputs[name], tf.int32) for name in self.INPUTS}

    def call(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """Logits [n, num_items] over the whole vocabulary."""
        users = self.user_vectors(self._cast_inputs(inputs), training=training)
        return tf.matmul(users, self.output_embeddings(), transpose_b=True) + self.output_bias

    # -- the loss, stated once -----------------------------------------------------------------------

    def compute_training_loss(self, inputs: dict[str, tf.Tensor], target: tf.Tensor, training: bool = True) -> tf.Tensor:
        """Mean softmax cross-entropy of the next item over the (query vector, next item) pairs of
        :meth:`training_pairs`: over every item ("full", and always when not training), or over the
        next item and ``num_sampled`` sampled negatives ("sampled")."""
        users, labels = self.training_pairs(self._cast_inputs(inputs), target, training=training)
        items = self.output_embeddings()
        if self.settings["softmax"] == "full" or not training:
            logits = tf.matmul(users, items, transpose_b=True) + self.output_bias
            return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        return tf.reduce_mean(tf.nn.sampled_softmax_loss(
            weights=items, biases=self.output_bias, labels=labels[:, None], inputs=users,
            num_sampled=self._num_sampled(), num_classes=self.spec.num_items,
            sampled_values=self._sample_negatives(labels), remove_accidental_hits=True,
        ))

    def training_pairs(self, inputs: dict[str, tf.Tensor], target: tf.Tensor,
                       training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        """([m, dim] query vectors, [m] int64 next items) the loss is taken over: by default one
        pair per row, the user vector and the row's target."""
        return self.user_vectors(inputs, training=training), tf.cast(tf.reshape(target, [-1]), tf.int64)

    def _num_sampled(self) -> int:
        # Samples are drawn without repetition among the real items, so never more than there are.
        return min(self.settings["num_sampled"], self.spec.num_items - self.spec.first_item_idx)

    def _sample_negatives(self, target: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Negatives among the vocabulary items only (PAD, unknown and the hashed buckets are never
        targets): the samplers draw from 0..range_max-1, shifted by ``spec.first_item_idx``. item_idx
        is assigned most frequent first, which is the order the log-uniform (Zipfian) sampler assumes."""
        first = self.spec.first_item_idx
        range_max = self.spec.num_items - first
        # A target outside the real items (never produced by the gold stage) only skews its expected count.
        shifted = tf.clip_by_value(target - first, 0, range_max - 1)[:, None]
        common = dict(true_classes=shifted, num_true=1, num_sampled=self._num_sampled(), unique=True,
                      range_max=range_max, seed=self.settings["seed"])
        if self.settings["sampler"] == "log_uniform":
            sampled, true_expected, sampled_expected = tf.random.log_uniform_candidate_sampler(**common)
        else:
            counts = [float(c) for c in self.spec.item_counts[first:]]
            sampled, true_expected, sampled_expected = tf.random.fixed_unigram_candidate_sampler(
                unigrams=counts, **common)
        return sampled + first, true_expected, sampled_expected
