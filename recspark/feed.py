"""Petastorm feed: a Spark DataFrame materialised once as Parquet, read back as sharded tf.data.

The driver calls :func:`make_converter`; the converter (a small picklable object holding Parquet
file URLs) travels to the Horovod workers, where :func:`open_shard` opens that worker's shard and
:func:`training_batches` turns it into ``({input column: values}, target)`` batches for
``Model.fit``, with exactly the columns the model declares (``recspark.models.model_inputs``).

Petastorm shards by Parquet row group (``row_group_index % shard_count == cur_shard``), so a shard
with no row group is an error at open time and a shard with fewer rows simply sees them more
often: :func:`make_converter` therefore writes at least one non-empty file per shard.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

from pyspark.sql import DataFrame, SparkSession

from recspark.constants import FLOAT_INPUTS, HISTORY, HISTORY_GAPS, HISTORY_TYPES, TARGET

SEQUENCE_INPUTS = (HISTORY, HISTORY_TYPES, HISTORY_GAPS)

if TYPE_CHECKING:
    import numpy as np
    import tensorflow as tf
    from petastorm.spark import SparkDatasetConverter


def make_converter(
    spark: SparkSession, df: DataFrame, cache_url: str, *, num_files: Optional[int] = None
) -> "SparkDatasetConverter":
    """Materialises ``df`` as Parquet under ``cache_url`` (a ``file://`` URL) and returns its converter.

    ``num_files`` (e.g. the number of Horovod processes) repartitions ``df`` first so that each shard
    gets at least one file, hence one row group. The caller must ``converter.delete()`` when done
    (Petastorm only deletes at interpreter exit).
    """
    from petastorm.spark import SparkDatasetConverter, make_spark_converter

    if not cache_url.startswith("file:"):
        raise ValueError(f"cache_url must be a file:// URL, got {cache_url!r}")
    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, cache_url)
    if num_files is not None:
        if num_files < 1:
            raise ValueError(f"num_files must be >= 1, got {num_files}")
        # Round-robin repartition: every file is non-empty as long as there are >= num_files rows.
        df = df.repartition(num_files)
    # dtype=None: keep the int columns (and any float ones) exactly as the gold stage wrote them.
    return make_spark_converter(df, dtype=None)


@contextlib.contextmanager
def open_shard(
    converter: "SparkDatasetConverter",
    *,
    rank: int,
    size: int,
    batch_size: int,
    num_epochs: Optional[int] = None,
    shuffling_queue_capacity: int = 0,
    workers_count: int = 2,
    seed: Optional[int] = None,
) -> Iterator["tf.data.Dataset"]:
    """Opens shard ``rank`` of ``size`` as a tf.data.Dataset of Petastorm row batches (namedtuples).

    ``num_epochs=None`` repeats forever: with Horovod every rank must run the same number of steps,
    and shards differ in size, so training bounds epochs by ``steps_per_epoch`` instead.
    ``shuffling_queue_capacity=0`` and ``seed`` with one worker give a deterministic order.
    """
    kwargs = {"seed": seed} if seed is not None else {}
    with converter.make_tf_dataset(
        batch_size=batch_size,
        cur_shard=rank,
        shard_count=size,
        num_epochs=num_epochs,
        shuffling_queue_capacity=shuffling_queue_capacity or None,
        workers_count=workers_count,
        **kwargs,
    ) as dataset:
        yield dataset


def to_features_and_label(max_seq_len: int, inputs: Sequence[str]):
    """Returns a tf.data map function: Petastorm row batch -> ({column: int32 [n, L]}, target int32)
    for the sequence columns ``inputs`` (the model's Keras input names). The target is [n] (one next
    item) or [n, B] (a next basket, padded with PAD: ``train_baskets``)."""
    import tensorflow as tf

    names = list(inputs)

    def convert(batch):
        # Petastorm leaves the list columns' length unknown; Keras needs the static max_seq_len.
        features = {name: tf.ensure_shape(tf.cast(getattr(batch, name), tf.int32), [None, max_seq_len])
                    for name in names if name in SEQUENCE_INPUTS}
        # Fixed-length arrays of their own: user_vector and repeat features (floats), repeat_items.
        features.update({name: tf.cast(getattr(batch, name), tf.float32 if name in FLOAT_INPUTS else tf.int32)
                         for name in names if name not in SEQUENCE_INPUTS})
        return features, tf.cast(getattr(batch, TARGET), tf.int32)

    return convert


@contextlib.contextmanager
def training_batches(
    converter: "SparkDatasetConverter",
    *,
    rank: int,
    size: int,
    batch_size: int,
    max_seq_len: int,
    inputs: Sequence[str],
    shuffling_queue_capacity: int = 0,
    workers_count: int = 2,
    seed: Optional[int] = None,
) -> Iterator["tf.data.Dataset"]:
    """This worker's shard as endless ``({inputs}, target)`` batches, for ``fit(steps_per_epoch=...)``."""
    import tensorflow as tf

    with open_shard(
        converter, rank=rank, size=size, batch_size=batch_size, num_epochs=None,
        shuffling_queue_capacity=shuffling_queue_capacity, workers_count=workers_count, seed=seed,
    ) as dataset:
        yield dataset.map(to_features_and_label(max_seq_len, inputs), num_parallel_calls=tf.data.AUTOTUNE)


def read_rows(converter: "SparkDatasetConverter", columns: Sequence[str]) -> dict[str, "np.ndarray"]:
    """Every row of the materialised data (all shards, in file order) as numpy arrays, one per
    column, with the dtypes :func:`to_features_and_label` gives the model: list columns of equal
    length as 2-D arrays, ``FLOAT_INPUTS`` float32, other numbers int32, strings (a user id) as they
    are. For DP-SGD (:mod:`recspark.models.dp_sgd`), whose user sampling needs random access to a
    user's rows, which a streamed shard cannot give; each training process holds a copy."""
    from urllib.parse import urlparse

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table([urlparse(url).path for url in sorted(converter.file_urls)], columns=list(columns))
    arrays = {}
    for name in columns:
        column = table.column(name).combine_chunks()
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            lengths = np.unique(column.value_lengths().to_numpy(zero_copy_only=False))
            if len(lengths) > 1:
                raise ValueError(f"column {name!r}: lists of different lengths {lengths.tolist()}")
            values = column.flatten().to_numpy(zero_copy_only=False)
            values = values.reshape(len(column), int(lengths[0]) if len(lengths) else 0)
        else:
            values = column.to_numpy(zero_copy_only=False)
        if values.dtype.kind in "iuf":
            values = values.astype(np.float32 if name in FLOAT_INPUTS else np.int32)
        arrays[name] = values
    return arrays
