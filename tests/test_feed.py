"""The Petastorm feed hands every row to exactly one Horovod shard."""
from __future__ import annotations

import numpy as np
from pyspark.sql import functions as F

from recspark.constants import HISTORY, HISTORY_TYPES, TARGET
from recspark.feed import make_converter, open_shard, to_features_and_label

ROWS = 300
MAX_SEQ_LEN = 4


def _read_ids(converter, rank: int, size: int) -> list[int]:
    with open_shard(converter, rank=rank, size=size, batch_size=32, num_epochs=1, workers_count=1) as dataset:
        return [int(i) for batch in dataset for i in batch.id.numpy()]


def test_two_shards_partition_the_rows(spark, tmp_path):
    df = spark.range(ROWS).select(
        F.col("id").cast("int").alias("id"),
        F.array(*[((F.col("id") + i) % 7).cast("int") for i in range(MAX_SEQ_LEN)]).alias(HISTORY),
        F.array(*[((F.col("id") + i) % 3 + 1).cast("int") for i in range(MAX_SEQ_LEN)]).alias(HISTORY_TYPES),
        (F.col("id") % 5 + 1).cast("int").alias(TARGET),
    )
    converter = make_converter(spark, df, tmp_path.as_uri(), num_files=2)
    try:
        assert len(converter) == ROWS
        shard0, shard1 = _read_ids(converter, 0, 2), _read_ids(converter, 1, 2)
        assert len(shard0) == len(set(shard0)) and len(shard1) == len(set(shard1)), "a row came twice"
        assert set(shard0).isdisjoint(shard1), "a row went to both shards"
        assert set(shard0) | set(shard1) == set(range(ROWS)), "a row went to no shard"
        assert shard0 and shard1, "a shard was empty"

        # The training map gives Keras exactly the declared input columns, with the static shapes
        # and int32 it needs, and the target.
        convert = to_features_and_label(MAX_SEQ_LEN, [HISTORY, HISTORY_TYPES])
        with open_shard(converter, rank=0, size=2, batch_size=8, num_epochs=1, workers_count=1) as dataset:
            (features, target), ids = next(iter(dataset.map(lambda batch: (convert(batch), batch.id))))
        assert sorted(features) == [HISTORY, HISTORY_TYPES]
        for name in (HISTORY, HISTORY_TYPES):
            assert features[name].shape == (8, MAX_SEQ_LEN) and features[name].dtype.name == "int32"
        assert target.shape == (8,) and target.dtype.name == "int32"
        # Values pass through unchanged and aligned: each row's types are (id + step) % 3 + 1.
        expected_types = (ids.numpy()[:, None] + np.arange(MAX_SEQ_LEN)) % 3 + 1
        np.testing.assert_array_equal(features[HISTORY_TYPES].numpy(), expected_types)
    finally:
        converter.delete()
    assert not any(tmp_path.iterdir()), "converter.delete() left the materialised data behind"
