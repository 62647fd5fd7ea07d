"""Patch an unpacked horovod 0.28.1 source tree so it builds and works with TensorFlow 2.21.

Horovod is no longer maintained; its last release predates TF 2.16. Three edits, each checked
(the script fails loudly if the text it expects is missing, so a different horovod version
cannot be patched by accident):

1. ``xla_mpi_ops.cc`` includes XLA headers TF no longer ships. On a CPU build the file holds
   nothing else (its body is under ``#if HAVE_GPU``), so compile it only for GPU builds.
2. ``horovod.tensorflow.keras`` takes ``from keras import backend``: with Keras 3 installed that
   is Keras 3's backend, not tf.keras's, and the broadcast callback crashes. Use tf.keras's,
   which is tf-keras under TF_USE_LEGACY_KERAS=1.
3. ``horovod.spark.common.store`` builds a ParquetDataset with a legacy filesystem object; with
   pyarrow 14 that needs ``use_legacy_dataset=True`` (only the Spark estimator uses it).

Usage: python tools/patch_horovod.py <horovod source dir>
"""
from __future__ import annotations

import sys
from pathlib import Path

KERAS_BACKEND_OLD = "    from keras import backend as K\n"
KERAS_BACKEND_NEW = "    K = tf.keras.backend  # recspark patch: tf-keras, not Keras 3\n"

EDITS: list[tuple[str, str, str]] = [
    (
        "horovod/tensorflow/CMakeLists.txt",
        'list(APPEND TF_SOURCES "${PROJECT_SOURCE_DIR}/horovod/tensorflow/xla_mpi_ops.cc")\n',
        'if(HAVE_CUDA OR HAVE_ROCM)  # recspark patch: XLA headers gone from TF >= 2.19\n'
        '    list(APPEND TF_SOURCES "${PROJECT_SOURCE_DIR}/horovod/tensorflow/xla_mpi_ops.cc")\n'
        'endif()\n',
    ),
    ("horovod/tensorflow/keras/__init__.py", KERAS_BACKEND_OLD, KERAS_BACKEND_NEW),
    ("horovod/tensorflow/keras/callbacks.py", KERAS_BACKEND_OLD, KERAS_BACKEND_NEW),
    (
        "horovod/spark/common/store.py",
        "pq.ParquetDataset(self.get_localized_path(path), filesystem=self.fs)",
        "pq.ParquetDataset(self.get_localized_path(path), filesystem=self.fs,"
        " use_legacy_dataset=True)",
    ),
]


def patch(source_dir: Path) -> None:
    for relative, old, new in EDITS:
        path = source_dir / relative
        text = path.read_text()
        if new in text:
            print(f"already patched: {relative}")
            continue
        if text.count(old) != 1:
            raise SystemExit(f"{path}: expected exactly one occurrence of {old!r}; wrong horovod version?")
        path.write_text(text.replace(old, new))
        print(f"patched: {relative}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    patch(Path(sys.argv[1]))
