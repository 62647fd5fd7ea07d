"""Times TIFU-KNN's parts on a lakehouse's gold tables (validation grid, as choose_tifu)."""
import sys, time, json
from pyspark.sql import functions as F
from recspark.utils.jobs import parse_job_args, job_parser
from recspark.config import load_config
from recspark.session import get_spark
from recspark import constants as C
from recspark.utils.delta import read_table
from recspark.evaluation import tifu_knn as T
from recspark.evaluation.tuning import score_lists
from recspark.evaluation.evaluate import SEQUENCES

args = sys.argv[1:]
from recspark.entrypoints import pipeline_args
config, _, _ = pipeline_args(args)
spark = get_spark(config.spark)
spark.sparkContext.setLogLevel("ERROR")
ev = config.evaluate
eq = read_table(spark, config.table_path(C.GOLD, C.EVAL_QUERIES))
vq = eq.filter(F.col(C.SPLIT) == C.VALIDATION).persist()
vocab = read_table(spark, config.table_path(C.GOLD, C.ITEM_VOCAB))
seq = read_table(spark, config.table_path(C.GOLD, SEQUENCES))
def t(label, f):
    s = time.time(); r = f(); print(f"PROF {label:30s} {time.time()-s:7.1f} s", flush=True); return r
vq.count()
baskets = T.history_baskets(seq, ("train",), first_item_idx=config.features.first_item_idx).persist()
t("baskets", baskets.count)
vectors = T.user_vectors(baskets, 7, 0.9, 0.9).persist()
t("vectors", vectors.count)
near = T.user_neighbours(vectors, vq, 100, None).persist()
t("near", near.count)
weights = T.own_and_neighbour_weights(vectors, near, vq, 100).persist()
n = t("weights", weights.count); print("weights rows", n)
out = {}
for a in ev.tifu_alphas:
    lists = T.top_k_with_fillers(T.top_candidates(weights, vq, float(a), ev.exclude_seen, ev.k), vocab, vq, ev.k, ev.exclude_seen)
    m = t(f"alpha {a}", lambda: score_lists(lists, vq, ev.k))
    out[a] = m
print(json.dumps(out, sort_keys=True))
