"""Pseudonymisation: user ids become a keyed hash (HMAC-SHA256) in silver and everything after it;
the identity map (pseudonym -> raw id) keeps the raw id encrypted (AES-256-GCM, key derived from the
same secret).

The key never lives in the repository: it comes from the environment variable
``RECSPARK_PSEUDONYM_KEY``, or on Databricks from a secret scope, or (for a laptop try-out only) from
a per-user file outside the repository that is created on first use. The same key always gives the
same pseudonyms, so re-runs produce the same tables.

Why this is the one Python UDF of the data pipeline (ingest to features; model inference aside):
HMAC can be written with Spark built-ins (``sha2`` over ``concat`` of the key's XOR pads and the
message), but the pads are then literals of the query, and anything in a query plan is public:
``explain()``, the Spark UI, the event logs and the history server all show it, and the key follows
from either pad. So the HMAC is a pandas UDF (vectorised over Arrow batches) that calls Python's
``hmac``, and the key reaches the executors only through a Spark broadcast variable: the plan holds
the UDF's name, the pickled function holds the broadcast's id, and neither the key nor anything
derived from it is in a plan or an event log (tests/test_privacy_key.py checks both). Broadcasts
need a SparkContext, so this does not run on Spark Connect. The identity map's encryption below
follows the same pattern for the same reason.
"""
from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path

import pandas as pd
from pyspark import Broadcast
from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F

log = logging.getLogger(__name__)

KEY_ENV = "RECSPARK_PSEUDONYM_KEY"
LOCAL_KEY_FILE = Path.home() / ".config" / "recspark" / "pseudonym.key"
PSEUDONYM_PREFIX = "u_"
PSEUDONYM_HEX_CHARS = 24


def pseudonym_key(secret_scope: str | None = None, secret_name: str = "pseudonym-key") -> bytes:
    """The HMAC key: environment, else Databricks secret, else a local per-user file."""
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].encode()
    if secret_scope:
        try:
            from pyspark.dbutils import DBUtils  # type: ignore[import-not-found]  # only on Databricks

            return DBUtils(SparkSession.getActiveSession()).secrets.get(secret_scope, secret_name).encode()
        except ImportError as error:
            raise RuntimeError(f"privacy.secret_scope={secret_scope!r} is set but this is not Databricks") from error
    if not LOCAL_KEY_FILE.exists():
        LOCAL_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
        LOCAL_KEY_FILE.write_text(secrets.token_hex(32))
        LOCAL_KEY_FILE.chmod(0o600)
        log.warning("no %s set: created a local pseudonym key in %s (set the variable in production)",
                    KEY_ENV, LOCAL_KEY_FILE)
    return LOCAL_KEY_FILE.read_text().strip().encode()


def broadcast_key(key: bytes) -> Broadcast:
    """The key as a broadcast variable of the active session: shipped to executors beside the plan,
    never inside it."""
    spark = SparkSession.getActiveSession()
    if spark is None:
        raise RuntimeError("pseudonymisation needs an active SparkSession (it broadcasts the key)")
    try:
        context = spark.sparkContext
    except Exception as error:  # Spark Connect has no SparkContext, hence no broadcast variables
        raise RuntimeError("pseudonymisation broadcasts its key, which Spark Connect cannot do: "
                           "run prepare on a classic (non-Connect) session") from error
    return context.broadcast(key)


def hmac_udf(key: Broadcast):
    """A pandas UDF: binary message -> HMAC-SHA256 as 64 hex characters (null stays null).

    The function closes over the broadcast only, so its pickled form (which travels with the plan)
    holds the broadcast's id, not the key."""
    def hmac_sha256_hex(messages: pd.Series) -> pd.Series:
        secret = key.value
        return pd.Series([None if m is None else hmac.digest(secret, m, "sha256").hex() for m in messages],
                         index=messages.index, dtype=object)

    return F.pandas_udf(hmac_sha256_hex, "string")


def hmac_sha256(column: Column | str, key: bytes | Broadcast) -> Column:
    """HMAC-SHA256 (RFC 2104) of a string column's UTF-8 bytes as 64 hex characters; null for null.

    ``key``: the key, or a broadcast of it (``broadcast_key``) to share one among several columns."""
    message = F.col(column) if isinstance(column, str) else column
    shared = key if isinstance(key, Broadcast) else broadcast_key(key)
    # The string's own bytes, so the hash is that of exactly what Spark holds (no decode, re-encode).
    return hmac_udf(shared)(message.cast("binary"))


