import sys, time, importlib.util
sys.path.insert(0, "/work/main")
from recspark.entrypoints import pipeline_args
from recspark.session import get_spark
from recspark.utils.delta import read_table
import recspark.pipeline.features as new
spec = importlib.util.spec_from_file_location("features_old", "/work/scratch/features_old.py")
old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)
which = sys.argv[1]
config, _, _ = pipeline_args(sys.argv[2:])
spark = get_spark(config.spark)
seq = read_table(spark, config.table_path("gold", "sequences")).persist()
seq.count()
if which == "mid":
    new.with_repeat_profile = old.with_repeat_profile
mod = {"old": old, "new": new, "mid": new}[which]
steps = mod.basket_steps(seq).persist(); rates = mod.item_repurchase_rates(steps, config.features).persist()
print(steps.count(), rates.count(), flush=True)
t = time.perf_counter()
mod.train_baskets(seq, config.features).write.format("noop").mode("overwrite").save()
print(which, "train_baskets", round(time.perf_counter() - t, 1), flush=True)
if len(sys.argv) > 1 and which != "old":
    got = mod.train_baskets(seq, config.features)
    want = read_table(spark, "/work/cjrun/lakehouse/completejourney/gold/train_baskets")
    print("rows", got.count(), want.count(), "got-want", got.exceptAll(want).count(), "want-got", want.exceptAll(got).count(), flush=True)
