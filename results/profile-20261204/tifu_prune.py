"""TIFU-KNN on validation with the neighbour search on each user's heaviest N items (similarity_items)
against the whole vector: validation NDCG@10 and build seconds. Complete Journey, bench23's lakehouse."""
import json, sys, time
from pyspark.sql import functions as F
from recspark import constants as C
from recspark.config import load_config
from recspark.session import get_spark
from recspark.evaluation import evaluate as E
from recspark.evaluation.tuning import tune_tifu_on_validation
from recspark.utils.delta import read_table

D = "/work/bench23"
config = load_config(["conf/local.yaml", "conf/datasets/completejourney.yaml"],
                     [f"paths.lakehouse={D}/lakehouse", f"paths.reports={D}/reports", f"paths.checkpoints={D}/checkpoints"])
spark = get_spark(config.spark)
eq = read_table(spark, config.table_path(C.GOLD, C.EVAL_QUERIES))
vocab = read_table(spark, config.table_path(C.GOLD, C.ITEM_VOCAB))
sequences = read_table(spark, config.table_path(C.GOLD, E.SEQUENCES))
validation = eq.filter(F.col(C.SPLIT) == C.VALIDATION)
out = []
for items in [None if a == "all" else int(a) for a in sys.argv[1:]]:
    settings = {**E.tifu_settings(config), "similarity_items": items}
    t = time.perf_counter()
    r = tune_tifu_on_validation(sequences, vocab, validation, 10, False, **settings, first_item_idx=config.features.first_item_idx)
    row = {"similarity_items": items, "seconds": round(time.perf_counter() - t, 1), "build_seconds": r["build_seconds"][0]["seconds"],
           "validation": r["grid"][0]["validation"]}
    print(json.dumps(row), flush=True)
    out.append(row)
