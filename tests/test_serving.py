"""The real-time model: the exported repeatnet as an MLflow pyfunc answers a user's events as the bulk
scorer answers the same user's gold serving row (items, scores, calibrated confidences, reasons),
in process, through ``mlflow.pyfunc.spark_udf`` and through ``mlflow models serve`` over HTTP; and
the pyfunc's item hashing is Spark's xxhash64."""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from conftest import save_export

from recspark import constants as C
from recspark.serving import UDF_RESULT_TYPE, xxhash64

FIRST = 66  # the default layout: unknown items go to the 64 hashed buckets
ITEMS, LENGTH, CANDIDATES, K = 30, 6, 4, 5
USERS = 6
SERVE_SECONDS = 240  # at most this long for `mlflow models serve` to answer /ping (TensorFlow loads)


def test_xxhash64_is_sparks(spark: SparkSession) -> None:
    ids = ["", "a", "1082185", "item-42", "x" * 7, "y" * 31, "long id " * 9, "é €"]
    got = {r["i"]: r["h"] for r in spark.createDataFrame([(i,) for i in ids], "i string")
           .select("i", F.xxhash64("i").alias("h")).collect()}
    assert {i: xxhash64(i.encode("utf-8")) for i in ids} == got


def _events(spark: SparkSession) -> DataFrame:
    """Six users' purchases and views in baskets over 40 days; a few items outside the vocabulary."""
    rng = np.random.default_rng(5)
    start = dt.datetime(2026, 10, 1, 8, 0)
    rows, n = [], 0
    for u in range(USERS):
        at = start
        for basket in range(int(rng.integers(2, 6))):
            at += dt.timedelta(days=int(rng.integers(1, 9)), minutes=int(rng.integers(0, 600)))
            for line in range(int(rng.integers(1, 4))):
                item = f"item-{int(rng.integers(0, 12)) if u % 2 else int(rng.integers(0, ITEMS))}"
                if rng.random() < 0.1:
                    item = f"new-{int(rng.integers(0, 50))}"  # not in the vocabulary: a hashed bucket
                kind = "view" if rng.random() < 0.2 else "purchase"
                rows.append((f"e{n}", f"p{u}", item, kind, at + dt.timedelta(minutes=line), f"p{u}-b{basket}",
                             "events.csv", n, "train"))
                n += 1
    return spark.createDataFrame(rows, "event_id string, user_id string, item_id string, event_type string, "
                                       "event_ts timestamp, session_id string, source_file string, source_row long, "
                                       "split string")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, events: pd.DataFrame) -> pd.DataFrame:
    payload = {"dataframe_split": json.loads(events.to_json(orient="split", index=False, date_format="iso"))}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return pd.DataFrame(json.loads(answer.read())["predictions"])