def pseudonymise(column: Column | str, key: bytes | Broadcast) -> Column:
    """The pseudonym of a user id: a short prefix marks it as such, 24 hex chars keep it unique."""
    return F.concat(F.lit(PSEUDONYM_PREFIX), F.substring(hmac_sha256(column, key), 1, PSEUDONYM_HEX_CHARS))


# --- The identity map's encryption ---------------------------------------------------------------------
#
# raw_user_id is stored as AES-256-GCM ciphertext in exactly the layout of Spark's
# ``aes_encrypt(raw, key, 'GCM', 'DEFAULT', aad)``: a random 12-byte nonce, the ciphertext, the 16-byte
# tag; so ``aes_decrypt`` with the key opens it (tests/test_identity_map.py checks this). Spark's
# function itself is not used because its key would be a literal of the plan (see above); the same
# pandas-UDF-with-a-broadcast pattern as the HMAC does the work, with the ``cryptography`` package.
# The additional authenticated data is the row's pseudonym, so a ciphertext moved to another row
# (someone with write access redirecting one person's recommendations to another) fails to decrypt.
# Random nonces are safe for up to 2**32 encryptions under one key (NIST SP 800-38D), far beyond the
# number of users; one key per pseudonym secret.

IDENTITY_KEY_INFO = b"recspark/identity_map/raw_user_id/aes-256-gcm/v1"
NONCE_BYTES = 12


def derive_key(secret: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869, no salt) of the secret for one purpose (``info``): keys for different
    purposes are independent, and none reveals the secret."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def identity_map_key(secret_scope: str | None = None) -> bytes:
    """The identity map's AES-256 key: derived from the pseudonym key (same sources, one secret to
    manage), under its own label so that it is not the HMAC key."""
    return derive_key(pseudonym_key(secret_scope), IDENTITY_KEY_INFO)


def encrypt_udf(key: Broadcast):
    """A pandas UDF: (plain text, associated data) -> nonce || AES-GCM ciphertext || tag (null stays null).

    Non-deterministic (a fresh random nonce per row), so Spark never re-evaluates it expecting the
    same value, and Delta's MERGE materialises a source that holds it."""
    def aes_gcm_encrypt(plain: pd.Series, associated: pd.Series) -> pd.Series:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        cipher = AESGCM(key.value)

        def one(text: str | None, aad: str | None) -> bytes | None:
            if text is None:
                return None
            nonce = os.urandom(NONCE_BYTES)
            return nonce + cipher.encrypt(nonce, text.encode("utf-8"), None if aad is None else aad.encode("utf-8"))

        return pd.Series([one(t, a) for t, a in zip(plain, associated)], index=plain.index, dtype=object)

    return F.pandas_udf(aes_gcm_encrypt, "binary").asNondeterministic()


def decrypt_udf(key: Broadcast):
    """A pandas UDF: (nonce || ciphertext || tag, associated data) -> plain text. A wrong key, a
    changed byte or another row's associated data raises (AES-GCM authenticates), never a wrong id."""
    def aes_gcm_decrypt(sealed: pd.Series, associated: pd.Series) -> pd.Series:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        cipher = AESGCM(key.value)

        def one(blob: bytes | None, aad: str | None) -> str | None:
            if blob is None:
                return None
            blob = bytes(blob)
            return cipher.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:],
                                  None if aad is None else aad.encode("utf-8")).decode("utf-8")

        return pd.Series([one(b, a) for b, a in zip(sealed, associated)], index=sealed.index, dtype=object)

    return F.pandas_udf(aes_gcm_decrypt, "string")


def _column(column: Column | str) -> Column:
    return F.col(column) if isinstance(column, str) else column


def encrypt_id(column: Column | str, associated: Column | str, key: bytes | Broadcast) -> Column:
    """AES-256-GCM of a string column (UTF-8) bound to ``associated`` (e.g. the row's pseudonym)."""
    shared = key if isinstance(key, Broadcast) else broadcast_key(key)
    return encrypt_udf(shared)(_column(column), _column(associated))


def decrypt_id(column: Column | str, associated: Column | str, key: bytes | Broadcast) -> Column:
    """The plain text of an ``encrypt_id`` column; fails on a wrong key or associated data."""
    shared = key if isinstance(key, Broadcast) else broadcast_key(key)
    return decrypt_udf(shared)(_column(column), _column(associated))
