"""Pseudonymisation: user ids become a keyed hash (HMAC-SHA256) in silver and everything after it.

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
need a SparkContext, so this does not run on Spark Connect.
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
