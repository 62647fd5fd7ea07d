"""The pseudonym key stays out of everything a run publishes: query plans, Spark event logs, MLflow.

Pseudonyms are compared with Python's ``hmac`` module (the definition, not the code under test), and
"the key" covers every form of it a plan could show: its text, hex and base64, the padded key and
the two XOR pads of RFC 2104 (which the key follows from). The identity map's AES key, derived from
it by HKDF (RFC 5869, recomputed here with ``hmac``), is held to the same standard: its forms are
part of every check.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pyspark.serializers import CloudPickleSerializer
from pyspark.sql import SparkSession

from recspark.pipeline import privacy
from recspark.pipeline.privacy import (
    IDENTITY_KEY_INFO, broadcast_key, decrypt_id, decrypt_udf, encrypt_id, encrypt_udf, hmac_sha256, hmac_udf,
    pseudonymise,
)

KEY = b"plan-test-key-7f4c1d9e2b6a0c83"
LONG_KEY = bytes(range(32, 127))  # longer than a SHA-256 block: RFC 2104 hashes it first
IDS = ["1001", "alice", "", "Zo\u00eb", "\u7528\u6237-7", "\U0001f642 smile", " padded ", None]


def expected_pseudonym(key: bytes, raw: str | None) -> str | None:
    """Today's pseudonym by definition: u_ + the first 24 hex characters of HMAC-SHA256(key, UTF-8 id)."""
    return None if raw is None else "u_" + hmac.new(key, raw.encode("utf-8"), hashlib.sha256).hexdigest()[:24]


