import time, sys
from recspark import constants as C
from recspark.config import load_config
from recspark.session import get_spark
from recspark.utils.delta import read_table
import recspark.pipeline.features as ft
import recspark.pipeline.repeat_profiles as rp
from pyspark.sql import functions as F
config = load_config(["conf/local.yaml", "conf/datasets/completejourney.yaml"], ["paths.lakehouse=/work/p15/lakehouse"])
spark = get_spark(config.spark)
seq = read_table(spark, config.table_path(C.GOLD, "sequences"))
def t(name, df):
    s = time.time(); df.write.format("noop").mode("overwrite").save(); print(f"T {name:40s} {time.time()-s:6.1f}", flush=True)
fc = config.features
t("sequences", seq)
steps = rp.basket_steps(seq)
steps = steps.persist(); t("basket_steps persist", steps)
rates = rp.item_repurchase_rates(steps, fc).persist(); t("rates", rates)
import recspark.pipeline.features as f2
# eval_queries rows without profile
orig = ft.with_repeat_profile
ft.with_repeat_profile = lambda rows, steps, config: rows.withColumn("repeat_items", F.array()).withColumn("repeat_features", F.array()).drop("_cut","_splits")
t("eval_queries no profile", ft.eval_queries(seq, fc))
t("train_baskets no profile", ft.train_baskets(seq, fc))
ft.with_repeat_profile = orig
t("eval_queries", ft.eval_queries(seq, fc))
t("train_baskets", ft.train_baskets(seq, fc))
t("serving_histories", ft.serving_histories(seq, fc))
t("refit_baskets", ft.train_baskets(seq, fc, splits=("train","validation")))
