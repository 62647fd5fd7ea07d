"""Feature-aware two-tower model: a user tower and an item tower whose dot product scores items.

User tower: MLP over [user_vector (the user's features as of the prediction: point in time),
masked mean of the history's item embeddings]. Item tower: MLP over [item id embedding, category
embedding, price-bucket embedding, popularity-bucket embedding], evaluated for every vocabulary
item. Output: logits [n, num_items] over the item vocabulary (PAD, OOV, then items from
spec.first_item_idx), trained with the full softmax cross-entropy
(:meth:`TowersModel.compute_training_loss`), so the model plugs into the same trainer, evaluator and
scorer as the sequence models.

The item attributes are per-item_idx lookup tables (:class:`ItemTables`) stored in the model as
non-trainable weights: the exported ``model.keras`` needs nothing else at scoring time.

Cold start: an item whose id embedding is not trusted (``use_id == 0``: fewer than
``ID_MIN_COUNT`` training events) is scored from its attributes alone, so two such items with the
same attributes get the same vector. Items outside the vocabulary are still OOV: the output covers
vocabulary items only; :meth:`ItemAttributeEncoder.encode` can embed an arbitrary attribute row,
but no stage uses that yet.

The custom layers are registered and live at this module's top level: ``tf.keras.models.load_model``
imports the module from the class's stored module path, so loading needs no ``custom_objects``.
"""
from __future__ import annotations

from typing import Any, ClassVar, Optional, Sequence

import numpy as np
import tensorflow as tf
# tf.keras is tf-keras (recspark.models checks): its Functional class, which FeatureModel names as a base.
# A private module path, kept on purpose: the public route (FeatureModel(Recommender) calling
# tf.keras.Model.__init__ with inputs= and outputs=) makes tf-keras's inject_functional_model_class
# rewrite __bases__ up the hierarchy, so Recommender itself becomes a Functional subclass for the
# whole process, and every sequence model built afterwards fails ("Functional.__init__() missing
# 'inputs' and 'outputs'"). tests/test_towers_dnn.py::test_feature_models_leave_the_sequence_models_alone
# guards this. If a tf-keras upgrade moves this module, the import fails at once, loudly.
from tf_keras.src.engine.functional import Functional

from recspark import constants as C
from recspark.models.base import Recommender
from recspark.models.item_tables import POPULARITY_BUCKETS, ItemTables, feature_spec

NAME = "towers"
_init = tf.keras.initializers


def mlp_layers(units: Sequence[int], dropout: float, seed: int, name: str) -> list:
    """Dense(relu) (+ Dropout) per hidden size; seeded so every Horovod rank starts the same."""
    layers = []
    for i, width in enumerate(units):
        layers.append(tf.keras.layers.Dense(int(width), activation="relu", name=f"{name}_dense_{i}",
                                            kernel_initializer=_init.GlorotUniform(seed=seed + i)))
        if dropout:
            layers.append(tf.keras.layers.Dropout(dropout, seed=seed + i, name=f"{name}_dropout_{i}"))
    return layers


def build_mlp(layers: list, width: int) -> int:
    """Builds ``layers`` for inputs of ``width`` features; returns the output width."""
    for layer in layers:
        layer.build((None, width))
        width = getattr(layer, "units", width)
    return width


def apply_mlp(layers: list, x: tf.Tensor, training=None) -> tf.Tensor:
    for layer in layers:
        x = layer(x, training=training)
    return x


def masked_mean(embedded: tf.Tensor, history: tf.Tensor) -> tf.Tensor:
    """Mean of the embeddings of the non-PAD steps; an all-PAD history gives zeros, not NaN."""
    mask = tf.cast(tf.not_equal(history, C.PAD_IDX), embedded.dtype)[..., None]
    return tf.reduce_sum(embedded * mask, axis=-2) / tf.maximum(tf.reduce_sum(mask, axis=-2), 1.0)


