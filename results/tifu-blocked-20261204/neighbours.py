"""TIFU-KNN's neighbour search and test lists on bench23's Complete Journey gold (test queries, the
default point), timed; the neighbours and lists written to /tmp/near-<tag>, /tmp/lists-<tag> for a row-for-row comparison. Run once
from a clone at the commit before the blocked search (tag old), then after it (tag new); compare.py compares."""
import sys
import time
from pyspark.sql import functions as F
from recspark import constants as C
from recspark.config import load_config
from recspark.session import get_spark
from recspark.evaluation import evaluate as E
from recspark.evaluation import tifu_knn as T
from recspark.utils.delta import read_table

tag = sys.argv[1]
D = "/work/bench23"
config = load_config(["conf/local.yaml", "conf/datasets/completejourney.yaml"],
                     [f"paths.lakehouse={D}/lakehouse", f"paths.reports={D}/reports", f"paths.checkpoints={D}/checkpoints"])
spark = get_spark(config.spark)
ev = config.evaluate
kept = max(E.KEPT_K, ev.k)
queries = read_table(spark, config.table_path(C.GOLD, C.EVAL_QUERIES)).filter(F.col(C.SPLIT) == C.TEST).persist()
vocab = read_table(spark, config.table_path(C.GOLD, C.ITEM_VOCAB))
sequences = read_table(spark, config.table_path(C.GOLD, E.SEQUENCES))
queries.count()
t = time.perf_counter()
tuning = E.choose_tifu(sequences, vocab, None, config)
chosen = tuning["chosen"]
baskets = T.history_baskets(sequences, E.TEST_HISTORY_SPLITS, first_item_idx=config.features.first_item_idx)
vectors = T.user_vectors(baskets, chosen["group_count"], chosen["within_decay"], chosen["group_decay"]).persist()
print(f"{tag} vectors: {vectors.count():,} rows, {time.perf_counter() - t:.1f} s", flush=True)
t = time.perf_counter()
near = T.user_neighbours(vectors, queries, chosen["neighbours"]).persist()
print(f"{tag} neighbours: {near.count():,} rows, {time.perf_counter() - t:.1f} s", flush=True)
near.write.mode("overwrite").parquet(f"/tmp/near-{tag}")
t = time.perf_counter()
if hasattr(T, "reachable_weights"):  # before the blocked weights
    weights = T.reachable_weights(T.own_and_neighbour_weights(vectors, near, queries, chosen["neighbours"]), vectors,
                                  kept, chosen["alpha"], ev.exclude_seen).persist()
else:
    weights = T.own_and_neighbour_weights(vectors, near, queries, chosen["neighbours"],
                                          reachable=(kept, chosen["alpha"])).persist()
print(f"{tag} weights: {weights.count():,} rows, {time.perf_counter() - t:.1f} s", flush=True)
t = time.perf_counter()
lists = T.top_k_with_fillers(T.top_candidates(weights, queries, chosen["alpha"], ev.exclude_seen, kept), vocab,
                             queries, kept, ev.exclude_seen)
lists.write.mode("overwrite").parquet(f"/tmp/lists-{tag}")
print(f"{tag} lists: {time.perf_counter() - t:.1f} s", flush=True)
