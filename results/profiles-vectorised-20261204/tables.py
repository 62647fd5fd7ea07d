"""train_baskets and eval_queries of bench23's Complete Journey gold sequences written to /tmp/<table>-<tag>
(Parquet) and timed; run from a clone before the vectorised repeat profiles (tag old) and after (tag new),
then compare.py compares them row for row, bit for bit."""
import sys
import time
from recspark import constants as C
from recspark.config import load_config
from recspark.session import get_spark
from recspark.pipeline import features as Fe
from recspark.utils.delta import read_table

tag = sys.argv[1]
D = "/work/bench23"
config = load_config(["conf/local.yaml", "conf/datasets/completejourney.yaml"],
                     [f"paths.lakehouse={D}/lakehouse", f"paths.reports={D}/reports", f"paths.checkpoints={D}/checkpoints"])
spark = get_spark(config.spark)
gold = lambda t: config.table_path(C.GOLD, t)
sequences = read_table(spark, gold(Fe.SEQUENCES))
stats = read_table(spark, gold(C.FEATURE_STATS))
et = config.ingest.event_types
steps = Fe.basket_steps(sequences).persist()  # as build_features: persisted per side
rates = Fe.item_repurchase_rates(steps, config.features).persist()
t = time.perf_counter()
print(f"{tag} basket steps: {steps.count():,} rows, {rates.count():,} rates, {time.perf_counter() - t:.1f} s", flush=True)
for name, df in (("train_baskets", Fe.train_baskets(sequences, config.features, et)),
                 ("eval_queries", Fe.eval_queries(sequences, config.features, et, stats))):
    t = time.perf_counter()
    df.write.mode("overwrite").parquet(f"/tmp/{name}-{tag}")
    print(f"{tag} {name}: {time.perf_counter() - t:.1f} s", flush=True)
