"""Times each of evaluate's test rankings alone (noop writes), on bench23's Complete Journey lakehouse."""
import time
from pyspark.sql import functions as F
from recspark import constants as C
from recspark.config import load_config
from recspark.session import get_spark
from recspark.evaluation import evaluate as E
from recspark.evaluation import tifu_knn as T
from recspark.evaluation.baselines import most_popular, repeat_purchase
from recspark.scoring import recommend, require_model_inputs
from recspark.utils.delta import read_table

D = "/work/bench23"
config = load_config(["conf/local.yaml", "conf/datasets/completejourney.yaml"],
                     [f"paths.lakehouse={D}/lakehouse", f"paths.reports={D}/reports", f"paths.checkpoints={D}/checkpoints"])
spark = get_spark(config.spark)
ev = config.evaluate
kept = max(E.KEPT_K, ev.k)
eq = read_table(spark, config.table_path(C.GOLD, C.EVAL_QUERIES))
queries = eq.filter(F.col(C.SPLIT) == C.TEST)
vocab = read_table(spark, config.table_path(C.GOLD, C.ITEM_VOCAB))
sequences = read_table(spark, config.table_path(C.GOLD, E.SEQUENCES))
fitted = str(config.fitted_model_dir("repeatnet"))

def timed(name, df):
    t = time.perf_counter(); df.write.format("noop").mode("overwrite").save(); print(f"{name}: {time.perf_counter() - t:.1f} s", flush=True)

timed("warm-up (queries)", queries)
timed("repeatnet recommend", recommend(require_model_inputs(queries, fitted, C.EVAL_QUERIES), vocab, fitted, kept, ev.exclude_seen, config.score.batch_size))
timed("repeatnet recommend again", recommend(require_model_inputs(queries, fitted, C.EVAL_QUERIES), vocab, fitted, kept, ev.exclude_seen, config.score.batch_size))
timed("most_popular", most_popular(vocab, queries, kept, ev.exclude_seen))
timed("repeat_purchase", repeat_purchase(sequences, vocab, queries, kept, splits=E.TEST_HISTORY_SPLITS, first_item_idx=config.features.first_item_idx))
t = time.perf_counter()
tuning = E.choose_tifu(sequences, vocab, eq, config)
weights, listed, cached = E.tifu_test_weights(sequences, queries, tuning, config, kept)
timed("tifu lists (vectors, neighbours persisted on the way)", T.top_k_with_fillers(T.top_candidates(listed, queries, tuning["chosen"]["alpha"], ev.exclude_seen, kept), vocab, queries, kept, ev.exclude_seen))
print(f"tifu total {time.perf_counter() - t:.1f} s")
