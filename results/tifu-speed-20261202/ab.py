import sys, time
from pyspark.sql import functions as F
from recspark.entrypoints import pipeline_args
from recspark.session import get_spark
from recspark import constants as C
from recspark.utils.delta import read_table
from recspark.evaluation import tifu_knn as T
from recspark.evaluation.evaluate import SEQUENCES
from recspark.evaluation.tuning import score_lists
config, _, _ = pipeline_args(sys.argv[1:])
spark = get_spark(config.spark); spark.sparkContext.setLogLevel("ERROR")
eq = read_table(spark, config.table_path(C.GOLD, C.EVAL_QUERIES))
vq = eq.filter(F.col(C.SPLIT) == C.VALIDATION).persist(); vq.count()
vocab = read_table(spark, config.table_path(C.GOLD, C.ITEM_VOCAB))
seq = read_table(spark, config.table_path(C.GOLD, SEQUENCES))
def t(label, f):
    s = time.time(); r = f(); print(f"PROF {label:30s} {time.time()-s:7.1f} s", flush=True); return r
baskets = T.history_baskets(seq, ("train",), first_item_idx=config.features.first_item_idx)
vectors = T.user_vectors(baskets, 7, 0.9, 0.9).persist(); t("vectors", vectors.count)
near = T.user_neighbours(vectors, vq, 100, None).persist(); t("near", near.count)
orig = T._sum_by_key
def plain(rows, parts, *sums): return rows.groupBy("_key").agg(*sums)
for rnd in range(2):
    for name, fn in (("plain", plain), ("by key", orig)):
        T._sum_by_key = fn
        w = T.own_and_neighbour_weights(vectors, near, vq, 100)
        t(f"weights {name} r{rnd}", lambda: w.write.format("noop").mode("overwrite").save())
T._sum_by_key = orig
w = T.own_and_neighbour_weights(vectors, near, vq, 100)
full = w.persist(); t("persist full", full.count)
cut = T.reachable_weights(full, vectors, 10, 0.5, False).persist(); t("persist cut from full", cut.count)
for rnd in range(2):
    for name, ww in (("full", full), ("cut", cut)):
        lists = T.top_k_with_fillers(T.top_candidates(ww, vq, 0.8, False, 10), vocab, vq, 10, False)
        t(f"alpha 0.8 {name} r{rnd}", lambda: score_lists(lists, vq, 10))
