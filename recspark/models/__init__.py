"""Model builders by name (TrainConfig.model), each ``(num_items, embedding_dim, max_seq_len, seed)``.

TensorFlow is imported lazily: Spark jobs that never train should not pay for it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import tensorflow as tf

MODEL_NAMES = ("mean_pool",)


def get_builder(name: str) -> "Callable[..., tf.keras.Model]":
    """Returns the builder of model ``name``; raises ValueError naming the known models otherwise."""
    if name == "mean_pool":
        from recspark.models.mean_pool import build_mean_pool_model

        return build_mean_pool_model
    raise ValueError(f"unknown model {name!r} (known: {', '.join(MODEL_NAMES)})")


def build_model(name: str, *, num_items: int, embedding_dim: int, max_seq_len: int, seed: int) -> "tf.keras.Model":
    return get_builder(name)(num_items=num_items, embedding_dim=embedding_dim, max_seq_len=max_seq_len, seed=seed)


def get_loss(name: str) -> "tf.keras.losses.Loss":
    """The loss model ``name`` trains with (defined next to the model)."""
    if name == "mean_pool":
        from recspark.models.mean_pool import loss

        return loss()
    raise ValueError(f"unknown model {name!r} (known: {', '.join(MODEL_NAMES)})")