def hkdf_sha256(secret: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 with no salt (a block of zeros), by its definition."""
    prk = hmac.new(b"\0" * 32, secret, hashlib.sha256).digest()
    blocks, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        blocks += block
    return blocks[:length]


def identity_key(key: bytes) -> bytes:
    return hkdf_sha256(key, IDENTITY_KEY_INFO)


def key_forms(key: bytes) -> dict[str, str]:
    """Every text a plan, log or pickle could hold the key as, lower-cased (haystacks are lowered too);
    with the identity map's key derived from it, as bytes, hex and base64."""
    block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
    inner, outer = bytes(b ^ 0x36 for b in block), bytes(b ^ 0x5C for b in block)
    forms = {"key": key, "padded key": block, "inner pad": inner, "outer pad": outer,
             # the part of each pad that depends on the key (the rest is the constant)
             "inner pad (key part)": inner[:len(key)], "outer pad (key part)": outer[:len(key)]}
    forms["identity map key"] = identity_key(key)
    texts = {}
    for name, value in forms.items():
        texts[f"{name} hex"] = value.hex()
        texts[f"{name} base64"] = base64.b64encode(value).decode()
        texts[f"{name} as text"] = value.rstrip(b"\0").decode("latin-1")
    return {name: text.lower() for name, text in texts.items()}


def leaks(haystack: str | bytes, key: bytes = KEY) -> list[str]:
    text = (haystack.decode("latin-1") if isinstance(haystack, bytes) else haystack).lower()
    return [name for name, form in key_forms(key).items() if form in text]


def test_the_leak_check_finds_a_key_where_there_is_one() -> None:
    # The check itself must be able to fail: the key, its hex and a pad as Spark prints binary.
    pad = bytes(b ^ 0x36 for b in KEY.ljust(64, b"\0"))
    assert leaks(f"x {KEY.decode()} y") and leaks(KEY.hex().upper()) and leaks("X'" + pad.hex().upper() + "'")
    assert not leaks("u_0123456789abcdef01234567")
    assert leaks(base64.b64encode(identity_key(KEY))) == ["identity map key base64"]


def test_hkdf_by_definition_matches_rfc_5869_test_case_3() -> None:
    # RFC 5869 appendix A.3 (SHA-256, no salt, no info): the reference implementation above is right.
    okm = hkdf_sha256(bytes([0x0B] * 22), b"", 42)
    assert okm.hex() == ("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
                         "9d201395faa4b61a96c8")


def test_pseudonyms_are_todays_hmac_for_unicode_empty_and_null_ids(spark: SparkSession) -> None:
    df = spark.createDataFrame([(i, raw) for i, raw in enumerate(IDS)], "i int, u string")
    for key in (KEY, LONG_KEY, b"k"):
        got = [row[0] for row in df.orderBy("i").select(pseudonymise("u", key)).collect()]
        assert got == [expected_pseudonym(key, raw) for raw in IDS], key
    full = [row[0] for row in df.orderBy("i").select(hmac_sha256("u", KEY)).collect()]
    assert full == [None if raw is None else hmac.new(KEY, raw.encode(), hashlib.sha256).hexdigest() for raw in IDS]


def test_one_broadcast_key_serves_several_columns(spark: SparkSession) -> None:
    shared = broadcast_key(KEY)
    row = spark.createDataFrame([("a", "b")], "x string, y string").select(
        pseudonymise("x", shared), pseudonymise("y", shared)).first()
    assert list(row) == [expected_pseudonym(KEY, "a"), expected_pseudonym(KEY, "b")]


def test_the_key_is_in_no_query_plan(spark: SparkSession, capsys: pytest.CaptureFixture) -> None:
    df = spark.createDataFrame([("alice",)], "u string").select(pseudonymise("u", KEY).alias("p"))
    capsys.readouterr()
    for mode in ("extended", "formatted", "cost", "codegen"):
        df.explain(mode)
    plans = capsys.readouterr().out
    assert leaks(plans) == []
    assert "hmac_sha256_hex" in plans  # the plans were printed, and show the UDF by its name only
    assert leaks(df._jdf.queryExecution().toString()) == []


def test_the_identity_key_is_in_no_query_plan(spark: SparkSession, capsys: pytest.CaptureFixture) -> None:
    secret = identity_key(KEY)
    sealed = spark.createDataFrame([("alice", "u_1")], "u string, p string").select(
        encrypt_id("u", "p", secret).alias("c"), "p")
    opened = sealed.select(decrypt_id("c", "p", secret).alias("u"))
    capsys.readouterr()
    for mode in ("extended", "formatted", "cost", "codegen"):
        opened.explain(mode)
    plans = capsys.readouterr().out
    assert "aes_gcm_encrypt" in plans and "aes_gcm_decrypt" in plans
    assert leaks(plans) == [] and leaks(opened._jdf.queryExecution().toString()) == []
    assert opened.first()["u"] == "alice"


def test_the_pickled_udf_holds_the_broadcast_not_the_key(spark: SparkSession) -> None:
    shared = broadcast_key(KEY)
    udf = hmac_udf(shared)
    # What PySpark ships with the plan: the pickled (function, return type).
    command = CloudPickleSerializer().dumps((udf.func, udf.returnType))
    assert leaks(command) == []
    for make in (encrypt_udf, decrypt_udf):
        sealing = make(broadcast_key(identity_key(KEY)))
        assert leaks(CloudPickleSerializer().dumps((sealing.func, sealing.returnType))) == []
    # The same check catches a UDF that captures the key itself.
    captured = KEY
    assert "key as text" in leaks(CloudPickleSerializer().dumps(lambda s: captured))


# --- A Spark event log of a whole prepare run ---------------------------------------------------------

SCRIPT = textwrap.dedent('''
    """Prepare on a tiny bronze in a session with an event log; writes the pseudonyms as JSON."""
    import datetime as dt
    import json
    import sys

    from recspark import constants as C
    from recspark.config import SparkConfig, load_config
    from recspark.pipeline.prepare import IDENTITY_MAP, RAW_USER_ID
    from recspark.session import get_spark
    from recspark.stages import prepare_stage
    from recspark.utils.delta import overwrite_table

    lakehouse, local_dir, event_log, ids_file, out = sys.argv[1:6]
    ids = json.loads(open(ids_file).read())
    spark = get_spark(SparkConfig(
        master="local[1]", app_name="recspark-event-log", shuffle_partitions=1, driver_memory="1g",
        extra={"spark.local.dir": local_dir, "spark.sql.warehouse.dir": f"{local_dir}/warehouse",
               "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
               "spark.eventLog.enabled": "true", "spark.eventLog.dir": event_log,
               "spark.eventLog.compress": "false"}))
    config = load_config(None, ["dataset.name=synthetic", f"paths.lakehouse={lakehouse}"])
    bronze = {
        C.EVENTS: ([(f"e{n}", raw, f"i{n % 3}", "view", dt.datetime(2025, 3, 1 + n % 5, 10), 1.0, 2.0, None,
                     "shop.csv", n + 1) for n, raw in enumerate(ids)],
                   "event_id string, user_id string, item_id string, event_type string, event_ts timestamp, "
                   "quantity double, price double, session_id string, source_file string, source_row long"),
        C.ITEMS: ([(f"i{n}", "c", "b", 2.0, 5, {}, "items.csv", n + 1) for n in range(3)],
                  "item_id string, category string, brand string, price double, stock long, "
                  "attributes map<string,string>, source_file string, source_row long"),
        C.USERS: ([(raw, "34", "f", "12345", {}, "users.csv", n + 1) for n, raw in enumerate(ids)],
                  "user_id string, age string, gender string, region string, attributes map<string,string>, "
                  "source_file string, source_row long"),
    }
    for table, (rows, schema) in bronze.items():
        overwrite_table(spark.createDataFrame(rows, schema), config.table_path(C.BRONZE, table))
    prepare_stage(spark, config)
    read = lambda layer, table: spark.read.format("delta").load(config.table_path(layer, table))
    result = {
        "identity_map": sorted([bytes(r[RAW_USER_ID]).hex(), r[C.USER_ID]]
                               for r in read(C.BRONZE, IDENTITY_MAP).collect()),
        "silver_users": sorted(r[C.USER_ID] for r in read(C.SILVER, C.USERS).collect()),
        "silver_events": sorted(set(r[C.USER_ID] for r in read(C.SILVER, C.EVENTS).collect())),
    }
    with open(out, "w") as handle:
        json.dump(result, handle)
    spark.stop()
''')


def test_the_key_is_in_no_spark_event_log_of_a_prepare_run(tmp_path: Path) -> None:
    """Event logging is a static setting, so this runs in its own Spark session (a subprocess)."""
    event_log, local_dir = tmp_path / "event-log", tmp_path / "spark"
    event_log.mkdir()
    local_dir.mkdir()
    ids = [raw for raw in IDS if raw is not None]  # bronze has no null user id (ingest quarantines it)
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    (tmp_path / "run.py").write_text(SCRIPT)
    # The key arrives the way production gets it: the environment variable.
    env = {**os.environ, privacy.KEY_ENV: KEY.decode()}
    done = subprocess.run(
        [sys.executable, str(tmp_path / "run.py"), str(tmp_path / "lakehouse"), str(local_dir), event_log.as_uri(),
         str(tmp_path / "ids.json"), str(tmp_path / "out.json")],
        cwd=local_dir, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    result = json.loads((tmp_path / "out.json").read_text())
    expected = sorted(expected_pseudonym(KEY, raw) for raw in ids)
    # The identity map: pseudonyms, and raw ids that open with the derived key (AES-GCM, the pseudonym
    # as associated data) and are not in the table as text.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    cipher = AESGCM(identity_key(KEY))
    opened = {}
    for sealed_hex, pseudonym in result["identity_map"]:
        sealed = bytes.fromhex(sealed_hex)
        opened[pseudonym] = cipher.decrypt(sealed[:12], sealed[12:], pseudonym.encode()).decode()
        assert all(raw.encode() not in sealed for raw in ids if raw)
    assert opened == {expected_pseudonym(KEY, raw): raw for raw in ids}
    assert result["silver_users"] == expected and result["silver_events"] == expected

    logs = [path for path in event_log.rglob("*") if path.is_file()]
    assert logs, "no event log was written"
    text = "".join(path.read_bytes().decode("latin-1") for path in logs)
    assert leaks(text) == []
    # ... though it holds the plans, so the check looked where the key would be.
    assert "SparkListenerSQLExecutionStart" in text and "hmac_sha256_hex" in text and "aes_gcm_encrypt" in text


# --- MLflow -------------------------------------------------------------------------------------------

def test_the_key_is_in_no_mlflow_parameter_or_tag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A training run logged as the train stage logs it, with the key set: nothing in the store holds it."""
    from recspark.config import MODEL_NAMES, load_config
    from recspark.stages import model_train_params
    from recspark.tracking import _mlflow, flatten_params, log_training_run

    monkeypatch.setenv(privacy.KEY_ENV, KEY.decode())
    config = load_config(None, [f"paths.checkpoints={tmp_path / 'checkpoints'}"])
    for model in MODEL_NAMES:
        assert leaks(json.dumps(flatten_params({"train": model_train_params(config, model)}))) == []
    assert leaks(json.dumps(config.to_dict(), default=str)) == []  # what run.json stores
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.keras").write_bytes(b"weights")
    tracked = log_training_run(
        config.tracking, checkpoints_dir=config.paths.checkpoints, dataset="synthetic", model="mean_pool",
        params={"train": model_train_params(config, "mean_pool"), "model": {"embedding_dim": 8}},
        metrics={"loss": [1.0]}, table_versions={str(tmp_path / "gold" / "train_examples"): 1}, model_dir=model_dir)
    run = _mlflow().MlflowClient(tracked.tracking_uri).get_run(tracked.run_id)
    assert run.data.params["train.epochs"] == str(config.train.epochs)  # the params are there ...
    assert leaks(json.dumps([run.data.params, run.data.tags])) == []  # ... and hold no key
    store = b"".join(path.read_bytes() for path in Path(config.paths.checkpoints).rglob("*") if path.is_file())
    assert leaks(store) == []
