"""Pseudonymisation: user ids become a keyed hash (HMAC-SHA256) in silver and everything after it.

The key never lives in the repository: it comes from the environment variable
``RECSPARK_PSEUDONYM_KEY``, or on Databricks from a secret scope, or (for a laptop try-out only) from
a per-user file outside the repository that is created on first use. The same key always gives the
same pseudonyms, so re-runs produce the same tables.
"""
from __future__ import annotations

import hashlib
import logging
import os
import secrets
from pathlib import Path

from pyspark.sql import Column
from pyspark.sql import functions as F

log = logging.getLogger(__name__)

KEY_ENV = "RECSPARK_PSEUDONYM_KEY"
LOCAL_KEY_FILE = Path.home() / ".config" / "recspark" / "pseudonym.key"
_BLOCK = 64  # SHA-256 block size in bytes (RFC 2104)


def pseudonym_key(secret_scope: str | None = None, secret_name: str = "pseudonym-key") -> bytes:
    """The HMAC key: environment, else Databricks secret, else a local per-user file."""
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].encode()
    if secret_scope:
        try:
            from pyspark.dbutils import DBUtils  # type: ignore[import-not-found]  # only on Databricks
            from pyspark.sql import SparkSession

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


def hmac_sha256(column: Column | str, key: bytes) -> Column:
    """HMAC-SHA256 of a string column as 64 hex characters, from Spark built-ins only.

    HMAC(K, m) = H((K' xor opad) || H((K' xor ipad) || m)) with K' the key padded to one block.
    Built-ins keep this in the JVM: no Python UDF and no row ever leaves the executors.
    """
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    inner_pad = bytearray(b ^ 0x36 for b in key)
    outer_pad = bytearray(b ^ 0x5C for b in key)
    message = F.col(column) if isinstance(column, str) else column
    inner = F.unhex(F.sha2(F.concat(F.lit(inner_pad), message.cast("binary")), 256))
    return F.sha2(F.concat(F.lit(outer_pad), inner), 256)


def pseudonymise(column: Column | str, key: bytes) -> Column:
    """The pseudonym of a user id: a short prefix marks it as such, 24 hex chars keep it unique."""
    return F.concat(F.lit("u_"), F.substring(hmac_sha256(column, key), 1, 24))
