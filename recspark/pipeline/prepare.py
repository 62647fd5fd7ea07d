"""Prepare: bronze -> silver. Typed, deduplicated, missing values filled, user ids pseudonymised.

Missing-value policy (per column):
- events.quantity: null -> 1.0 (an event without a quantity still happened once).
- events.price: null -> the item's catalogue price, else stays null (unknown, never invented).
- items.category, items.brand: null or blank -> "unknown" (a category of its own for the models).
- users.age, gender, region: null -> "unknown".

Then events without a session_id get one from inactivity gaps, and bots' events are removed (both
in ``recspark.pipeline.sessions``); the bots found are kept in the silver table ``bots``.
"""
from __future__ import annotations

from pyspark import Broadcast
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import Config
from recspark.pipeline.privacy import (
    IDENTITY_KEY_INFO, broadcast_key, derive_key, encrypt_id, pseudonym_key, pseudonymise,
)
from recspark.pipeline.sessions import filter_bots, find_bots, with_gap_sessions
from recspark.utils.delta import merge_into, overwrite_table, purge_history, read_table, table_exists

UNKNOWN = "unknown"
IDENTITY_MAP = "identity_map"
RAW_USER_ID = "raw_user_id"
BOTS = "bots"
EVENT_GRAIN = (C.USER_ID, C.ITEM_ID, C.EVENT_TYPE, C.EVENT_TS, C.SESSION_ID)


def dedupe_events(events: DataFrame) -> DataFrame:
    """One row per (user, item, event type, time, session): repeated lines of one interaction
    (two scans of one product in one basket) add up their quantities."""
    return events.groupBy(*EVENT_GRAIN).agg(
        F.min(C.EVENT_ID).alias(C.EVENT_ID),
        F.sum(F.coalesce(C.QUANTITY, F.lit(1.0))).alias(C.QUANTITY),
        F.avg(C.PRICE).alias(C.PRICE),
        # The first source position orders events with equal timestamps (file order).
        F.min(F.struct(C.SOURCE_FILE, C.SOURCE_ROW)).alias("_first"),
    ).select(
        C.EVENT_ID, *EVENT_GRAIN, C.QUANTITY, C.PRICE,
        F.col("_first")[C.SOURCE_FILE].alias(C.SOURCE_FILE), F.col("_first")[C.SOURCE_ROW].alias(C.SOURCE_ROW),
    )


def with_catalogue_price(events: DataFrame, items: DataFrame) -> DataFrame:
    prices = items.select(C.ITEM_ID, F.col(C.PRICE).alias("_catalogue_price"))
    return (events.join(prices, C.ITEM_ID, "left")
            .withColumn(C.PRICE, F.coalesce(C.PRICE, "_catalogue_price")).drop("_catalogue_price"))


def with_pseudonymous_users(df: DataFrame, key: bytes | Broadcast) -> DataFrame:
    """``user_id`` replaced by its pseudonym. Each distinct id is hashed once and joined back: the
    HMAC is a Python UDF (:mod:`recspark.pipeline.privacy` says why), and a shop has far fewer users
    than events (Complete Journey: 2,500 against 1.5 million), so the rows need not travel through
    a Python worker. Spark picks the join (a broadcast once it sees the ids are few)."""
    pseudonyms = df.select(C.USER_ID).distinct().select(
        C.USER_ID, pseudonymise(C.USER_ID, key).alias("_pseudonym"))
    return (df.join(pseudonyms, C.USER_ID, "left")
            .select(*[F.col("_pseudonym").alias(C.USER_ID) if c == C.USER_ID else F.col(c) for c in df.columns]))


def fill_unknown(df: DataFrame, columns: tuple[str, ...]) -> DataFrame:
    return df.select(*[
        F.coalesce(F.nullif(F.trim(F.col(c)), F.lit("")), F.lit(UNKNOWN)).alias(c) if c in columns else F.col(c)
        for c in df.columns
    ])


def coarsen_age(age: str) -> F.Column:
    """Exact ages become decade ranges ("37" -> "30-39"); ranges and codes pass unchanged."""
    years = F.col(age).try_cast("int")
    decade = (F.floor(years / 10) * 10).cast("int")
    return F.when(years.isNotNull(), F.concat(decade.cast("string"), F.lit("-"), (decade + 9).cast("string"))).otherwise(F.col(age))


def prepare_users(users: DataFrame, key: bytes | Broadcast) -> DataFrame:
    """Quasi-identifiers coarsened: ages to ranges, regions (zip codes) to a 3-character prefix."""
    return (users.transform(lambda df: with_pseudonymous_users(df, key))
            .withColumn(C.AGE, coarsen_age(C.AGE))
            .withColumn(C.REGION, F.substring(C.REGION, 1, 3))
            .transform(lambda df: fill_unknown(df, (C.AGE, C.GENDER, C.REGION)))
            .drop(C.SOURCE_FILE, C.SOURCE_ROW))


