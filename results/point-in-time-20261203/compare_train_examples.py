from pyspark.sql import functions as F
from recspark.session import get_spark
spark = get_spark()
p = "/work/pit/lake/completejourney/gold/train_examples"
hist = spark.sql(f"DESCRIBE HISTORY delta.`{p}`").select("version", "timestamp").orderBy("version").collect()
print(hist)
new_v, old_v = hist[-1].version, hist[-2].version
def rd(v):
    df = spark.read.format("delta").option("versionAsOf", v).load(p)
    return df.select("user_id", "history", "history_types", "history_gaps", "target",
                     F.transform("user_vector", lambda x: F.round(x, 5)).alias("uv"))
a, b = rd(old_v), rd(new_v)
print("rows", a.count(), b.count(), "old-not-new", a.exceptAll(b).count(), "new-not-old", b.exceptAll(a).count())
