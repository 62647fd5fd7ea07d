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
parts = int(spark.conf.get("spark.sql.shuffle.partitions"))
theirs = vectors.select(F.col(T.USER_IDX).alias(T.NEIGHBOUR_IDX), C.ITEM_IDX, F.col(T.WEIGHT).alias("_w"))
heaviest = Window.partitionBy(T.USER_IDX).orderBy(F.col(T.WEIGHT).desc(), C.ITEM_IDX)
for k, amin in [(10, 0.1), (10, 0.5), (100, 0.8), (50, 0.8)]:
    ownk = (vectors.withColumn("_r", F.row_number().over(heaviest)).filter(F.col("_r") == k).select(T.USER_IDX, F.col(T.WEIGHT).alias("_ownk")))
    j = (near.select(T.USER_IDX, T.NEIGHBOUR_IDX).repartition(parts, T.NEIGHBOUR_IDX).join(theirs.repartition(parts, T.NEIGHBOUR_IDX), T.NEIGHBOUR_IDX)
         .join(F.broadcast(ownk), T.USER_IDX, "left").filter(F.col("_ownk").isNull() | (F.col("_w") >= F.lit(amin / (1 - amin)) * F.col("_ownk")))
         .select(T._pair_key(T.USER_IDX, C.ITEM_IDX).alias("_key")).distinct())
    t(f"candidates k={k} amin={amin}", j.count)
