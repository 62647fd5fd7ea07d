import sys, time
from pyspark.sql import functions as F, Window
from recspark.entrypoints import pipeline_args
from recspark.session import get_spark
from recspark import constants as C
from recspark.utils.delta import read_table
from recspark.evaluation import tifu_knn as T
from recspark.evaluation.evaluate import SEQUENCES
config, _, _ = pipeline_args(sys.argv[1:])
spark = get_spark(config.spark); spark.sparkContext.setLogLevel("ERROR")
eq = read_table(spark, config.table_path(C.GOLD, C.EVAL_QUERIES))
vq = eq.filter(F.col(C.SPLIT) == C.VALIDATION).persist(); vq.count()
seq = read_table(spark, config.table_path(C.GOLD, SEQUENCES))
def t(label, f):
    s = time.time(); r = f(); print(f"PROF {label:30s} {time.time()-s:7.1f} s -> {r}", flush=True); return r
baskets = T.history_baskets(seq, ("train",), first_item_idx=config.features.first_item_idx)
vectors = T.user_vectors(baskets, 7, 0.9, 0.9).persist(); t("vectors", vectors.count)
near = T.user_neighbours(vectors, vq, 100, None).persist(); t("near", near.count)
# (b) int keys only
index = vectors.select(C.USER_ID, T.USER_IDX).distinct().join(vq.select(C.USER_ID).distinct(), C.USER_ID, "left_semi")
kept = near.select(T.USER_IDX, T.NEIGHBOUR_IDX)
found = kept.groupBy(T.USER_IDX).agg(F.count(F.lit(1)).alias("_found"))
pairs = kept.withColumn("_self", F.lit(False)).unionByName(index.select(T.USER_IDX, F.col(T.USER_IDX).alias(T.NEIGHBOUR_IDX), F.lit(True).alias("_self")))
theirs = vectors.select(F.col(T.USER_IDX).alias(T.NEIGHBOUR_IDX), C.ITEM_IDX, F.col(T.WEIGHT).alias("_w"))
parts = 200 if len(sys.argv) < 0 else int(spark.conf.get("spark.sql.shuffle.partitions"))
print("parts", parts)
joined = pairs.repartition(parts, T.NEIGHBOUR_IDX).join(theirs.repartition(parts, T.NEIGHBOUR_IDX), T.NEIGHBOUR_IDX)
t("join only count", joined.count)
summed = (joined.groupBy(T._pair_key(T.USER_IDX, C.ITEM_IDX).alias("_key"))
          .agg(F.sum(F.when(F.col("_self"), F.col("_w"))).alias("_own"), F.sum(F.when(~F.col("_self"), F.col("_w"))).alias("_sum")))
b = summed.select(T._high("_key").alias(T.USER_IDX), T._low("_key").alias(C.ITEM_IDX), "_own", "_sum").join(F.broadcast(found), T.USER_IDX, "left").select(T.USER_IDX, C.ITEM_IDX, F.coalesce("_own", F.lit(0.0)).alias("_own"), F.coalesce(F.col("_sum") / F.col("_found"), F.lit(0.0)).alias("_nbr"))
t("agg noop (int keys)", lambda: b.write.format("noop").mode("overwrite").save())
# (c) pruned: own_k per user from vectors
k = 10; amin = 0.1
heaviest = Window.partitionBy(T.USER_IDX).orderBy(F.col(T.WEIGHT).desc(), C.ITEM_IDX)
ownk = (vectors.withColumn("_r", F.row_number().over(heaviest)).filter(F.col("_r") == k).select(T.USER_IDX, F.col(T.WEIGHT).alias("_ownk")))
c = b.join(F.broadcast(ownk), T.USER_IDX, "left").filter(F.col("_ownk").isNull() | (F.col("_own") > 0) | (F.col("_nbr") * (1 - amin) >= amin * F.col("_ownk") - 1e-12)).persist()
t("pruned persist count", c.count)
a = T.own_and_neighbour_weights(vectors, near, vq, 100)
t("current noop", lambda: a.write.format("noop").mode("overwrite").save())
