"""The queries behind the notebooks (recspark/notebooks.py) on tables small enough to count by hand.
The notebooks themselves are executed on test_pipeline's run (test_the_notebooks_run_on_the_run)."""
from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recspark import constants as C
from recspark import notebooks as nb
from recspark.config import Config, load_config
from recspark.pipeline.privacy import pseudonym_key, pseudonymise
from recspark.utils.delta import overwrite_table

EVENTS = [  # user, item, type, when, session, quantity, price
    ("u1", "a", "purchase", "2024-01-01 10:00", "s1", 1.0, 2.0),
    ("u1", "b", "purchase", "2024-01-01 10:01", "s1", 2.0, 1.0),
    ("u1", "b", "purchase", "2024-01-01 10:02", "s1", 1.0, 1.0),  # the same item again: 2 distinct items
    ("u1", "a", "purchase", "2024-01-09 10:00", "s2", 1.0, 2.0),
    ("u1", "c", "view", "2024-01-09 10:05", "s2", 1.0, None),  # not a conversion
    ("u2", "c", "purchase", "2024-01-02 10:00", "s3", 1.0, 3.0),
    ("u2", "a", "purchase", "2024-01-10 10:00", "s4", 1.0, 2.0),
    ("u2", "a", "purchase", "2024-01-11 10:00", "s5", 1.0, 2.0),
    ("u2", "a", "purchase", "2024-01-12 10:00", "s6", 1.0, 2.0),
    ("u3", "d", "rate", "2024-01-03 10:00", "s7", 1.0, None),  # a rating is a basket; d has no catalogue row
]


