"""The identity map at rest: raw ids as AES-256-GCM ciphertext, readable only with the derived key.

Checked against Spark's own ``aes_decrypt`` (the definition of the stored layout: nonce, ciphertext,
tag) and the ``cryptography`` package's AESGCM, not only against the code under test. Spark's
function gets the key as a literal here, which is fine in a test and is exactly why the pipeline
does not use it.
"""
from __future__ import annotations

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.evaluation.evaluate import with_original_user_id
from recspark.pipeline.prepare import RAW_USER_ID, identity_map
from recspark.pipeline.privacy import IDENTITY_KEY_INFO, decrypt_id, derive_key, pseudonymise

SECRET = b"identity-map-test-secret-3c9a"
KEY = derive_key(SECRET, IDENTITY_KEY_INFO)
RAW = ["1001", "alice", "Zo\u00eb", "user-007"]


@pytest.fixture(scope="module")
def sealed(spark: SparkSession) -> DataFrame:
    events = spark.createDataFrame([(raw,) for raw in RAW], f"{C.USER_ID} string")
    users = spark.createDataFrame([(RAW[0],), ("only-in-users",)], f"{C.USER_ID} string")
    return identity_map(events, users, SECRET, KEY).localCheckpoint()


def test_the_map_holds_ciphertext_and_pseudonyms(sealed: DataFrame) -> None:
    assert dict(sealed.dtypes) == {RAW_USER_ID: "binary", C.USER_ID: "string"}
    rows = sealed.collect()
    assert len(rows) == len(RAW) + 1
    for row in rows:
        blob = bytes(row[RAW_USER_ID])
        assert row[C.USER_ID].startswith("u_")
        # nonce (12) + ciphertext (as long as the UTF-8 id) + tag (16), and no id in it as text.
        assert 28 < len(blob) <= 28 + max(len(raw.encode()) for raw in RAW + ["only-in-users"])
        assert not any(raw.encode() in blob for raw in RAW)


def test_spark_aes_decrypt_and_cryptography_open_it_with_the_key(spark: SparkSession, sealed: DataFrame) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    opened = sealed.select(C.USER_ID, F.expr(f"cast(aes_decrypt({RAW_USER_ID}, X'{KEY.hex()}', 'GCM', 'DEFAULT', "
                                             f"cast({C.USER_ID} as binary)) as string)").alias("raw"))
    by_spark = {row[C.USER_ID]: row["raw"] for row in opened.collect()}
    expected = {row[C.USER_ID]: row["raw"] for row in spark.createDataFrame(
        [(raw,) for raw in RAW + ["only-in-users"]], "raw string").select(
        pseudonymise("raw", SECRET).alias(C.USER_ID), "raw").collect()}
    assert by_spark == expected
    cipher = AESGCM(KEY)
    for row in sealed.collect():
        blob = bytes(row[RAW_USER_ID])
        assert cipher.decrypt(blob[:12], blob[12:], row[C.USER_ID].encode()).decode() == expected[row[C.USER_ID]]


def test_without_the_key_nothing_opens(spark: SparkSession, sealed: DataFrame) -> None:
    wrong = derive_key(b"another secret", IDENTITY_KEY_INFO)
    with pytest.raises(Exception, match="InvalidTag"):
        sealed.select(decrypt_id(RAW_USER_ID, C.USER_ID, wrong)).collect()
    # The pseudonym key itself is not the identity map's key either (HKDF, its own label).
    with pytest.raises(Exception, match="InvalidTag"):
        sealed.select(decrypt_id(RAW_USER_ID, C.USER_ID, SECRET.ljust(32, b"\0"))).collect()


def test_a_ciphertext_moved_to_another_row_does_not_open(spark: SparkSession, sealed: DataFrame) -> None:
    rows = sorted(sealed.collect(), key=lambda row: row[C.USER_ID])
    swapped = spark.createDataFrame([(rows[1][RAW_USER_ID], rows[0][C.USER_ID])], f"{RAW_USER_ID} binary, {C.USER_ID} string")
    with pytest.raises(Exception, match="InvalidTag"):
        swapped.select(decrypt_id(RAW_USER_ID, C.USER_ID, KEY)).collect()


def test_outputs_are_mapped_back_to_the_shops_ids(spark: SparkSession, sealed: DataFrame) -> None:
    pseudonyms = spark.createDataFrame([(raw,) for raw in RAW], "raw string").select(
        pseudonymise("raw", SECRET).alias(C.USER_ID), "raw")
    recommendations = pseudonyms.select(C.USER_ID, F.lit("item-1").alias(C.ITEM_ID), F.col("raw").alias("expected"))
    mapped = with_original_user_id(recommendations, sealed, KEY)
    assert mapped.columns == [C.ITEM_ID, "expected", C.USER_ID]
    rows = mapped.collect()
    assert sorted(row[C.USER_ID] for row in rows) == sorted(RAW)
    assert all(row[C.USER_ID] == row["expected"] for row in rows)
    # A map still in plain text (an earlier recspark's, prepare not run since) is named, not decrypted.
    plain = pseudonyms.select("raw", C.USER_ID).withColumnRenamed("raw", "raw_user_id")
    with pytest.raises(ValueError, match="identity_map holds raw user ids in plain text.*run the prepare stage"):
        with_original_user_id(recommendations, plain, KEY)


def test_a_plain_text_map_of_an_earlier_run_is_encrypted_and_its_history_purged(
        spark: SparkSession, tmp_path) -> None:
    from recspark.pipeline.prepare import encrypt_plain_identity_map
    from recspark.utils.delta import overwrite_table

    path = str(tmp_path / "identity_map")
    plain = spark.createDataFrame([(raw,) for raw in RAW], "raw string").select(
        F.col("raw").alias(RAW_USER_ID), pseudonymise("raw", SECRET).alias(C.USER_ID))
    overwrite_table(plain, path)
    overwrite_table(plain, path)  # a second version, so there is history to purge

    def files_with_raw_ids() -> set[str]:
        return {str(file.relative_to(tmp_path)) for file in tmp_path.rglob("*") if file.is_file()
                and any(raw.encode() in file.read_bytes() for raw in RAW)}

    # Plain parquet and the log's column statistics both hold the ids before.
    assert any("_delta_log" in name for name in files_with_raw_ids())
    assert encrypt_plain_identity_map(spark, path, KEY)
    assert not encrypt_plain_identity_map(spark, path, KEY)  # already encrypted: nothing to do
    stored = spark.read.format("delta").load(path)
    assert dict(stored.dtypes)[RAW_USER_ID] == "binary"
    opened = {row[0] for row in stored.select(decrypt_id(RAW_USER_ID, C.USER_ID, KEY)).collect()}
    assert opened == set(RAW)
    assert files_with_raw_ids() == set()
    with pytest.raises(Exception, match="(?i)version"):
        spark.read.format("delta").option("versionAsOf", 0).load(path).collect()
