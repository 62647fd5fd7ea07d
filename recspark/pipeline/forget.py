"""Erasure: a person, named by the shop's own user id, removed from every table of the lakehouse.

Where a person is, by layer (tables without the column are left alone):
- bronze tables hold the raw id in ``user_id`` (events, users); the quarantine holds it inside
  ``raw_record`` (the rejected line as JSON or as text); the identity map holds it encrypted, so its
  row goes by the pseudonym;
- silver and gold (of every variant of the data set) hold the pseudonym in ``user_id``;
- the outputs, recommendations and evaluation predictions, hold the raw id again;
- the replayed loop (recspark.loop) keeps copies of all of these in a lakehouse of its own,
  ``<lakehouse>/<run name>-loop/``, or with paths.catalog a schema ``<schema>_<run name>_loop``,
  and its feedback files (shop ids in plain text, written again by every replay) are deleted whole.

Every delete is a Delta MERGE against a DataFrame of the ids (``whenMatchedDelete``), not a DELETE
with the ids in its condition: a condition's literals are written to the table's log (the commit's
``operationParameters``) and to Spark's plans, and would keep the very ids being erased.

Deleted rows stay in older data files, which VACUUM removes (``privacy.erasure_retention_hours``,
0 by default); with 0 hours the log is also truncated to the latest version, because each commit's
JSON keeps the min and max of the user columns of the files it added (``utils.delta.truncate_log``).
Either way time travel to the versions before the erasure is lost: this is the point.

An audit row goes to ``<lakehouse>/<data set>/audit/erasures``: when, how many ids were asked for and
found, rows deleted per table, retention; never an id or a pseudonym.

Not covered here: the shop's source exports (re-ingesting an old export brings the person back) and
trained models, which hold no user id but were trained on the person's events until the next training.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from pathlib import Path
from typing import Iterable, Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import Config
from recspark.pipeline.prepare import IDENTITY_MAP, RAW_USER_ID
from recspark.pipeline.privacy import IDENTITY_KEY_INFO, decrypt_id, derive_key, pseudonym_key, pseudonymise
from recspark.utils.delta import append_table, delta_table, purge_history, read_table, table_exists, table_version

AUDIT = "audit"
ERASURES = "erasures"
PSEUDONYM = "pseudonym"
# How each kind of table is matched against the people (t: the table, s: the ids with pseudonyms).
BY_RAW_ID = f"t.`{C.USER_ID}` = s.`{RAW_USER_ID}`"
BY_PSEUDONYM = f"t.`{C.USER_ID}` = s.`{PSEUDONYM}`"
# A quarantined event or user row: its raw_record is the rejected row as JSON (a field check failed)
# or the line as read (the reader failed); the person is the JSON's user_id, or any field of the line
# (quotes and spaces trimmed), which may also take a rejected line of someone else that holds the id.
BY_RAW_RECORD = (
    f"t.entity IN ('{C.EVENTS}', '{C.USERS}') AND ("
    f"get_json_object(t.`{C.RAW_RECORD}`, '$.{C.USER_ID}') = s.`{RAW_USER_ID}` OR "
    f"exists(split(t.`{C.RAW_RECORD}`, '[,;|\\t]'), f -> trim(BOTH '\"' FROM trim(f)) = s.`{RAW_USER_ID}`))"
)
SKIPPED_DIRS = ("_petastorm_cache",)


@dataclasses.dataclass(frozen=True)
class Target:
    """A table a person may be in, and how to find them there."""

    name: str  # relative to the lakehouse, e.g. "synthetic/bronze/events"
    path: str
    condition: str


def _delta_tables(spark: SparkSession, root: str) -> list[str]:
    """Every Delta table at or under ``root`` (any Hadoop file system), skipping caches."""
    jvm = spark._jvm
    start = jvm.org.apache.hadoop.fs.Path(root)
    fs = start.getFileSystem(spark._jsc.hadoopConfiguration())
    if not fs.exists(start):
        return []
    found, pending = [], [start]
    while pending:
        directory = pending.pop()
        if fs.exists(jvm.org.apache.hadoop.fs.Path(directory, "_delta_log")):
            # The path alone: the lakehouse is configured as one ("/Volumes/..."), listed as a URI.
            found.append(directory.toUri().getPath())
            continue
        for status in fs.listStatus(directory):
            name = status.getPath().getName()
            if status.isDirectory() and not name.startswith((".", "_")) and name not in SKIPPED_DIRS:
                pending.append(status.getPath())
    return sorted(found)


def _roots(lakehouse: Path, name: str) -> tuple[Path, list[Path], list[Path]]:
    """The data set ``name``'s directory in ``lakehouse`` (bronze, silver), the directories of its
    protocols (gold and outputs: every variant's, which share its bronze), and the lakehouses nested
    beside them: the replayed loop's (``<run name>-loop``, recspark.loop), which holds copies of the
    data set's tables. A sibling ``<name>-<x>`` with a bronze of its own is another data set."""
    data = lakehouse / name
    runs, nested = set(), []
    if lakehouse.exists():
        for path in lakehouse.glob(f"{name}-*"):
            if not path.is_dir() or (path / C.BRONZE).exists():
                continue
            if (path / name / C.BRONZE).exists() or (path / name / C.SILVER).exists():
                nested.append(path)
            else:
                runs.add(path)
    return data, sorted(runs), sorted(nested)


def erasure_targets(spark: SparkSession, config: Config) -> list[Target]:
    """The tables of the data set that hold user ids, each with its match condition."""
    if config.uses_catalog:
        return _catalog_targets(spark, config)
    lakehouse = Path(config.paths.lakehouse).resolve()
    return _lakehouse_targets(spark, lakehouse, config.dataset.name, lakehouse)


def _lakehouse_targets(spark: SparkSession, lakehouse: Path, name: str, top: Path) -> list[Target]:
    """:func:`erasure_targets` of one lakehouse folder and the lakehouses nested in it; names are
    relative to ``top``."""
    data, runs, nested = _roots(lakehouse, name)
    targets = []

    def add(path: str, condition: str) -> None:
        columns = set(read_table(spark, path).columns)
        needed = C.RAW_RECORD if condition == BY_RAW_RECORD else C.USER_ID
        if needed in columns:
            targets.append(Target(str(Path(path).relative_to(top)), path, condition))

    for path in _delta_tables(spark, str(data)):
        layer, *rest = Path(path).relative_to(data).parts
        if layer == C.BRONZE:
            table = rest[0] if rest else ""
            add(path, BY_PSEUDONYM if table == IDENTITY_MAP else BY_RAW_RECORD if table == C.QUARANTINE else BY_RAW_ID)
        elif layer in (C.SILVER, C.GOLD):
            add(path, BY_PSEUDONYM)
        elif layer != AUDIT:
            add(path, BY_RAW_ID)  # outputs of a run without a variant share the data set's directory
    for run in runs:
        for path in _delta_tables(spark, str(run)):
            layer = Path(path).relative_to(run).parts[0]
            add(path, BY_PSEUDONYM if layer in (C.SILVER, C.GOLD) else BY_RAW_ID)
    for inner in nested:
        targets += _lakehouse_targets(spark, inner, name, top)
    return targets


def _catalog_targets(spark: SparkSession, config: Config) -> list[Target]:
    """With paths.catalog: every table of the schema (one schema holds one data set and its
    variants) and of the replayed loop's schemas (recspark.loop.loop_schema), told apart by the
    layer its name starts with (Config.table_path's naming)."""
    catalog, own = config.paths.catalog, config.paths.schema
    # Filtered here, not by SHOW SCHEMAS' LIKE, whose pattern rules differ between Spark and Databricks.
    loops = [row[0] for row in spark.sql(f"SHOW SCHEMAS IN {catalog}").collect()
             if row[0].startswith(f"{own}_") and row[0].endswith(f"_{C.LOOP_SUFFIX}")]
    identity, quarantine = f"{C.BRONZE}_{IDENTITY_MAP}", f"{C.BRONZE}_{C.QUARANTINE}"
    targets = []
    for schema in [own, *sorted(loops)]:
        for table in sorted(spark.catalog.listTables(f"{catalog}.{schema}"), key=lambda t: t.name):
            ref = f"{catalog}.{schema}.{table.name}"
            layer = table.name.split("_", 1)[0]
            if layer == AUDIT:
                continue
            condition = (BY_PSEUDONYM if table.name == identity or layer in (C.SILVER, C.GOLD) else
                         BY_RAW_RECORD if table.name == quarantine else BY_RAW_ID)
            needed = C.RAW_RECORD if condition == BY_RAW_RECORD else C.USER_ID
            if needed in read_table(spark, ref).columns:
                targets.append(Target(table.name if schema == own else f"{schema}.{table.name}", ref, condition))
    return targets


def check_key(spark: SparkSession, config: Config, key: bytes) -> None:
    """Fails unless ``key`` is the one prepare used: with another key the pseudonyms would match
    nobody, and silver and gold would keep the person while bronze lost them. One identity map row,
    decrypted with the key derived from it, tells (AES-GCM refuses a wrong key)."""
    path = config.table_path(C.BRONZE, IDENTITY_MAP)
    if not table_exists(spark, path):
        return
    identity = read_table(spark, path)
    if dict(identity.dtypes)[RAW_USER_ID] != "binary":
        return  # a plain-text map of an earlier version (the next prepare encrypts it): nothing to check
    one = identity.limit(1)
    try:
        one.select(decrypt_id(RAW_USER_ID, C.USER_ID, derive_key(key, IDENTITY_KEY_INFO))).collect()
    except Exception as error:
        if "InvalidTag" not in str(error):
            raise
        raise RuntimeError(f"the pseudonym key is not the one that wrote {path}: nothing was deleted "
                           f"(set {'privacy.secret_scope' if config.privacy.secret_scope else 'RECSPARK_PSEUDONYM_KEY'} "
                           f"as for prepare)") from None


def people(spark: SparkSession, config: Config, user_ids: Iterable[str]) -> DataFrame:
    """(raw_user_id, pseudonym) of the ids, materialised once: the pseudonyms come from the same key
    as prepare's (checked), and nothing of either is a literal of a later plan."""
    ids = sorted(set(user_ids))
    if not ids:
        raise ValueError("no user id to forget")
    key = pseudonym_key(config.privacy.secret_scope)
    check_key(spark, config, key)
    frame = spark.createDataFrame([(raw,) for raw in ids], f"{RAW_USER_ID} string")
    return frame.withColumn(PSEUDONYM, pseudonymise(RAW_USER_ID, key)).localCheckpoint()


def delete_people(spark: SparkSession, target: Target, who: DataFrame) -> int:
    """Deletes the matching rows of one table (a MERGE whose only clause deletes); returns how many."""
    before = table_version(spark, target.path)
    table = delta_table(spark, target.path)
    table.alias("t").merge(who.alias("s"), target.condition).whenMatchedDelete().execute()
    if table_version(spark, target.path) == before:  # nothing matched: Delta commits nothing
        return 0
    metrics = table.history(1).first()["operationMetrics"] or {}
    return int(metrics.get("numTargetRowsDeleted", 0))


def audit_path(config: Config) -> str:
    """The audit table: ``<lakehouse>/<data set>/audit/erasures``, or ``audit_erasures`` of the schema."""
    if config.uses_catalog:
        return f"{config.paths.catalog}.{config.paths.schema}.{AUDIT}_{ERASURES}"
    return str(Path(config.paths.lakehouse) / config.dataset.name / AUDIT / ERASURES)


AUDIT_SCHEMA = ("erased_at timestamp, ids_requested int, ids_found int, rows_deleted map<string,bigint>, "
                "tables int, retention_hours double, log_truncated boolean")


def forget(spark: SparkSession, config: Config, user_ids: Sequence[str],
           retention_hours: float | None = None) -> dict:
    """Removes the people with these shop user ids from every table of the data set, vacuums, and
    appends an audit row. Run it while no other job reads or writes the lakehouse: VACUUM with a
    short retention deletes files that a running reader or writer may still need."""
    hours = config.privacy.erasure_retention_hours if retention_hours is None else retention_hours
    if hours < 0:
        raise ValueError(f"retention must be >= 0 hours, got {hours}")
    who = people(spark, config, user_ids)
    targets = erasure_targets(spark, config)
    deleted = {target.name: delete_people(spark, target, who) for target in targets}
    # The data set's own identity map (not the loop's copy): <data set>/bronze/identity_map, or
    # bronze_identity_map in the schema.
    own = f"{C.BRONZE}_{IDENTITY_MAP}" if config.uses_catalog else f"{config.dataset.name}/{C.BRONZE}/{IDENTITY_MAP}"
    found = deleted.get(own, 0)
    print(f"forget: WARNING: VACUUM of {len(targets)} tables with a retention of {hours:g} hours: "
          + ("their versions before this erasure are gone, and with them time travel to any of them "
             "(the log is truncated to the latest version)" if hours == 0 else
             f"time travel further back than {hours:g} hours is gone; the erased rows stay readable in the "
             f"versions of the last {hours:g} hours, and in the log's statistics, until a VACUUM after "
             f"{hours:g} hours and Delta's log retention (delta.logRetentionDuration, 30 days by default)"),
          flush=True)
    for target in targets:
        purge_history(spark, target.path, hours)
    who.unpersist()
    # The loop's feedback files hold shop ids in plain text; they are replay inputs that every
    # make loop writes again, so they go whole rather than line by line.
    replayed = loop_feedback_folders(config)
    for folder in replayed:
        shutil.rmtree(folder)
    row = (dt.datetime.now(dt.timezone.utc), len(set(user_ids)), found, deleted, len(targets),
           float(hours), hours == 0)
    append_table(spark.createDataFrame([row], AUDIT_SCHEMA), audit_path(config))
    summary = {name: f"{rows:,} rows deleted" for name, rows in deleted.items()}
    summary["ids"] = f"{len(set(user_ids)):,} requested, {found:,} in the identity map"
    summary["vacuum"] = f"{len(targets)} tables, retention {hours:g} hours" + (", log truncated" if hours == 0 else "")
    summary["audit"] = audit_path(config)
    summary["loop feedback files"] = (f"deleted: {', '.join(str(folder) for folder in replayed)}" if replayed
                                      else "none")
    return summary


def loop_feedback_folders(config: Config) -> list[Path]:
    """The replayed loops' feedback folders of this data set (``<lakehouse>/<run name>-loop/feedback``)."""
    lakehouse = Path(config.paths.lakehouse)
    return sorted(path for path in lakehouse.glob(f"{config.dataset.name}*-{C.LOOP_SUFFIX}/feedback")
                  if path.is_dir())


def read_ids_file(path: str) -> list[str]:
    """One shop user id per line; blank lines skipped, the id otherwise taken as it is."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip()]