@pytest.fixture(scope="module")
def config(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Config:
    root = tmp_path_factory.mktemp("notebooks")
    config = load_config(None, ["dataset.name=synthetic", f"paths.lakehouse={root}/lakehouse",
                                f"paths.reports={root}/reports", f"paths.checkpoints={root}/checkpoints",
                                "train.models=[repeatnet]"])
    events = spark.createDataFrame(
        [(u, i, t, dt.datetime.fromisoformat(w), s, q, p) for u, i, t, w, s, q, p in EVENTS],
        "user_id string, item_id string, event_type string, event_ts timestamp, session_id string, "
        "quantity double, price double")
    overwrite_table(events, config.table_path(C.SILVER, C.EVENTS))
    items = spark.createDataFrame([("a", "X"), ("b", "X"), ("c", "Y")], "item_id string, category string")
    overwrite_table(items, config.table_path(C.SILVER, C.ITEMS))
    return config


def rows(frame: pd.DataFrame) -> list[tuple]:
    return [tuple(r) for r in frame.itertuples(index=False)]


def test_events_by_week_counts_events_and_users_per_monday_and_type(spark: SparkSession, config: Config) -> None:
    assert rows(nb.events_by_week(spark, config)) == [
        (dt.date(2024, 1, 1), "purchase", 4, 2), (dt.date(2024, 1, 1), "rate", 1, 1),
        (dt.date(2024, 1, 8), "purchase", 4, 2), (dt.date(2024, 1, 8), "view", 1, 1)]


def test_activity_counts_users_by_baskets_in_powers_of_two(spark: SparkSession, config: Config) -> None:
    # u3 one basket (a rating), u1 two, u2 four.
    assert rows(nb.activity_histogram(spark, config)) == [(1, 1, 1), (2, 1, 2), (4, 1, 4)]


def test_basket_sizes_count_distinct_items_and_cap_the_largest(spark: SparkSession, config: Config) -> None:
    assert rows(nb.basket_sizes(spark, config)) == [(1, 6), (2, 1)]
    assert rows(nb.basket_sizes(spark, config, cap=1)) == [(1, 7)]


def test_category_popularity_counts_purchases_buyers_items_and_share(spark: SparkSession, config: Config) -> None:
    assert rows(nb.category_popularity(spark, config)) == [
        ("X", 7, 2, 2, 7 / 9), (nb.UNKNOWN_CATEGORY, 1, 1, 1, 1 / 9), ("Y", 1, 1, 1, 1 / 9)]
    assert list(nb.category_popularity(spark, config, top=1)["category"]) == ["X"]


def test_metrics_table_puts_each_model_against_buy_again() -> None:
    report = {"models": {"most_popular": {"ndcg_at_k": 0.2, "hit_rate_at_k": 0.5},
                         "repeat_purchase": {"ndcg_at_k": 0.4, "hit_rate_at_k": 0.8},
                         "repeatnet": {"ndcg_at_k": 0.5, "hit_rate_at_k": 0.9}}}
    table = nb.metrics_table(report)
    assert list(table.index) == ["most_popular", "repeat_purchase", "repeatnet"]
    assert list(table["ndcg_vs_buy_again"]) == pytest.approx([0.5, 1.0, 1.25])
    assert "ndcg_vs_buy_again" not in nb.metrics_table({"models": {"m": {"ndcg_at_k": 0.1}}}).columns


def test_next_basket_flags_the_listed_and_the_bought_items_of_the_test_split(spark: SparkSession, config: Config) -> None:
    """The served model's test list of this run (top k) against the test split's items: one row per
    item of either; other runs, other models, other users and the validation split stay out."""
    key = pseudonym_key(config.privacy.secret_scope)
    me = spark.range(1).select(pseudonymise(F.lit("shop-1"), key).alias("p")).first()["p"]
    predictions = spark.createDataFrame(
        [("r1", "repeatnet", 1, "a", 0.9, "shop-1"), ("r1", "repeatnet", 2, "b", 0.8, "shop-1"),
         ("r1", "repeatnet", 3, "c", 0.7, "shop-1"), ("r1", "repeatnet", 4, "e", 0.6, "shop-1"),  # beyond k
         ("r1", "most_popular", 1, "f", 0.9, "shop-1"), ("r0", "repeatnet", 1, "g", 0.9, "shop-1"),
         ("r1", "repeatnet", 1, "h", 0.9, "shop-2")],
        "run_id string, model_name string, rank int, item_id string, score double, user_id string")
    overwrite_table(predictions, config.predictions_path)
    queries = spark.createDataFrame([(me, C.TEST, ["b", "d"]), (me, C.VALIDATION, ["a"]), ("u_other", C.TEST, ["a"])],
                                    "user_id string, split string, relevant array<string>")
    overwrite_table(queries, config.table_path(C.GOLD, C.EVAL_QUERIES))

    found = nb.household_next_basket(spark, config, {C.RUN_ID: "r1", "k": 3}, "shop-1")
    assert [(r.item_id, None if pd.isna(r.rank) else int(r.rank), r.in_list, r.bought_next, r.category)
            for r in found.itertuples()] == [
        ("a", 1, True, False, "X"), ("b", 2, True, True, "X"), ("c", 3, True, False, "Y"), ("d", None, False, True, None)]


def test_household_history_is_its_own_baskets_by_pseudonym(spark: SparkSession, config: Config, tmp_path) -> None:
    key = pseudonym_key(config.privacy.secret_scope)
    events = (spark.createDataFrame(
        [("shop-7", "a", "purchase", dt.datetime(2024, 2, 1), "t1", 2.0, 2.0),
         ("shop-7", "b", "purchase", dt.datetime(2024, 2, 1), "t1", 1.0, 1.0),
         ("shop-7", "a", "purchase", dt.datetime(2024, 2, 8), "t2", 1.0, 2.0),
         ("shop-8", "a", "purchase", dt.datetime(2024, 2, 8), "t3", 1.0, 2.0)],
        "user_id string, item_id string, event_type string, event_ts timestamp, session_id string, "
        "quantity double, price double")
        .withColumn(C.USER_ID, pseudonymise(C.USER_ID, key)))
    own = load_config(None, ["dataset.name=synthetic", f"paths.lakehouse={tmp_path}/lakehouse"])
    overwrite_table(events, own.table_path(C.SILVER, C.EVENTS))
    overwrite_table(spark.createDataFrame([("a", "X")], "item_id string, category string"), own.table_path(C.SILVER, C.ITEMS))

    assert rows(nb.household_baskets(spark, own, "shop-7")) == [
        (pd.Timestamp("2024-02-01"), 2, 5.0), (pd.Timestamp("2024-02-08"), 1, 2.0)]
    assert rows(nb.household_favourites(spark, own, "shop-7")) == [
        ("a", 2, pd.Timestamp("2024-02-08"), "X"), ("b", 1, pd.Timestamp("2024-02-01"), None)]


def test_loop_cycles_are_absent_before_a_loop_and_numbered_from_one(config: Config) -> None:
    assert nb.loop_cycles(config) is None
    folder = config.reports_dir / "loop"
    folder.mkdir(parents=True)
    (folder / "loop.json").write_text(json.dumps({"cycles": [{"cycle": 0, "variant": "warm", "ndcg": 0.3},
                                                             {"cycle": 1, "variant": "warm", "ndcg": 0.2}]}))
    assert rows(nb.loop_cycles(config)[["cycle", "variant", "ndcg"]]) == [(1, "warm", 0.3), (2, "warm", 0.2)]


def test_parameters_are_assigned_after_the_tagged_cell() -> None:
    import nbformat

    cells = [nbformat.v4.new_markdown_cell("# title"), nbformat.v4.new_code_cell("conf_files = []"),
             nbformat.v4.new_code_cell("print(conf_files)")]
    cells[1].metadata["tags"] = [nb.PARAMETERS_TAG]
    notebook = nb.with_parameters(nbformat.v4.new_notebook(cells=cells), {"conf_files": ["a.yaml"], "overrides": ["x=1"]})
    assert [cell.source for cell in notebook.cells[1:]] == [
        "conf_files = []", "# Parameters of this run\nconf_files = ['a.yaml']\noverrides = ['x=1']", "print(conf_files)"]
    with pytest.raises(ValueError, match="no cell tagged 'parameters'"):
        nb.with_parameters(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), {"x": 2})
