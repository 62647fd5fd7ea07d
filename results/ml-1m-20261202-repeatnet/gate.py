"""The repeat gate of the ML-1M repeatnet on the validation queries (no re-buys in ML-1M: it should go to 0)."""
import glob
import numpy as np
import pyarrow.parquet as pq
import tensorflow as tf
from recspark import constants as C
from recspark.models.training import load_model

model, meta = load_model("/work/ml14/checkpoints/ml-1m/repeatnet")
table = pq.ParquetDataset(glob.glob("/work/ml14/lakehouse/ml-1m/gold/eval_queries/*.parquet")).read().to_pandas()
table = table[table[C.SPLIT] == C.VALIDATION].head(2000)
inputs = {name: tf.constant(np.stack(table[name].to_numpy()).astype(np.float32 if name in C.FLOAT_INPUTS else np.int32))
          for name in model.INPUTS}
p_repeat, log_explore, gate = (t.numpy() for t in model.distributions(inputs))
print(f"validation queries: {len(table)}; gate mean {gate.mean():.4f}, median {np.median(gate):.4f}, "
      f"max {gate.max():.4f}, share of rows with gate < 0.01: {(gate < 0.01).mean():.3f}")
