"""Per buyer, warm against warm_ignored in each cycle of a finished `make loop` (the loop's own
recommendations table and the data set's silver events): the mean NDCG@10 difference over the same
buyers with a 95% bootstrap interval (2,000 resamples of buyers, seeded). Run from a clone with the
make loop's configuration: paired.py --conf-file conf/local.yaml --conf-file conf/datasets/completejourney.yaml
--conf-file conf/loop.yaml --set paths.lakehouse=... (and the same paths as the loop)."""
import datetime as dt
import sys
import numpy as np
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import config_from_args
from recspark.evaluation.ranking import NDCG_AT_K, per_user_ranking_metrics
from recspark.feedback import CONVERSIONS
from recspark.loop import cycle_config, replay_window, served_lists
from recspark.pipeline.privacy import broadcast_key, pseudonym_key
from recspark.scoring import ranked_list
from recspark.session import get_spark
from recspark.utils.delta import read_table

config = config_from_args(sys.argv[1:])
spark = get_spark(config.spark)
key = broadcast_key(pseudonym_key(config.privacy.secret_scope))
first_cut, _ = replay_window(spark, config)
source = read_table(spark, config.table_path(C.SILVER, C.EVENTS))
k, rng = config.score.k, np.random.default_rng(0)
for cycle in range(1, config.loop.cycles):
    cut = first_cut + dt.timedelta(days=cycle * config.loop.cycle_days)
    world = cycle_config(config, "warm", cut)
    bought = (source.filter((F.col(C.EVENT_TS) >= F.lit(cut)) & (F.col(C.EVENT_TS) < F.lit(cut + dt.timedelta(days=config.loop.cycle_days)))
                            & F.col(C.EVENT_TYPE).isin(*CONVERSIONS))
              .groupBy(F.col(C.USER_ID).alias("_pseudonym")).agg(F.collect_set(C.ITEM_ID).alias(C.RELEVANT)))
    per_variant = {}
    for variant in ("warm", "warm_ignored"):
        lists = served_lists(spark, world, f"loop-c{cycle}-{variant}", key)
        ranked = lists.groupBy("_pseudonym").agg(ranked_list().alias(C.PREDICTION))
        rows = per_user_ranking_metrics(ranked.join(bought, "_pseudonym"), k).select("_pseudonym", NDCG_AT_K).collect()
        per_variant[variant] = {r["_pseudonym"]: r[NDCG_AT_K] for r in rows}
    users = sorted(per_variant["warm"])
    diff = np.array([per_variant["warm_ignored"][u] - per_variant["warm"][u] for u in users])
    boot = np.array([diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(2000)])
    lo, hi = np.percentile(boot, [2.5, 97.5])
    print(f"cycle {cycle + 1}: {len(users):,} buyers; NDCG@{k} warm {np.mean([per_variant['warm'][u] for u in users]):.4f}, "
          f"warm_ignored {np.mean([per_variant['warm_ignored'][u] for u in users]):.4f}; difference {diff.mean():+.4f} "
          f"(95% interval {lo:+.4f} to {hi:+.4f}); buyers better / worse / same: {(diff > 0).sum()} / {(diff < 0).sum()} / {(diff == 0).sum()}")