def test_served_pyfunc_answers_as_the_bulk_job(spark: SparkSession, tmp_path: Path) -> None:
    import mlflow.pyfunc

    from recspark.calibration import Calibration
    from recspark.config import (Config, EvaluateConfig, FeaturesConfig, PathsConfig, ScoreConfig, TrainConfig)
    from recspark.models import ModelSpec, build_model
    from recspark.models.warm_start import save_vocabularies
    from recspark.pipeline.features import build_sequences, serving_histories, with_item_idx
    from recspark.recommendations import popular_items, with_reasons
    from recspark.scoring import recommend_indices
    from recspark.serving import export_pyfunc

    config = Config(paths=PathsConfig(lakehouse=str(tmp_path / "lake"), checkpoints=str(tmp_path / "ck"),
                                      reports=str(tmp_path / "reports")),
                    features=FeaturesConfig(max_seq_len=LENGTH, repeat_candidates=CANDIDATES),
                    train=TrainConfig(models=["repeatnet"]), evaluate=EvaluateConfig(exclude_seen=False),
                    score=ScoreConfig(k=K, item_block=8, batch_size=2, min_confidence=0.12))
    num_items = FIRST + ITEMS
    vocab = spark.createDataFrame([(f"item-{i}", FIRST + i) for i in range(ITEMS)], "item_id string, item_idx int")
    sequences = build_sequences(with_item_idx(_events(spark), vocab)).persist()
    # The serving side's sequences (no item new since the training period here: the same indices).
    sequences.write.format("delta").save(config.table_path(C.GOLD, C.SERVING_SEQUENCES))
    out_of_stock = {FIRST + 3, FIRST + 17}
    item_features = spark.createDataFrame(
        [(FIRST + i, f"cat{i % 3}", 0 if FIRST + i in out_of_stock else 4, 60 - i) for i in range(ITEMS)],
        "item_idx int, category string, stock long, events_all long")
    item_features.write.format("delta").save(config.table_path(C.GOLD, "item_features"))

    model = build_model("repeatnet", ModelSpec(num_items=num_items, max_seq_len=LENGTH, num_event_types=5,
                                               num_gap_buckets=config.features.gap_buckets + 1, first_item_idx=FIRST,
                                               repeat_candidates=CANDIDATES),
                        TrainConfig(embedding_dim=8, num_layers=1, num_heads=2, dropout=0.0, seed=4))
    model_dir = save_export(config.model_dir("repeatnet"), model, num_items, LENGTH)
    save_vocabularies(model_dir, vocab, None)
    # A calibration already fitted for this training run (the stage would fit it on validation).
    calibration = Calibration(boundaries=(0.0, 0.3), predictions=(0.05, 0.6), model_run_id="train-1",
                              reliability_validation=((0, 1, 0.05, 0.0),))
    calibration.save(model_dir)
    path = export_pyfunc(spark, config, "repeatnet", model_dir, "train-1")
    assert path == model_dir / "pyfunc" and (path / "MLmodel").exists()

    # The bulk job's answer: gold serving rows through the Spark scorer, reasons as the score stage gives them.
    serving = serving_histories(sequences, config.features, config.ingest.event_types)
    top = recommend_indices(serving, str(model_dir), K, False, 2, never_recommend=sorted(out_of_stock), item_block=8,
                            keep=[C.REPEAT_ITEMS, C.REPEAT_FEATURES], calibration=calibration,
                            min_confidence=config.score.min_confidence)
    bulk_rows = (with_reasons(top, popular_items(item_features, FIRST)).join(vocab, C.ITEM_IDX)
                 .select(C.USER_ID, C.RANK, C.ITEM_ID, C.SCORE, C.CONFIDENCE, C.REASON).collect())
    bulk: dict[str, list] = {}
    for r in sorted(bulk_rows, key=lambda r: (r[C.USER_ID], r[C.RANK])):
        bulk.setdefault(r[C.USER_ID], []).append((r[C.ITEM_ID], r[C.SCORE], r[C.CONFIDENCE], r[C.REASON]))
    assert len(bulk) == USERS and any(reason.startswith("bought") for rows in bulk.values() for *_, reason in rows)
    assert any(len(rows) < K for rows in bulk.values())  # the threshold cut some lists

    def check(user: str, items, scores, confidences, reasons) -> None:
        expected = bulk[user]
        assert list(items) == [e[0] for e in expected], user
        np.testing.assert_allclose(scores, [e[1] for e in expected], atol=1e-4)
        np.testing.assert_allclose(confidences, [e[2] for e in expected], atol=1e-5)
        assert list(reasons) == [e[3] for e in expected], user

    # Each user's raw events (from the gold sequences, all of them, in their order) as the caller sends them.
    steps = sequences.select(C.USER_ID, F.explode(F.arrays_zip(C.ITEM_ID, C.EVENT_TYPE, C.EVENT_TS, C.SESSION_ID))
                             .alias("s")).select(C.USER_ID, "s.*").toPandas()
    loaded = mlflow.pyfunc.load_model(str(path))
    answer = loaded.predict(steps)
    for user, rows in answer.groupby(C.USER_ID):
        assert list(rows[C.RANK]) == list(range(1, len(rows) + 1))
        check(user, rows[C.ITEM_ID], rows[C.SCORE], rows[C.CONFIDENCE], rows[C.REASON])
    assert set(answer[C.USER_ID]) == set(bulk)

    # spark_udf: a row per user, each event column a list.
    udf = mlflow.pyfunc.spark_udf(spark, str(path), result_type=UDF_RESULT_TYPE, env_manager="local")
    per_user = sequences.select(C.USER_ID, udf(F.struct(C.USER_ID, C.ITEM_ID, C.EVENT_TYPE, C.EVENT_TS,
                                                        C.SESSION_ID)).alias("top")).collect()
    assert len(per_user) == USERS
    for r in per_user:
        check(r[C.USER_ID], r["top"]["item_ids"], r["top"]["scores"], r["top"]["confidences"], r["top"]["reasons"])

    # mlflow models serve on localhost, real HTTP requests: one per user, bounded in count and time.
    port = _free_port()
    # MLflow starts `uvicorn` by name: the venv's bin goes first on PATH.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "TF_USE_LEGACY_KERAS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", str(path),
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVE_SECONDS
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5):
                    break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"mlflow models serve exited: {server.stderr.read().decode()[-2000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"mlflow models serve did not answer /ping within {SERVE_SECONDS} s")
                time.sleep(1)
        for user in sorted(bulk)[:4]:
            events = steps[steps[C.USER_ID] == user]
            rows = _post(port, events)
            check(user, rows[C.ITEM_ID], rows[C.SCORE], rows[C.CONFIDENCE], rows[C.REASON])
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
        server.wait(timeout=30)