def identity_map(events: DataFrame, users: DataFrame | None, key: bytes | Broadcast,
                 identity_key: bytes | Broadcast) -> DataFrame:
    """pseudonym <-> raw user id, for every user seen; the only link back, kept in bronze.

    ``raw_user_id`` is AES-GCM ciphertext under ``identity_key`` with the pseudonym as associated
    data (``privacy.encrypt_id``): without the key the table holds pseudonyms and random bytes."""
    raw = events.select(C.USER_ID)
    if users is not None:
        raw = raw.unionByName(users.select(C.USER_ID))
    raw = raw.distinct().withColumn("_pseudonym", pseudonymise(C.USER_ID, key))
    return raw.select(encrypt_id(C.USER_ID, "_pseudonym", identity_key).alias(RAW_USER_ID),
                      F.col("_pseudonym").alias(C.USER_ID))


def encrypt_plain_identity_map(spark: SparkSession, path: str, identity_key: bytes | Broadcast) -> bool:
    """An identity map written before encryption (``raw_user_id`` as text) is encrypted in place,
    and its history purged: the plain-text files and the log's column statistics, which hold raw ids,
    would otherwise stay. True if it did so."""
    if not table_exists(spark, path):
        return False
    plain = read_table(spark, path)
    if dict(plain.dtypes)[RAW_USER_ID] != "string":
        return False
    print(f"prepare: WARNING: {path} holds raw user ids in plain text; encrypting it and purging its "
          f"history (time travel to its older versions is lost)")
    # Materialised first: the overwrite replaces the files this reads.
    rows = plain.select(encrypt_id(RAW_USER_ID, C.USER_ID, identity_key).alias(RAW_USER_ID), C.USER_ID).localCheckpoint()
    overwrite_table(rows, path)
    purge_history(spark, path, retention_hours=0.0)
    return True


def prepare(spark: SparkSession, config: Config) -> dict:
    secret = pseudonym_key(config.privacy.secret_scope)
    # One broadcast per key for the whole stage (every UDF of it ships the same two ids).
    key, identity_key = broadcast_key(secret), broadcast_key(derive_key(secret, IDENTITY_KEY_INFO))
    events = read_table(spark, config.table_path(C.BRONZE, C.EVENTS))
    items = read_table(spark, config.table_path(C.BRONZE, C.ITEMS))
    users_path = config.table_path(C.BRONZE, C.USERS)
    users = read_table(spark, users_path) if table_exists(spark, users_path) else None

    silver_items = fill_unknown(items.drop(C.SOURCE_FILE, C.SOURCE_ROW), (C.CATEGORY, C.BRAND))
    # Pseudonyms first: their distinct ids then come from a one-column scan of bronze, not from
    # the deduplicated events (computed twice otherwise, once for the ids and once for the join).
    silver_events = (events.transform(lambda df: with_pseudonymous_users(df, key))
                     .transform(dedupe_events)
                     .transform(lambda df: with_catalogue_price(df, items))
                     .transform(lambda df: with_gap_sessions(df, config.prepare.session_gap_minutes)))
    # Read twice (bot detection, then the write): computed once from bronze.
    silver_events = silver_events.persist()
    identity_path = config.table_path(C.BRONZE, IDENTITY_MAP)
    encrypt_plain_identity_map(spark, identity_path, identity_key)
    # Keyed on the pseudonym: the ciphertext differs on every run (a fresh nonce), the pseudonym of a
    # raw id does not, so a re-run inserts nothing.
    merge_into(spark, identity_map(events, users, key, identity_key), identity_path, [C.USER_ID])
    bots_path = config.table_path(C.SILVER, BOTS)
    overwrite_table(find_bots(silver_events, config.prepare.bot_rate_multiple, config.prepare.bot_percentile,
                              config.prepare.bot_max_events_per_day), bots_path)
    bots = read_table(spark, bots_path)
    # One aggregate over the (small) bots table, for the log.
    bot_users, bot_events = bots.agg(F.count(F.lit(1)), F.coalesce(F.sum("n_events"), F.lit(0))).first()
    print(f"prepare: removed {bot_users:,} bot users ({bot_events:,} events) from silver events -> {bots_path}")
    overwrite_table(silver_events.transform(lambda df: filter_bots(df, bots)), config.table_path(C.SILVER, C.EVENTS))
    silver_events.unpersist()
    overwrite_table(silver_items, config.table_path(C.SILVER, C.ITEMS))
    written = {"silver events": config.table_path(C.SILVER, C.EVENTS), "silver items": config.table_path(C.SILVER, C.ITEMS),
               "silver bots (removed users)": bots_path}
    if users is not None:
        overwrite_table(prepare_users(users, key), config.table_path(C.SILVER, C.USERS))
        written["silver users"] = config.table_path(C.SILVER, C.USERS)
    return written
