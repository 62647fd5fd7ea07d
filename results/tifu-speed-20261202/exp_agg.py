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
index = vectors.select(C.USER_ID, T.USER_IDX).distinct().join(vq.select(C.USER_ID).distinct(), C.USER_ID, "left_semi")
kept = near.select(T.USER_IDX, T.NEIGHBOUR_IDX)
pairs = kept.withColumn("_self", F.lit(False)).unionByName(index.select(T.USER_IDX, F.col(T.USER_IDX).alias(T.NEIGHBOUR_IDX), F.lit(True).alias("_self")))
theirs = vectors.select(F.col(T.USER_IDX).alias(T.NEIGHBOUR_IDX), C.ITEM_IDX, F.col(T.WEIGHT).alias("_w"))
for parts in (8, 32):
    joined = pairs.repartition(parts, T.NEIGHBOUR_IDX).join(theirs.repartition(parts, T.NEIGHBOUR_IDX), T.NEIGHBOUR_IDX).withColumn("_key", T._pair_key(T.USER_IDX, C.ITEM_IDX))
    agg = dict(_own=F.sum(F.when(F.col("_self"), F.col("_w"))), _sum=F.sum(F.when(~F.col("_self"), F.col("_w"))))
    cur = joined.groupBy("_key").agg(*[v.alias(k) for k, v in agg.items()])
    t(f"current parts={parts}", lambda: cur.write.format("noop").mode("overwrite").save())
    v1 = joined.repartition(parts, "_key").groupBy("_key").agg(*[v.alias(k) for k, v in agg.items()])
    t(f"repartition by key parts={parts}", lambda: v1.write.format("noop").mode("overwrite").save())
# broadcast the pairs instead: join theirs with pairs by neighbour via broadcast (pairs 210k rows)
joined = theirs.join(F.broadcast(pairs), T.NEIGHBOUR_IDX).withColumn("_key", T._pair_key(T.USER_IDX, C.ITEM_IDX))
v2 = joined.repartition(8, "_key").groupBy("_key").agg(F.sum(F.when(F.col("_self"), F.col("_w"))).alias("_own"), F.sum(F.when(~F.col("_self"), F.col("_w"))).alias("_sum"))
t("broadcast pairs, repartition key", lambda: v2.write.format("noop").mode("overwrite").save())
