"""Unity Catalog tables: with paths.catalog and paths.schema every table is the catalog table
``catalog.schema.<layer>_<table>``, written with saveAsTable and read with spark.table; without them,
Delta folders under the lakehouse as before.

Locally the catalog is Spark's own (``spark_catalog``) and the schema a database whose location is a
temporary folder: its managed tables land there, as Unity Catalog's land in the schema's storage.
The real stages (ingest and prepare of test_pipeline's shop), the recommendations table's
run partitions and the history purge of an erasure run against it.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import Config, ConfigError, load_config
from recspark.recommendations import COLUMNS, write_run
from recspark.stages import ingest_stage, prepare_stage
from recspark.utils.delta import (is_table_name, merge_into, purge_history, read_table, row_count, table_exists,
                                  table_location, table_version)
from test_pipeline import USERS, pipeline_overrides, shop

SCHEMA = "recspark_catalog_test"


def test_table_names_resolve_both_ways() -> None:
    local = load_config(None, ["paths.lakehouse=lake"])
    assert local.table_path(C.BRONZE, C.EVENTS) == "lake/completejourney/bronze/events"
    assert local.recommendations_path == "lake/completejourney/recommendations"
    assert local.predictions_path == "lake/completejourney/evaluation/predictions"
    assert not is_table_name(local.table_path(C.GOLD, C.ITEM_VOCAB))

    named = load_config(None, ["paths.catalog=main", "paths.schema=shop", "dataset.variant=nbr"])
    assert named.table_path(C.BRONZE, C.EVENTS) == "main.shop.bronze_events"  # shared by the variants
    assert named.table_path(C.SILVER, C.EVENTS) == "main.shop.silver_events"
    assert named.table_path(C.GOLD, C.ITEM_VOCAB) == "main.shop.gold_nbr_item_vocab"  # the protocol's own
    assert named.recommendations_path == "main.shop.recommendations_nbr"
    assert named.predictions_path == "main.shop.evaluation_nbr_predictions"
    assert all(is_table_name(ref) for ref in (named.table_path(C.GOLD, C.ITEM_VOCAB), named.recommendations_path))
    # Files stay files: Petastorm's cache under the lakehouse folder (a volume on Databricks).
    assert named.petastorm_cache_url.startswith("file:///") and "_petastorm_cache" in named.petastorm_cache_url


@pytest.mark.parametrize("overrides, message", [
    (["paths.catalog=main"], "paths.schema: set paths.catalog and paths.schema together"),
    (["paths.schema=shop"], "paths.catalog: set paths.catalog and paths.schema together"),
    (["paths.catalog=main", "paths.schema=my-shop"], "paths.schema: 'my-shop' is not a plain identifier"),
    (["paths.catalog=main;drop", "paths.schema=shop"], "paths.catalog: 'main;drop' is not a plain identifier"),
])
def test_bad_catalog_settings_fail_before_spark(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.fixture(scope="module")
def catalog_config(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Config:
    root = tmp_path_factory.mktemp("catalog")
    # spark.catalog.listTables decodes its rows with an encoder that interpreted evaluation (the
    # suite's NO_CODEGEN, conftest.py) cannot build: Spark's default factory mode for this module.
    mode = spark.conf.get("spark.sql.codegen.factoryMode", "FALLBACK")
    spark.conf.set("spark.sql.codegen.factoryMode", "FALLBACK")
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS spark_catalog.{SCHEMA} LOCATION '{root / 'warehouse'}'")
    yield load_config(None, [*pipeline_overrides(root), "paths.catalog=spark_catalog", f"paths.schema={SCHEMA}"])
    spark.sql(f"DROP SCHEMA IF EXISTS spark_catalog.{SCHEMA} CASCADE")
    spark.conf.set("spark.sql.codegen.factoryMode", mode)


@pytest.fixture(scope="module")
def staged(spark: SparkSession, catalog_config: Config) -> dict:
    """ingest and prepare of the shop into the catalog, and a second ingest of the same. (Features
    writes its gold tables through the same overwrite_table / read_table as prepare; it is left out
    for the suite's time: it doubles this fixture and every gold table adds to the erasure.)"""
    ingest_stage(spark, catalog_config, shop(spark))
    prepare_stage(spark, catalog_config)
    events = catalog_config.table_path(C.BRONZE, C.EVENTS)
    version = table_version(spark, events)
    again = ingest_stage(spark, catalog_config, shop(spark))
    return {"version": version, "again": again}


def test_the_stages_write_managed_tables_into_the_schema(spark: SparkSession, catalog_config: Config,
                                                         staged: dict) -> None:
    tables = {table.name for table in spark.catalog.listTables(f"spark_catalog.{SCHEMA}")}
    assert {"bronze_events", "bronze_items", "bronze_users", "bronze_quarantine", "bronze_run_log",
            "bronze_identity_map", "silver_events", "silver_items"} <= tables
    warehouse = Path(catalog_config.paths.lakehouse).parent / "warehouse"
    for table in tables:
        ref = f"spark_catalog.{SCHEMA}.{table}"
        assert table_exists(spark, ref)
        assert Path(table_location(spark, ref).removeprefix("file:")).parent == warehouse, table
        detail = spark.sql(f"DESCRIBE DETAIL {ref}").first()
        assert detail["format"] == "delta"
    # No Delta folder under the lakehouse: it holds files only.
    lakehouse = Path(catalog_config.paths.lakehouse)
    assert not lakehouse.exists() or not list(lakehouse.rglob("_delta_log"))


def test_the_tables_read_by_name_hold_the_shop(spark: SparkSession, catalog_config: Config, staged: dict) -> None:
    events = catalog_config.table_path(C.BRONZE, C.EVENTS)
    assert row_count(spark, events) == USERS * 6 * 3
    assert read_table(spark, events).select(C.USER_ID).distinct().count() == USERS
    # silver carries pseudonyms, not the shop's ids
    silver = read_table(spark, catalog_config.table_path(C.SILVER, C.EVENTS))
    assert silver.filter(F.col(C.USER_ID).startswith("user-")).count() == 0
    # The re-run's MERGE by name inserted nothing and committed nothing.
    assert table_version(spark, events) == staged["version"]
    assert all("0 new rows" in line for name, line in staged["again"].items() if "<-" in name)
    with pytest.raises(FileNotFoundError, match=f"no Delta table named spark_catalog.{SCHEMA}.gold_nothing"):
        read_table(spark, f"spark_catalog.{SCHEMA}.gold_nothing")


def test_recommendation_runs_and_purge_by_name(spark: SparkSession, catalog_config: Config, staged: dict) -> None:
    ref = catalog_config.recommendations_path

    def run(run_id: str, hour: int) -> DataFrame:
        at = dt.datetime(2024, 1, 1, hour)
        rows = [(f"user-{u:03d}", 1, "item-01", 0.5, 0.5, "popular", run_id, "mean_pool", "1", at) for u in range(3)]
        return spark.createDataFrame(rows, "user_id string, rank int, item_id string, score float, confidence float, "
                                           "reason string, run_id string, model_name string, model_version string, "
                                           "generated_at timestamp").select(*COLUMNS)

    write_run(run("a", 1), ref, "a", keep_runs=2)
    write_run(run("b", 2), ref, "b", keep_runs=2)
    written = write_run(run("c", 3), ref, "c", keep_runs=2)
    assert written["deleted_runs"] == ["a"]
    runs = sorted(r[C.RUN_ID] for r in read_table(spark, ref).select(C.RUN_ID).distinct().collect())
    assert runs == ["b", "c"]
    assert spark.sql(f"DESCRIBE DETAIL {ref}").first()["partitionColumns"] == [C.RUN_ID]
    # An erasure's purge by name: VACUUM, then the log truncated to the latest version.
    merge_into(spark, run("c", 3).limit(1), ref, [C.USER_ID, C.RUN_ID])  # one more commit, nothing new
    assert purge_history(spark, ref, 0) > 0
    with pytest.raises(Exception, match="(?i)version"):
        spark.read.option("versionAsOf", 0).table(ref).collect()
    assert sorted(r[C.RUN_ID] for r in read_table(spark, ref).select(C.RUN_ID).distinct().collect()) == ["b", "c"]


def test_evaluation_predictions_go_to_the_schema_one_run_replaced_at_a_time(spark: SparkSession,
                                                                           catalog_config: Config) -> None:
    """The evaluate stage's predictions table by name (utils.delta.replace_rows): a re-run of one run
    replaces its rows only, another run's stay."""
    from recspark.utils.delta import replace_rows

    ref = catalog_config.predictions_path
    assert ref == f"spark_catalog.{SCHEMA}.evaluation_predictions"

    def rows(run_id: str, item: str) -> DataFrame:
        return spark.createDataFrame([(run_id, "m", f"user-{u}", 1, item, 0.5) for u in range(3)],
                                     "run_id string, model_name string, user_id string, rank int, item_id string, score float")

    replace_rows(rows("a", "item-01"), ref, C.RUN_ID, "a")
    replace_rows(rows("b", "item-02"), ref, C.RUN_ID, "b")
    replace_rows(rows("a", "item-03"), ref, C.RUN_ID, "a")  # the re-run of run a
    got = sorted((r[C.RUN_ID], r[C.ITEM_ID]) for r in read_table(spark, ref).collect())
    assert got == [("a", "item-03")] * 3 + [("b", "item-02")] * 3


def test_erasure_finds_every_table_of_the_schema(spark: SparkSession, catalog_config: Config, staged: dict) -> None:
    """jobs/forget.py's erasure with catalog tables: the schema's tables are its targets, the person
    leaves each, the audit row goes to audit_erasures (runs last: it deletes from the tables above)."""
    from recspark.loop import cycle_config, loop_schema, start_world
    from recspark.pipeline.forget import audit_path, erasure_targets, forget

    # The replayed loop's copies go to a schema of its own: the data set's tables are not replaced.
    loop = loop_schema(catalog_config)
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS spark_catalog.{loop} "
              f"LOCATION '{Path(catalog_config.paths.lakehouse).parent / 'loop-warehouse'}'")
    events = catalog_config.table_path(C.BRONZE, C.EVENTS)
    silver = catalog_config.table_path(C.SILVER, C.EVENTS)
    all_silver = row_count(spark, silver)
    cut = read_table(spark, silver).agg(F.max(C.EVENT_TS)).first()[0]
    start_world(spark, catalog_config, cut)
    looped = cycle_config(catalog_config, "warm", cut).table_path(C.SILVER, C.EVENTS)
    assert looped == f"spark_catalog.{loop}.silver_events" and row_count(spark, silver) == all_silver
    assert 0 < row_count(spark, looped) < all_silver

    targets = {target.name: target.condition for target in erasure_targets(spark, catalog_config)}
    assert {"bronze_events", "bronze_identity_map", "silver_events", "recommendations", f"{loop}.silver_events", f"{loop}.bronze_identity_map"} <= set(targets)
    assert not any(name.startswith("audit_") for name in targets)
    # user-000's pseudonym, through the event ids bronze and silver share.
    theirs = read_table(spark, events).filter(F.col(C.USER_ID) == "user-000").select(C.EVENT_ID)
    pseudonym = read_table(spark, silver).join(theirs, C.EVENT_ID, "left_semi").select(C.USER_ID).distinct().collect()
    assert len(pseudonym) == 1
    assert read_table(spark, looped).filter(F.col(C.USER_ID) == pseudonym[0][0]).count() > 0
    before = row_count(spark, events)
    summary = forget(spark, catalog_config, ["user-000"])
    assert summary["ids"] == "1 requested, 1 in the identity map"
    assert row_count(spark, events) == before - 6 * 3
    assert read_table(spark, catalog_config.recommendations_path).filter(F.col(C.USER_ID) == "user-000").count() == 0
    for table in (looped, cycle_config(catalog_config, "warm", cut).table_path(C.BRONZE, "identity_map")):
        assert read_table(spark, table).filter(F.col(C.USER_ID) == pseudonym[0][0]).count() == 0, table
    spark.sql(f"DROP SCHEMA IF EXISTS spark_catalog.{loop} CASCADE")
    assert audit_path(catalog_config) == f"spark_catalog.{SCHEMA}.audit_erasures"
    assert row_count(spark, audit_path(catalog_config)) == 1
