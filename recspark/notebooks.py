"""What the notebooks in ``notebooks/`` show, as functions: each reads what a run wrote and returns a
small pandas frame, aggregated in Spark (a notebook never collects a table), so that a notebook is a
page of plots and the queries are tested with the rest of the library.

- ``1_data.ipynb``: events over time, how active users are, basket sizes, category popularity;
- ``2_models.ipynb``: the evaluation report's tables and plots, training curves from MLflow, the
  replayed loop's cycles;
- ``3_household.ipynb``: one household's history, the list it is served (reasons, confidence) and,
  on the test split, the list the model gave against what the household bought next.

:func:`execute` runs them headless (``make notebooks``), each with the run's configuration (the same
``--conf-file`` / ``--set`` as the jobs) as its parameters.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import Config
from recspark.feedback import CONVERSIONS
from recspark.pipeline.privacy import broadcast_key, pseudonym_key, pseudonymise
from recspark.recommendations import GENERATED_AT
from recspark.utils.delta import read_table, table_exists

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = ("1_data.ipynb", "2_models.ipynb", "3_household.ipynb")
UNKNOWN_CATEGORY = "(no category)"


# -- 1: the data ---------------------------------------------------------------------------------

def _events(spark: SparkSession, config: Config) -> DataFrame:
    return read_table(spark, config.table_path(C.SILVER, C.EVENTS))


def _conversions(events: DataFrame) -> DataFrame:
    """Purchases (ratings on MovieLens): the events a basket is made of."""
    return events.filter(F.col(C.EVENT_TYPE).isin(*CONVERSIONS))


def events_by_week(spark: SparkSession, config: Config) -> pd.DataFrame:
    """Events and active users per week (Monday) and event type."""
    return (_events(spark, config)
            .withColumn("week", F.to_date(F.date_trunc("week", C.EVENT_TS)))
            .groupBy("week", C.EVENT_TYPE)
            .agg(F.count("*").alias("events"), F.countDistinct(C.USER_ID).alias("users"))
            .orderBy("week", C.EVENT_TYPE).toPandas())


def _power_of_two_bucket(column: str) -> F.Column:
    """1, 2, 4, 8, ...: the largest power of two not above the value (activity is long-tailed)."""
    return F.pow(F.lit(2), F.floor(F.log2(F.col(column)))).cast("long")


def activity_histogram(spark: SparkSession, config: Config) -> pd.DataFrame:
    """How many users made 1, 2-3, 4-7, ... baskets (sessions with a purchase or rating)."""
    baskets = (_conversions(_events(spark, config))
               .groupBy(C.USER_ID).agg(F.countDistinct(C.SESSION_ID).alias("baskets")))
    return (baskets.withColumn("baskets_from", _power_of_two_bucket("baskets"))
            .groupBy("baskets_from").agg(F.count("*").alias("users"), F.max("baskets").alias("baskets_max"))
            .orderBy("baskets_from").toPandas())


def basket_sizes(spark: SparkSession, config: Config, cap: int = 60) -> pd.DataFrame:
    """Baskets by their number of distinct items (sizes above ``cap`` counted as ``cap``)."""
    sizes = (_conversions(_events(spark, config))
             .groupBy(C.SESSION_ID).agg(F.countDistinct(C.ITEM_ID).alias("items")))
    return (sizes.withColumn("items", F.least(F.col("items"), F.lit(cap)))
            .groupBy("items").agg(F.count("*").alias("baskets")).orderBy("items").toPandas())


def category_popularity(spark: SparkSession, config: Config, top: int = 20) -> pd.DataFrame:
    """The ``top`` categories by purchases: purchases, buyers and distinct items bought, and the
    share of all purchases. Items without a catalogue row or category count as one group."""
    items = read_table(spark, config.table_path(C.SILVER, C.ITEMS)).select(C.ITEM_ID, C.CATEGORY)
    bought = (_conversions(_events(spark, config)).join(items, C.ITEM_ID, "left")
              .withColumn(C.CATEGORY, F.coalesce(F.col(C.CATEGORY), F.lit(UNKNOWN_CATEGORY))))
    # The total over the per-category rows (a few thousand), in the same job as the counts.
    return (bought.groupBy(C.CATEGORY)
            .agg(F.count("*").alias("purchases"), F.countDistinct(C.USER_ID).alias("buyers"),
                 F.countDistinct(C.ITEM_ID).alias("items"))
            .withColumn("share", F.col("purchases") / F.sum("purchases").over(Window.partitionBy()))
            .orderBy(F.desc("purchases"), C.CATEGORY).limit(top).toPandas())


# -- 2: the models -------------------------------------------------------------------------------

def load_report(config: Config) -> dict:
    """The evaluate stage's report (``reports/<dataset>/metrics.json``)."""
    path = config.reports_dir / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `make run` (or the evaluate stage) first")
    return json.loads(path.read_text())


