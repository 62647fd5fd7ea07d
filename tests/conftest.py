"""One session-scoped local SparkSession for every test: local[2], few shuffle partitions, UI off."""
from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

# gold serving_histories as repeatnet's scorer reads it (hand-made in the score stage's tests).
SERVING_HISTORIES_SCHEMA = ("user_id string, history array<int>, history_types array<int>, history_gaps array<int>, "
                            "seen_idx array<int>, repeat_items array<int>, repeat_features array<float>")


# The tests' tables have tens of rows: compiling generated code for every plan costs more than it
# saves, and interpreted evaluation (Spark's own test switch) gives the same results. The features
# stage of test_pipeline's shop: 93 s -> 68 s; the end-to-end cluster run (tests/cluster_run.py, which
# uses it too): 569 s -> 490 s. Generated code runs in make run and bench/.
INTERPRETED_EVALUATION = {"spark.sql.codegen.wholeStage": "false", "spark.sql.codegen.factoryMode": "NO_CODEGEN"}


@pytest.fixture(scope="session")
def spark():
    from recspark.config import SparkConfig
    from recspark.session import get_spark

    session = get_spark(
        SparkConfig(
            master="local[2]",
            app_name="recspark-tests",
            shuffle_partitions=2,
            driver_memory="4g",
            extra={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
                   "spark.sql.adaptive.coalescePartitions.enabled": "false", **INTERPRETED_EVALUATION},
        )
    )
    yield session
    process = _jvm_process()
    if process is None or process.poll() is None:  # a dead JVM is reported by spark_jvm_alive
        session.stop()


def _jvm_process():
    """The Spark JVM this Python process started (PySpark keeps its Popen), or None."""
    from pyspark import SparkContext

    return getattr(getattr(SparkContext._active_spark_context, "_gateway", None), "proc", None)


# Spark's exit codes that say why its JVM left (org.apache.spark.util.SparkExitCode), and the signals.
JVM_EXITS = {0: "it exited normally: its stdin (the pipe from this Python process) closed, or System.exit(0)",
             50: "an uncaught exception", 52: "java.lang.OutOfMemoryError (the driver's heap, spark.driver.memory)",
             -9: "SIGKILL: the kernel's out-of-memory killer, or another process", 137: "SIGKILL",
             143: "SIGTERM from another process", 130: "SIGINT", 129: "SIGHUP"}


@pytest.fixture(autouse=True)
def spark_jvm_alive(request):
    """Stops the whole run, saying why, when the tests' Spark JVM has gone: otherwise every later test
    fails with py4j's 'Connection refused' and the one line that matters is lost among hundreds (a CI
    run on 2026-12-04 lost its JVM this way and told nothing more)."""
    yield
    process = _jvm_process()
    if process is None or process.poll() is None:
        return
    import psutil

    memory = psutil.virtual_memory()
    code = process.returncode
    # What the JVM wrote to stderr while this test ran: pytest captured it (setup and call are in
    # the item's report sections, teardown still in the capture), and a passing test's is not shown.
    capture = request.config.pluginmanager.getplugin("capturemanager")
    stderr = [text for _, key, text in getattr(request.node, "_report_sections", []) if key == "stderr"]
    stderr.append(capture.read_global_capture().err if capture is not None else "")
    last_words = "".join(stderr)[-3000:]
    pytest.exit(f"the tests' Spark JVM (pid {process.pid}) ended during or before {request.node.nodeid}: "
                f"exit code {code}, {JVM_EXITS.get(code, 'see its stderr')}; memory available now "
                f"{memory.available >> 20} MB of {memory.total >> 20} MB. The test's stderr ends:\n{last_words}",
                returncode=3)


def save_export(folder, model, num_items: int, max_seq_len: int):
    """Saves ``model`` to ``folder`` as the train stage exports it (model.keras and the model_meta.json
    the scorer reads), for tests that score a model built in place; returns the folder."""
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    (folder / "model_meta.json").write_text(json.dumps({"num_items": num_items, "max_seq_len": max_seq_len,
                                                        "inputs": list(model.INPUTS)}))
    return folder


def next_item_examples(spark, rows: int, max_seq_len: int, real_items: int, *, first_item: int,
                       event_types: int = 0, gap_buckets: int = 0, seed: int = 5):
    """Distinct (history, target) rows for the Horovod training tests: mostly one item repeated behind
    some padding, the target is the next item, so a model that learns at all gets the loss down.
    Item i is index ``first_item + i`` (the caller's layout).

    The rows must be distinct. Spark's round-robin repartition sorts rows first, so copies of a
    row alternate between files: with few distinct rows both shards hold the same rows in the
    same order, ranks see identical batches, and non-averaged gradients would go unnoticed.
    With `event_types` and `gap_buckets` every row also gets event types and time-gap buckets
    aligned with its history (0 on padding), the gold columns sasrec reads; they are drawn after
    the rows, so the (history, target) pairs do not depend on them.
    """
    import numpy as np

    from recspark.constants import HISTORY, HISTORY_GAPS, HISTORY_TYPES, PAD_IDX, TARGET

    rng = np.random.default_rng(seed)
    distinct: set[tuple[tuple[int, ...], int]] = set()
    while len(distinct) < rows:
        item = int(rng.integers(real_items))
        length = int(rng.integers(2, max_seq_len + 1))
        items = [int(rng.integers(real_items)) if rng.random() < 0.3 else item for _ in range(length)]
        history = [PAD_IDX] * (max_seq_len - length) + [i + first_item for i in items]
        distinct.add((tuple(history), (item + 1) % real_items + first_item))
    if not event_types:
        return spark.createDataFrame([(list(h), t) for h, t in sorted(distinct)], f"{HISTORY} array<int>, {TARGET} int")
    data = []
    for history, target in sorted(distinct):
        real = [step != PAD_IDX for step in history]
        types = [int(rng.integers(1, event_types + 1)) if r else 0 for r in real]
        gaps = [1 + min(gap_buckets - 1, max_seq_len - 1 - i) if r else 0 for i, r in enumerate(real)]
        data.append((list(history), types, gaps, target))
    return spark.createDataFrame(
        data, f"{HISTORY} array<int>, {HISTORY_TYPES} array<int>, {HISTORY_GAPS} array<int>, {TARGET} int")


def save_untrained_repeatnet(folder, *, num_items: int, length: int, candidates: int, first_item: int):
    """A freshly initialised (seeded) repeatnet saved in ``folder`` as the train stage exports one
    (model.keras, model_meta.json), for tests of the score stage that need no training. Returns it."""
    from recspark.config import TrainConfig
    from recspark.models import ModelSpec, build_model

    model = build_model("repeatnet", ModelSpec(num_items=num_items, max_seq_len=length, num_event_types=5,
                                               num_gap_buckets=4, first_item_idx=first_item,
                                               repeat_candidates=candidates),
                        TrainConfig(embedding_dim=8, num_layers=1, num_heads=2, dropout=0.0, seed=1))
    save_export(folder, model, num_items, length)
    return model
