"""The old and new runs of neighbours.py compared row for row (similarities at 10 decimals)."""
from pyspark.sql import SparkSession, functions as F
spark = SparkSession.builder.master("local[2]").getOrCreate()
spark.sparkContext.setLogLevel("ERROR")
for name in ("near", "lists"):
    a, b = spark.read.parquet(f"/tmp/{name}-old"), spark.read.parquet(f"/tmp/{name}-new")
    if name == "near":
        a = a.withColumn("similarity", F.round("similarity", 10)); b = b.withColumn("similarity", F.round("similarity", 10))
    print(name, a.count(), b.count(), "differ:", a.exceptAll(b).count(), b.exceptAll(a).count())
