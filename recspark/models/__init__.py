"""Models by name (TrainConfig.models): ``build_model(name, spec, train)`` and what each one reads.

Every model is a :class:`recspark.models.base.Recommender`: a dict of gold columns in (``inputs``),
logits over the whole vocabulary out, and its training loss stated once in the class. The classes
are registered with Keras under the package ``recspark`` when this package is imported, so
``import recspark.models`` is all a process needs to load a saved ``model.keras``. That import
therefore imports TensorFlow: Spark jobs that never train or score do not import this package.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from recspark import constants as C
from recspark.models.spec import ModelSpec

# tf.keras must be tf-keras (Keras 2), which Horovod hooks into: decided when TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

if TYPE_CHECKING:
    import tensorflow as tf
    from pyspark.sql import SparkSession

    from recspark.config import Config, TrainConfig


def require_legacy_keras() -> None:
    """Fails unless ``tf.keras`` is tf-keras (Keras 2).

    With Keras 3, ``hvd.DistributedOptimizer`` wraps an optimizer whose training step never calls the
    methods Horovod overrides: each rank silently trains on its own gradients.
    """
    import tensorflow as tf

    module = tf.keras.Model.__module__
    if not module.startswith("tf_keras"):
        raise RuntimeError(
            f"tf.keras is {module.split('.')[0]} (tf.keras.Model from {module}), not tf-keras: Horovod would not "
            f"average gradients. Set TF_USE_LEGACY_KERAS=1 before TensorFlow is imported "
            f"(it is {os.environ.get('TF_USE_LEGACY_KERAS')!r} in this process)."
        )


def _models() -> dict[str, type]:
    """Every model class by name: exactly ``MODEL_NAMES`` (asserted at import, below)."""
    from recspark.models.dnn import DNNModel
    from recspark.models.mean_pool import MeanPool
    from recspark.models.repeatnet import RepeatNet, RepeatNetExplore, RepeatNetNextItem
    from recspark.models.sasrec import SASRec
    from recspark.models.towers import TowersModel

    return {model.NAME: model for model in (MeanPool, SASRec, TowersModel, DNNModel, RepeatNet, RepeatNetExplore,
                                            RepeatNetNextItem)}


from recspark.config import MODEL_NAMES  # noqa: E402  (the configuration checks names without TensorFlow)


def get_model_class(name: str) -> type:
    """The Recommender subclass of model ``name``; raises ValueError naming the known models otherwise."""
    models = _models()
    if name not in models:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(models)})")
    return models[name]


def model_inputs(name: str) -> list[str]:
    """The gold columns model ``name`` reads (its Keras input names), in order."""
    return list(get_model_class(name).INPUTS)


def loss_inputs(train: "TrainConfig") -> list[str]:
    """The gold columns a model's training loss reads besides its inputs and the target (never read
    to score): the shown-and-ignored items when ``train.ignored_weight`` > 0 (next-basket models)."""
    return [C.IGNORED] if train.ignored_weight > 0 else []


def model_examples_table(name: str) -> str:
    """The gold table model ``name`` trains on (:data:`recspark.constants.MODEL_EXAMPLES`)."""
    get_model_class(name)  # a clear error for an unknown name
    return C.MODEL_EXAMPLES[name]


def build_model(name: str, spec: ModelSpec, train: "TrainConfig") -> "tf.keras.Model":
    """A freshly initialised model ``name`` (seeded by ``train.seed``), ready to ``compile`` and ``fit``."""
    return get_model_class(name).from_train_config(spec, train)


def model_spec(spark: "SparkSession", config: "Config") -> ModelSpec:
    """The ModelSpec of the gold tables of ``config``: one aggregate over item_vocab.

    The per-item counts (one array of vocabulary size to the driver) are read only when the
    popularity sampler will use them; the feature models' sizes and item tables only when one of
    them is trained.
    """
    from pyspark.sql import functions as F

    from recspark import constants as C
    from recspark.models.item_tables import FEATURE_MODELS, feature_spec_from_gold
    from recspark.utils.delta import read_table

    vocab = read_table(spark, config.table_path(C.GOLD, C.ITEM_VOCAB))
    settings = [config.train.for_model(model) for model in config.train.models]  # each model's own values
    want_counts = any(s.softmax == "sampled" and s.sampler == "popularity" for s in settings)
    row = vocab.agg(
        F.max(C.ITEM_IDX).alias("max_idx"),
        F.min(C.ITEM_IDX).alias("min_idx"),
        (F.sort_array(F.collect_list(F.struct(C.ITEM_IDX, C.TRAIN_COUNT))) if want_counts else F.lit(None)).alias("counts"),
    ).collect()[0]
    num_items = int(row["max_idx"]) + 1
    first_item_idx = config.features.first_item_idx
    if row["min_idx"] != first_item_idx:  # gold built with other buckets: reserved rows would be wrong
        raise ValueError(f"gold item_vocab starts at item_idx {row['min_idx']}, features.oov_buckets="
                         f"{config.features.oov_buckets} needs {first_item_idx}: build the features again")
    counts = None
    if want_counts:
        counts = [0] * num_items
        for entry in row["counts"]:
            counts[entry[C.ITEM_IDX]] = int(entry[C.TRAIN_COUNT])
    return ModelSpec(
        num_items=num_items,
        max_seq_len=config.features.max_seq_len,
        num_event_types=len(config.ingest.event_types) + 2,
        num_gap_buckets=config.features.gap_buckets,
        item_counts=counts,
        first_item_idx=first_item_idx,
        repeat_candidates=config.features.repeat_candidates,
        features=(feature_spec_from_gold(spark, config, num_items)
                  if set(config.train.models) & set(FEATURE_MODELS) else None),
    )


# TensorFlow's native start-up lines (no GPU found) stay out of a quiet run (recspark.utils.native_log).
from recspark.utils.native_log import import_tensorflow  # noqa: E402

import_tensorflow()
# Importing the model modules registers their Keras classes (after the Keras check: under Keras 3
# the class definitions are not what Horovod needs, and the error names the fix).
require_legacy_keras()
import recspark.models.mean_pool  # noqa: E402,F401
import recspark.models.sasrec  # noqa: E402,F401
import recspark.models.towers  # noqa: E402,F401
import recspark.models.dnn  # noqa: E402,F401
import recspark.models.repeatnet  # noqa: E402,F401

assert set(_models()) == set(MODEL_NAMES), "recspark.config.MODEL_NAMES must list every model class"