def metrics_table(report: dict) -> pd.DataFrame:
    """One row per model (report order), one column per test metric, plus NDCG@K against the
    first re-buy baseline the report holds (repeat_purchase), when it holds one."""
    table = pd.DataFrame.from_dict(report["models"], orient="index")
    table.index.name = "model"
    if "repeat_purchase" in table.index and "ndcg_at_k" in table.columns:
        table["ndcg_vs_buy_again"] = table["ndcg_at_k"] / table.loc["repeat_purchase", "ndcg_at_k"]
    return table


def report_plots(config: Config, report: dict) -> dict[str, Path]:
    """The report's plots that exist on disk, by name (the report holds file names in the run's folder)."""
    folder = config.reports_dir / report[C.RUN_ID]
    return {name: folder / file for name, file in report.get("plots", {}).items() if (folder / file).is_file()}


def training_histories(config: Config, run_id: str | None = None) -> pd.DataFrame:
    """Per-epoch metrics of every training run MLflow holds for the data set's pipeline run
    ``run_id`` (default: the latest): model, what it was fitted on, epoch, metric, value."""
    from mlflow import MlflowClient

    from recspark.tracking import tracking_uri

    columns = ["model", "fit_on", "mlflow_run", "metric", "epoch", "value"]
    client = MlflowClient(tracking_uri(config.tracking, config.paths.checkpoints), registry_uri=config.tracking.registry_uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    if experiment is None:
        return pd.DataFrame(columns=columns)
    runs = client.search_runs([experiment.experiment_id], f"tags.dataset = '{config.run_name}'",
                              order_by=["attributes.start_time DESC"], max_results=200)
    if run_id is None and runs:
        run_id = runs[0].data.tags.get(C.RUN_ID)
    rows = []
    for run in runs:
        if run.data.tags.get(C.RUN_ID) != run_id:
            continue
        for metric in run.data.metrics:
            for point in client.get_metric_history(run.info.run_id, metric):
                rows.append((run.data.tags.get("model"), run.data.tags.get("fit_on", C.FIT_ON_TRAIN),
                             run.info.run_id, metric, point.step, point.value))
    return pd.DataFrame(rows, columns=columns).sort_values(["model", "fit_on", "metric", "epoch"], ignore_index=True)


def loop_cycles(config: Config) -> pd.DataFrame | None:
    """The replayed loop's table (``make loop``): one row per cycle (numbered from 1, as loop.md does)
    and variant, or None before any loop."""
    path = config.reports_dir / "loop" / "loop.json"
    if not path.is_file():
        return None
    cycles = pd.DataFrame(json.loads(path.read_text())["cycles"])
    return cycles.assign(cycle=cycles["cycle"] + 1)


# -- 3: one household ----------------------------------------------------------------------------

def latest_recommendations_run(spark: SparkSession, config: Config) -> str:
    """The run id of the latest scoring run in the recommendations table."""
    if not table_exists(spark, config.recommendations_path):
        raise FileNotFoundError(f"no recommendations at {config.recommendations_path}: run `make run` first")
    return (read_table(spark, config.recommendations_path)
            .orderBy(F.desc(GENERATED_AT), F.desc(C.RUN_ID)).first()[C.RUN_ID])


def pick_household(spark: SparkSession, config: Config, report: dict) -> str:
    """A household with both a served list and a test list of the served model: the smallest id,
    so that the choice is reproducible and not picked for how well the model did."""
    tested = (read_table(spark, config.predictions_path)
              .filter((F.col(C.RUN_ID) == report[C.RUN_ID]) & (F.col(C.MODEL_NAME) == config.scoring_model))
              .select(C.USER_ID))
    served = (read_table(spark, config.recommendations_path)
              .filter(F.col(C.RUN_ID) == latest_recommendations_run(spark, config)).select(C.USER_ID))
    first = tested.join(served, C.USER_ID, "left_semi").agg(F.min(C.USER_ID)).first()[0]
    if first is None:
        raise ValueError(f"no household has both a served list and a test list of {config.scoring_model}")
    return str(first)


def _pseudonym(user_id: str, config: Config) -> F.Column:
    """The household's silver id: silver and gold hold pseudonyms, never the shop's id."""
    return pseudonymise(F.lit(str(user_id)), broadcast_key(pseudonym_key(config.privacy.secret_scope)))


def _with_category(spark: SparkSession, config: Config, df: DataFrame) -> DataFrame:
    items = read_table(spark, config.table_path(C.SILVER, C.ITEMS)).select(C.ITEM_ID, C.CATEGORY)
    return df.join(items, C.ITEM_ID, "left")


def household_baskets(spark: SparkSession, config: Config, user_id: str) -> pd.DataFrame:
    """The household's baskets, oldest first: when, distinct items, spend (where prices exist)."""
    events = _conversions(_events(spark, config)).filter(F.col(C.USER_ID) == _pseudonym(user_id, config))
    return (events.groupBy(C.SESSION_ID)
            .agg(F.min(C.EVENT_TS).alias("at"), F.countDistinct(C.ITEM_ID).alias("items"),
                 F.sum(F.col(C.QUANTITY) * F.col(C.PRICE)).alias("spend"))
            .orderBy("at", C.SESSION_ID).drop(C.SESSION_ID).toPandas())


def household_favourites(spark: SparkSession, config: Config, user_id: str, top: int = 15) -> pd.DataFrame:
    """The items the household bought in most baskets, with category and last purchase."""
    events = _conversions(_events(spark, config)).filter(F.col(C.USER_ID) == _pseudonym(user_id, config))
    favourites = (events.groupBy(C.ITEM_ID)
                  .agg(F.countDistinct(C.SESSION_ID).alias("baskets"), F.max(C.EVENT_TS).alias("last_bought"))
                  .orderBy(F.desc("baskets"), F.desc("last_bought"), C.ITEM_ID).limit(top))
    return _with_category(spark, config, favourites).orderBy(F.desc("baskets"), F.desc("last_bought"), C.ITEM_ID).toPandas()


def household_served_list(spark: SparkSession, config: Config, user_id: str) -> pd.DataFrame:
    """The list the latest scoring run serves the household: rank, item, category, score,
    confidence and the reason shown with it."""
    run_id = latest_recommendations_run(spark, config)
    rows = (read_table(spark, config.recommendations_path)
            .filter((F.col(C.RUN_ID) == run_id) & (F.col(C.USER_ID).cast("string") == str(user_id)))
            .select(C.RANK, C.ITEM_ID, C.SCORE, C.CONFIDENCE, C.REASON, C.MODEL_NAME))
    return _with_category(spark, config, rows).orderBy(C.RANK).toPandas()


def household_next_basket(spark: SparkSession, config: Config, report: dict, user_id: str) -> pd.DataFrame:
    """On the test split: the served model's list (rank, item, category) and what the household
    bought next, one row per item of either, with ``in_list`` / ``bought_next`` flags."""
    listed = (read_table(spark, config.predictions_path)
              .filter((F.col(C.RUN_ID) == report[C.RUN_ID]) & (F.col(C.MODEL_NAME) == config.scoring_model)
                      & (F.col(C.USER_ID).cast("string") == str(user_id)) & (F.col(C.RANK) <= report["k"]))
              .select(C.ITEM_ID, C.RANK, F.lit(True).alias("in_list")))
    bought = (read_table(spark, config.table_path(C.GOLD, C.EVAL_QUERIES))
              .filter((F.col(C.USER_ID) == _pseudonym(user_id, config)) & (F.col(C.SPLIT) == C.TEST))
              .select(F.explode(C.RELEVANT).alias(C.ITEM_ID)).distinct()
              .select(F.col(C.ITEM_ID).cast(listed.schema[C.ITEM_ID].dataType).alias(C.ITEM_ID),
                      F.lit(True).alias("bought_next")))
    both = (listed.join(bought, C.ITEM_ID, "full")
            .fillna(False, subset=["in_list", "bought_next"]))
    return _with_category(spark, config, both).orderBy(F.col(C.RANK).asc_nulls_last(), C.ITEM_ID).toPandas()


# -- running them --------------------------------------------------------------------------------

PARAMETERS_TAG = "parameters"
# Between two notebooks the kernel forgets every name, so each notebook must run on its own; imported
# modules stay, and with them the Spark session (one JVM start for all the notebooks, not one each).
FORGET_NAMES = "%reset -f"


def with_parameters(notebook: Any, parameters: dict[str, Any]) -> Any:
    """The notebook with a cell assigning ``parameters`` after the cell tagged ``parameters`` (papermill's
    convention: the tagged cell keeps the defaults a reader sees, the injected one overrides them)."""
    import nbformat

    tagged = [i for i, cell in enumerate(notebook.cells) if PARAMETERS_TAG in cell.metadata.get("tags", [])]
    if not tagged:
        raise ValueError("the notebook has no cell tagged 'parameters'")
    injected = nbformat.v4.new_code_cell("# Parameters of this run\n" + "\n".join(f"{name} = {value!r}"
                                                                                for name, value in parameters.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    notebook.cells.insert(tagged[0] + 1, injected)
    return notebook


def execute(conf_files: Sequence[str], overrides: Sequence[str], out_dir: Path, *, cwd: Path | None = None,
            notebooks: Sequence[str] = NOTEBOOKS, timeout: int = 1800) -> list[Path]:
    """Runs each notebook headless (nbclient, one ipykernel of this interpreter for all of them) with the
    run's configuration as its parameters and writes the executed copy, outputs and plots included, to
    ``out_dir``. A failing cell raises naming the notebook and the cell; the copy is written up to it."""
    import asyncio

    return asyncio.run(_execute(list(conf_files), list(overrides), out_dir, cwd, notebooks, timeout))


async def _execute(conf_files: list[str], overrides: list[str], out_dir: Path, cwd: Path | None,
                   notebooks: Sequence[str], timeout: int) -> list[Path]:
    import nbformat
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    out_dir.mkdir(parents=True, exist_ok=True)
    kernel = AsyncKernelManager(kernel_name="python3")
    await kernel.start_kernel(cwd=str(cwd or Path.cwd()))
    written = []
    try:
        for name in notebooks:
            target = out_dir / name
            print(f"notebooks: {name} -> {target}", flush=True)
            notebook = with_parameters(nbformat.read(NOTEBOOKS_DIR / name, as_version=4),
                                       {"conf_files": conf_files, "overrides": overrides})
            for source in (notebook, nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(FORGET_NAMES)])):
                client = NotebookClient(source, km=kernel, timeout=timeout, kernel_name="python3")
                try:
                    await client.async_execute()
                except CellExecutionError as error:
                    nbformat.write(notebook, target)
                    raise RuntimeError(f"notebook {name} failed (executed copy up to the cell: {target}):\n{error}") from None
                finally:
                    if client.kc is not None:
                        client.kc.stop_channels()
            nbformat.write(notebook, target)
            written.append(target)
    finally:
        await kernel.shutdown_kernel(now=True)
    return written
