import time
from recspark import constants as C
from recspark.config import load_config
from recspark.session import get_spark
from recspark.utils.delta import read_table
import recspark.pipeline.features as ft
from pyspark.sql import functions as F, Window
config = load_config(["conf/local.yaml", "conf/datasets/completejourney.yaml"], ["paths.lakehouse=/work/p15/lakehouse"])
spark = get_spark(config.spark)
seq = read_table(spark, config.table_path(C.GOLD, "sequences"))
def t(name, df):
    s = time.time(); df.write.format("noop").mode("overwrite").save(); print(f"T {name:40s} {time.time()-s:6.1f}", flush=True)
fc = config.features
t("seq", seq); t("seq2", seq)
ev = config.ingest.event_types
st = seq.select(C.USER_ID, ft._steps_where((C.TRAIN,), ev).alias("_steps"))
t("steps_where", st)
steps = F.col("_steps")
boundaries = F.filter(F.when(F.size(steps) >= 2, F.sequence(F.lit(1), F.size(steps) - 1)).otherwise(F.array().cast("array<int>")),
        lambda p: F.element_at(steps, p)["b"] != F.element_at(steps, p + 1)["b"])
starts = st.select(C.USER_ID, "_steps", F.posexplode(boundaries).alias("_k", "_pos")).withColumn("_start", F.element_at(steps, F.col("_pos") + 1))
t("starts", starts.select("_k"))
rest = F.slice("_steps", F.col("_pos") + 1, F.size("_steps") - F.col("_pos"))
horizon = F.lit(int(fc.target_horizon_days * C.DAY_MICROS))
items = F.transform(F.filter(rest, lambda s: s["us"] < F.col("_start")["us"] + horizon), lambda s: s["i"])
t("items", starts.select(F.slice(F.array_distinct(F.filter(items, lambda i: i >= 66)), 1, 64).alias("_items")))
history = F.slice("_steps", F.greatest(F.lit(1), F.col("_pos") - fc.max_seq_len + 1), F.least(F.col("_pos"), F.lit(fc.max_seq_len)))
t("history", starts.select(history.alias("h")))
rows = starts.select(C.USER_ID, "_pos", history.alias("_history"), F.slice(F.array_distinct(F.filter(items, lambda i: i >= 66)), 1, 64).alias("_items")).filter(F.size("_items") > 0).withColumn("_rank", F.row_number().over(Window.partitionBy(C.USER_ID).orderBy(F.col("_pos").desc()))).filter(F.col("_rank") <= 40)
t("rows", rows)
t("rows+hist", rows.transform(lambda df: ft.with_history_columns(df, "_history", fc)))