@tf.keras.saving.register_keras_serializable(package="recspark")
class ItemAttributeEncoder(tf.keras.layers.Layer):
    """item_idx -> [id embedding * use_id, category, price, popularity embeddings] (4 * dim).

    The attribute tables are non-trainable int32/float32 weights, set by :meth:`set_tables` and
    saved with the model's weights.
    """

    def __init__(self, num_items: int, num_categories: int, num_prices: int, embedding_dim: int,
                 seed: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_items, self.num_categories, self.num_prices = num_items, num_categories, num_prices
        self.embedding_dim, self.seed = embedding_dim, seed

        def embedding(rows: int, offset: int, name: str) -> tf.keras.layers.Embedding:
            return tf.keras.layers.Embedding(rows, embedding_dim, name=name,
                                             embeddings_initializer=_init.RandomUniform(-0.05, 0.05, seed=seed + offset))

        self.id_embedding = embedding(num_items, 0, "id_embedding")
        self.category_embedding = embedding(num_categories, 1, "category_embedding")
        self.price_embedding = embedding(num_prices, 2, "price_embedding")
        self.popularity_embedding = embedding(POPULARITY_BUCKETS, 3, "popularity_embedding")

    @property
    def output_width(self) -> int:
        return 4 * self.embedding_dim

    def build(self, input_shape=None) -> None:
        def table(name: str, dtype: str) -> tf.Variable:
            return self.add_weight(name=name, shape=(self.num_items,), dtype=dtype, initializer="zeros",
                                   trainable=False)

        self.category_table = table("category_table", "int32")
        self.price_table = table("price_table", "int32")
        self.popularity_table = table("popularity_table", "int32")
        self.use_id_table = table("use_id_table", "float32")
        for layer in (self.id_embedding, self.category_embedding, self.price_embedding, self.popularity_embedding):
            layer.build((None,))
        super().build(input_shape)

    def set_tables(self, tables: ItemTables) -> None:
        """Copies ``tables`` into the model (they must fit the rows the model was built with)."""
        if not self.built:
            self.build()
        if tables.num_items != self.num_items:
            raise ValueError(f"tables hold {tables.num_items} items, the model {self.num_items}")
        if tables.num_categories > self.num_categories or tables.num_prices > self.num_prices:
            raise ValueError(f"tables need {tables.num_categories} categories and {tables.num_prices} prices, "
                             f"the model has {self.num_categories} and {self.num_prices}")
        self.category_table.assign(tables.category.astype(np.int32))
        self.price_table.assign(tables.price.astype(np.int32))
        self.popularity_table.assign(tables.popularity.astype(np.int32))
        self.use_id_table.assign(tables.use_id.astype(np.float32))

    def encode(self, item_idx, category, price, popularity, use_id) -> tf.Tensor:
        """Features of items given their attributes (also of items the tables do not hold)."""
        id_part = self.id_embedding(item_idx) * tf.expand_dims(tf.cast(use_id, self.compute_dtype), -1)
        return tf.concat([id_part, self.category_embedding(category), self.price_embedding(price),
                          self.popularity_embedding(popularity)], axis=-1)

    def call(self, item_idx) -> tf.Tensor:
        item_idx = tf.cast(item_idx, tf.int32)
        return self.encode(item_idx, tf.gather(self.category_table, item_idx), tf.gather(self.price_table, item_idx),
                           tf.gather(self.popularity_table, item_idx), tf.gather(self.use_id_table, item_idx))

    def get_config(self) -> dict:
        return {**super().get_config(), "num_items": self.num_items, "num_categories": self.num_categories,
                "num_prices": self.num_prices, "embedding_dim": self.embedding_dim, "seed": self.seed}


class ItemAttributeScores(tf.keras.layers.Layer):
    """Base of the layers that score items from their attribute tables (:class:`ItemTowerScores`,
    :class:`recspark.models.dnn.DNNScorer`): holds the :class:`ItemAttributeEncoder` (created first,
    so the variables keep their order) and the sizes, and states ``get_config`` once for both."""

    def __init__(self, num_items: int, num_categories: int, num_prices: int, embedding_dim: int,
                 hidden_units: Sequence[int], dropout: float, seed: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_items, self.embedding_dim = num_items, embedding_dim
        self.hidden_units, self.dropout, self.seed = [int(u) for u in hidden_units], dropout, seed
        self.attributes = ItemAttributeEncoder(num_items, num_categories, num_prices, embedding_dim, seed,
                                               name="item_attributes")

    def get_config(self) -> dict:
        return {**super().get_config(), "num_items": self.num_items,
                "num_categories": self.attributes.num_categories, "num_prices": self.attributes.num_prices,
                "embedding_dim": self.embedding_dim, "hidden_units": self.hidden_units,
                "dropout": self.dropout, "seed": self.seed}


@tf.keras.saving.register_keras_serializable(package="recspark")
class ItemTowerScores(ItemAttributeScores):
    """User vectors [n, dim] -> logits [n, num_items]: dot products with every item tower output."""

    def __init__(self, num_items: int, num_categories: int, num_prices: int, embedding_dim: int,
                 hidden_units: Sequence[int], dropout: float, seed: int, **kwargs) -> None:
        super().__init__(num_items, num_categories, num_prices, embedding_dim, hidden_units, dropout, seed, **kwargs)
        self.mlp = mlp_layers(self.hidden_units, dropout, seed + 10, "item_tower")
        self.out = tf.keras.layers.Dense(embedding_dim, name="item_tower_out",
                                         kernel_initializer=_init.GlorotUniform(seed=seed + 20))

    def build(self, input_shape=None) -> None:
        self.attributes.build()
        self.out.build((None, build_mlp(self.mlp, self.attributes.output_width)))
        super().build(input_shape)

    def item_vectors(self, features: tf.Tensor, training=None) -> tf.Tensor:
        """Item tower: attribute features [..., 4 * dim] -> item vectors [..., dim]."""
        return self.out(apply_mlp(self.mlp, features, training))

    def call(self, user: tf.Tensor, training=None) -> tf.Tensor:
        items = self.item_vectors(self.attributes(tf.range(self.num_items)), training=training)
        return tf.matmul(user, items, transpose_b=True)


@tf.keras.saving.register_keras_serializable(package="recspark")
class UserFeatures(tf.keras.layers.Layer):
    """(history [n, L], user_vector [n, U]) -> [user_vector, masked mean of the history's item
    embeddings] [n, U + dim]: the user side both feature models start from."""

    def __init__(self, num_items: int, embedding_dim: int, seed: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_items, self.embedding_dim, self.seed = num_items, embedding_dim, seed
        self.history_embedding = tf.keras.layers.Embedding(
            num_items, embedding_dim, name="history_embedding",
            embeddings_initializer=_init.RandomUniform(-0.05, 0.05, seed=seed))

    def build(self, input_shape=None) -> None:
        self.history_embedding.build((None,))
        super().build(input_shape)

    def call(self, inputs) -> tf.Tensor:
        history, user_vector = inputs
        history = tf.cast(history, tf.int32)
        return tf.concat([tf.cast(user_vector, self.compute_dtype),
                          masked_mean(self.history_embedding(history), history)], axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_items": self.num_items, "embedding_dim": self.embedding_dim,
                "seed": self.seed}


class FeatureModel(Recommender, Functional):
    """Base of the feature models: a functional Keras model (inputs ``history`` int32 [n, L] and
    ``user_vector`` float32 [n, U], output logits [n, num_items]) built by its own constructor.

    A :class:`recspark.models.base.Recommender` (config, ``from_train_config``, ``train_step``
    around :meth:`compute_training_loss`); its ``spec`` has a ``features`` entry with
    ``user_vector_dim``, ``num_categories``, ``num_prices`` and, when built for training, the item
    ``tables``, which the config leaves out (they are weights). ``from_config`` calls the
    constructor, so ``tf.keras.models.load_model`` finds the class through its registration,
    rebuilds the same graph and loads the weights, tables included. Subclasses implement
    :meth:`head` (user features [n, U + dim] -> logits [n, num_items]) and :meth:`compute_training_loss`.

    ``Functional`` is named as a base here: otherwise Keras, seeing ``inputs`` and ``outputs``, would
    splice it into the bases of every class above, ``Recommender`` included, and so under the
    sequence models too.
    """

    NAME: ClassVar[str] = "feature_model"
    INPUTS: ClassVar[tuple[str, ...]] = (C.HISTORY, C.USER_VECTOR)
    SETTINGS: ClassVar[tuple[str, ...]] = ("embedding_dim", "hidden_units", "dropout", "negatives", "seed")

    def __init__(self, spec: dict[str, Any], settings: dict[str, Any], name: Optional[str] = None,
                 **kwargs: Any) -> None:
        tables = (spec.get("features") or {}).get("tables")
        spec, settings = self.model_config(spec, settings)
        features, num_items = spec["features"], int(spec["num_items"])
        history = tf.keras.Input(shape=(spec["max_seq_len"],), dtype="int32", name=C.HISTORY)
        user_vector = tf.keras.Input(shape=(features["user_vector_dim"],), dtype="float32", name=C.USER_VECTOR)
        user = UserFeatures(num_items, settings["embedding_dim"], settings["seed"] + 30,
                            name="user_features")([history, user_vector])
        logits = self.head(user, num_items, features, settings)
        super().__init__(spec, settings, name=name, inputs={C.HISTORY: history, C.USER_VECTOR: user_vector},
                         outputs=logits, **kwargs)
        if tables is not None:
            self.set_item_tables(ItemTables.from_dict(tables))

    @classmethod
    def model_config(cls, spec: dict[str, Any], settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The spec without the item tables (they live in the weights) and the settings, checked."""
        features = dict(spec.get("features") or {})
        features.pop("tables", None)
        missing = [key for key in ("user_vector_dim", "num_categories", "num_prices") if key not in features]
        if missing:
            raise ValueError(f"{cls.NAME} needs ModelSpec.features with {missing} (see item_tables.feature_spec)")
        spec, settings = super().model_config({**spec, "features": features}, settings)
        settings["hidden_units"] = [int(u) for u in settings["hidden_units"]]
        if int(spec["num_items"]) < 3:
            raise ValueError(f"num_items must count PAD, OOV and at least one item, got {spec['num_items']}")
        return spec, settings

    def head(self, user: tf.Tensor, num_items: int, features: dict, settings: dict) -> tf.Tensor:
        raise NotImplementedError

    @property
    def item_attributes(self) -> ItemAttributeEncoder:
        return next(layer for layer in self._flatten_layers() if isinstance(layer, ItemAttributeEncoder))

    def set_item_tables(self, tables: ItemTables) -> None:
        """Copies the per-item attribute tables into the model (non-trainable weights)."""
        self.item_attributes.set_tables(tables)

    def user_features(self, inputs: dict, training=None) -> tf.Tensor:
        """[user_vector, history encoding] [n, U + dim] for a dict of model inputs."""
        return self.get_layer("user_features")([inputs[C.HISTORY], inputs[C.USER_VECTOR]], training=training)


@tf.keras.saving.register_keras_serializable(package="recspark")
class TowersModel(FeatureModel):
    """User tower MLP and item tower MLP; logits = user vector . item vector for every item."""

    NAME = NAME
    SETTINGS = ("embedding_dim", "hidden_units", "dropout", "seed")

    def head(self, user: tf.Tensor, num_items: int, features: dict, settings: dict) -> tf.Tensor:
        seed, dim = settings["seed"], settings["embedding_dim"]
        user = apply_mlp(mlp_layers(settings["hidden_units"], settings["dropout"], seed + 40, "user_tower"), user)
        user = tf.keras.layers.Dense(dim, name="user_tower_out", kernel_initializer=_init.GlorotUniform(seed=seed + 50))(user)
        return ItemTowerScores(num_items, features["num_categories"], features["num_prices"], dim,
                               settings["hidden_units"], settings["dropout"], seed, name="item_tower")(user)

    def compute_training_loss(self, inputs: dict, target: tf.Tensor, training: bool = True) -> tf.Tensor:
        """The towers' loss, stated once: mean softmax cross-entropy of the target over all items."""
        logits = self(inputs, training=training)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(tf.reshape(target, [-1]), tf.int32), logits=logits))


def model_spec_dict(num_items: int, max_seq_len: int, user_vector_dim: int, tables: Optional[ItemTables] = None,
                    num_categories: Optional[int] = None, num_prices: Optional[int] = None) -> dict[str, Any]:
    """A ModelSpec as a dict for the feature models, for tests and callers without Spark tables."""
    tables = tables if tables is not None else ItemTables.empty(num_items)
    features = feature_spec(user_vector_dim, tables)
    features["num_categories"] = num_categories or features["num_categories"]
    features["num_prices"] = num_prices or features["num_prices"]
    return {"num_items": num_items, "max_seq_len": max_seq_len, "features": features}


def build_towers_model(num_items: int, max_seq_len: int, user_vector_dim: int, *, embedding_dim: int,
                       hidden_units: Sequence[int], dropout: float, seed: int,
                       tables: Optional[ItemTables] = None, num_categories: Optional[int] = None,
                       num_prices: Optional[int] = None) -> TowersModel:
    """A :class:`TowersModel` holding ``tables`` (default: zeros); ``num_categories`` / ``num_prices``
    (default: what the tables need) size the attribute embeddings."""
    spec = model_spec_dict(num_items, max_seq_len, user_vector_dim, tables, num_categories, num_prices)
    return TowersModel(spec, dict(embedding_dim=embedding_dim, hidden_units=hidden_units, dropout=dropout, seed=seed))
