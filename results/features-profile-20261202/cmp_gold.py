import sys
from pyspark.sql import SparkSession, functions as F
from delta import configure_spark_with_delta_pip
b = SparkSession.builder.master("local[2]").config("spark.sql.extensions","io.delta.sql.DeltaSparkSessionExtension").config("spark.sql.catalog.spark_catalog","org.apache.spark.sql.delta.catalog.DeltaCatalog").config("spark.driver.memory","6g").config("spark.jars", ",".join(__import__("glob").glob("/work/main/.jars/*.jar")))
spark = b.getOrCreate(); spark.sparkContext.setLogLevel("ERROR")
old, new = sys.argv[1], sys.argv[2]
for t in ["train_baskets","eval_queries","refit_baskets","serving_histories","serve_baskets"]:
    a = spark.read.format("delta").load(f"{old}/{t}"); c = spark.read.format("delta").load(f"{new}/{t}")
    d1, d2 = a.exceptAll(c).count(), c.exceptAll(a).count()
    ai = a.exceptAll(a.limit(0)).drop("repeat_features"); ci = c.drop("repeat_features")
    i1 = ai.exceptAll(ci).count()
    print(t, a.count(), c.count(), "diff rows", d1, d2, "diff ignoring features", i1, flush=True)
    if d1:
        keycols = [x for x in a.columns if x != "repeat_features"]
        j = a.alias("a").join(c.alias("c"), keycols).select(F.arrays_zip(F.col("a.repeat_features").alias("x"), F.col("c.repeat_features").alias("y")).alias("z"))
        j = j.select(F.explode("z").alias("p")).select(F.abs(F.col("p.x")-F.col("p.y")).alias("d"), F.abs(F.col("p.x")).alias("v"))
        print("   max abs diff", j.agg(F.max("d"), F.sum((F.col("d")>0).cast("int")), F.count("*")).first(), flush=True)
