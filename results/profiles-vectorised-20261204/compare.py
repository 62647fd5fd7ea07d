"""The old and new tables of tables.py compared row for row (exceptAll both ways: every value bit for bit)."""
from pyspark.sql import SparkSession
spark = SparkSession.builder.master("local[2]").getOrCreate()
spark.sparkContext.setLogLevel("ERROR")
for name in ("train_baskets", "eval_queries"):
    a, b = spark.read.parquet(f"/tmp/{name}-old"), spark.read.parquet(f"/tmp/{name}-new")
    print(name, a.count(), b.count(), "differ:", a.exceptAll(b).count(), b.exceptAll(a).count(), flush=True)
