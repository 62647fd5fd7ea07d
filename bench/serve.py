"""Real-time benchmark: p50 / p99 latency of one request to the served pyfunc, against the same call in process.

A generated ``repeatnet`` (``--dim`` 64 dimensions, the default reserved layout, ``--items`` items)
exported as the recspark MLflow pyfunc (recspark.serving.save_pyfunc), served by ``mlflow models
serve --env-manager local`` on localhost. One request = one user's ``--events`` recent events (in
baskets, JSON ``dataframe_split``), answered with the top ``--k`` items, scores, calibrated-looking
confidences and reasons. After ``--warmup`` requests, ``--requests`` requests are sent one after
another (each with another generated user) and timed from send to parsed answer. Baseline: the
same users through the loaded pyfunc's ``predict`` in this process (no HTTP, no JSON).

The last line is ``ratio=<p50 served / p50 in process>``: what HTTP, JSON and the server add.

    .venv/bin/python bench/serve.py [--items 100000] [--requests 200]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from _common import REPO, Interrupted, load_line, print_header, raise_on_termination  # noqa: E402

sys.path.insert(0, str(REPO))
FIRST = 66


def save_export(folder: Path, items: int, dim: int, length: int, candidates: int) -> Path:
    """A repeatnet over FIRST + ``items`` indices with its vocabulary, saved as the scorer loads it."""
    from recspark.config import TrainConfig
    from recspark.models import ModelSpec, build_model

    num_items = FIRST + items
    model = build_model("repeatnet", ModelSpec(num_items=num_items, max_seq_len=length, num_event_types=5,
                                               num_gap_buckets=17, first_item_idx=FIRST, repeat_candidates=candidates),
                        TrainConfig(embedding_dim=dim, num_layers=1, num_heads=2, dropout=0.0, seed=7))
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    (folder / "model_meta.json").write_text(json.dumps({"num_items": num_items, "max_seq_len": length,
                                                        "inputs": list(model.INPUTS)}))
    vocab = folder / "vocab" / "item_vocab.parquet"
    vocab.mkdir(parents=True)
    pd.DataFrame({"item_id": [f"item-{i}" for i in range(items)],
                  "item_idx": np.arange(FIRST, num_items, dtype=np.int32)}).to_parquet(vocab / "part-0.parquet")
    return folder


def user_events(rng: np.random.Generator, user: str, events: int, items: int) -> pd.DataFrame:
    """``events`` purchases of one user in baskets of about 5 over the last months, ISO times."""
    start = pd.Timestamp("2026-09-01T08:00:00Z")
    offsets = np.sort(rng.integers(0, 90 * 24 * 60, events))
    return pd.DataFrame({"user_id": user, "item_id": [f"item-{i}" for i in rng.zipf(1.3, events) % items],
                         "event_type": "purchase",
                         "event_ts": [(start + pd.Timedelta(minutes=int(m))).isoformat() for m in offsets],
                         "session_id": [f"{user}-{i // 5}" for i in range(events)]})


def post(port: int, events: pd.DataFrame) -> list:
    payload = json.dumps({"dataframe_split": json.loads(events.to_json(orient="split", index=False))}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", payload,
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())["predictions"]


def percentiles(seconds: list[float]) -> str:
    ms = np.asarray(seconds) * 1000
    return f"p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms, mean {ms.mean():.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--length", type=int, default=50, help="max_seq_len")
    parser.add_argument("--candidates", type=int, default=64, help="repeat candidates")
    parser.add_argument("--events", type=int, default=60, help="events per request (one user)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--start-seconds", type=float, default=300, help="at most this long for the server to start")
    args = parser.parse_args()
    raise_on_termination()
    print_header("bench/serve.py")
    print(f"repeatnet, {args.items:,} items (+{FIRST} reserved), dim {args.dim}, {args.events} events per request, "
          f"top {args.k}, {args.requests} requests after {args.warmup} warm-up", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    server = None
    try:
        import mlflow.pyfunc

        from recspark.serving import save_pyfunc

        export = save_export(work / "export", args.items, args.dim, args.length, args.candidates)
        settings = {"k": args.k, "exclude_seen": False, "min_confidence": 0.0, "never": [],
                    "event_types": ["view", "cart", "purchase"], "gap_buckets": 16, "max_seq_len": args.length,
                    "repeat_candidates": args.candidates, "first_item": FIRST, "oov_buckets": 64, "batch_size": 512,
                    "item_block": 4096}
        path = save_pyfunc(work / "pyfunc", export, settings)
        rng = np.random.default_rng(1)
        users = [user_events(rng, f"u{n}", args.events, args.items) for n in range(args.warmup + args.requests)]

        loaded = mlflow.pyfunc.load_model(str(path))
        local = []
        for n, events in enumerate(users):
            started = time.perf_counter()
            loaded.predict(events)
            if n >= args.warmup:
                local.append(time.perf_counter() - started)
        print(f"in process (pyfunc predict): {percentiles(local)}", flush=True)

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(REPO),  # MLflow starts `uvicorn` by name: the venv's bin first
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        started = time.perf_counter()
        server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", str(path),
                                   "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.perf_counter() - started > args.start_seconds:
                    raise RuntimeError("mlflow models serve did not start")
                time.sleep(0.5)
        print(f"server answering /ping after {time.perf_counter() - started:.1f} s", flush=True)
        served = []
        for n, events in enumerate(users):
            started = time.perf_counter()
            answer = post(port, events)
            if n >= args.warmup:
                served.append(time.perf_counter() - started)
            assert 0 < len(answer) <= args.k
        print(f"served (HTTP, one request at a time): {percentiles(served)}", flush=True)
        print(load_line("after"))
        print(f"ratio={np.percentile(served, 50) / np.percentile(local, 50):.3f}")
    except Interrupted as stop:
        print(f"stopped by {stop}", flush=True)
    finally:
        if server is not None:
            if server.poll() is None:
                os.killpg(server.pid, 15)
            server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
