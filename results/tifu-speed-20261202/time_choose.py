"""choose_tifu (validation grid) and the test lists, as evaluate runs them; works at e732478 and after."""
import sys, time, json
from pyspark.sql import functions as F
from recspark.entrypoints import pipeline_args
from recspark.session import get_spark
from recspark import constants as C
from recspark.utils.delta import read_table
from recspark.evaluation import tifu_knn as T
from recspark.evaluation import evaluate as E
from recspark.evaluation.tuning import score_lists
config, _, _ = pipeline_args(sys.argv[1:])
spark = get_spark(config.spark); spark.sparkContext.setLogLevel("ERROR")
ev = config.evaluate
eq = read_table(spark, config.table_path(C.GOLD, C.EVAL_QUERIES))
vocab = read_table(spark, config.table_path(C.GOLD, C.ITEM_VOCAB))
seq = read_table(spark, config.table_path(C.GOLD, E.SEQUENCES))
queries = eq.filter(F.col(C.SPLIT) == C.TEST)
s = time.time(); tuning = E.choose_tifu(seq, vocab, eq, config); t1 = time.time() - s
print(f"PROF choose_tifu {t1:.1f} s", flush=True)
for g in tuning["grid"]:
    print("GRID", g["alpha"], g["seconds"], json.dumps(g["validation"], sort_keys=True))
print("BUILD", tuning["build_seconds"])
s = time.time()
out = E.tifu_test_weights(seq, queries, tuning, config, E.KEPT_K) if "k" in E.tifu_test_weights.__code__.co_varnames else E.tifu_test_weights(seq, queries, tuning, config)
listed = out[1] if isinstance(out, tuple) else out[0]
lists = T.top_k_with_fillers(T.top_candidates(listed, queries, tuning["chosen"]["alpha"], ev.exclude_seen, E.KEPT_K), vocab, queries, E.KEPT_K, ev.exclude_seen).persist()
n = lists.count(); t2 = time.time() - s
print(f"PROF test lists {t2:.1f} s rows {n}", flush=True)
print("TEST", json.dumps(score_lists(lists.filter(F.col(C.RANK) <= ev.k), queries, ev.k), sort_keys=True))
rows = sorted((r[C.USER_ID], r[C.RANK], r[C.ITEM_ID], r[C.SCORE]) for r in lists.collect())
import hashlib; print("LISTS sha", hashlib.sha256(repr(rows).encode()).hexdigest())
