"""Profile repeatnet training steps in one process on CJ gold train_baskets (timing only)."""
import os, sys, time, json
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
variant = sys.argv[2] if len(sys.argv) > 2 else "base"
from recspark.session import get_spark
from recspark.config import load_config
from recspark import constants as C
from recspark.models import model_spec, build_model, model_inputs
spark = get_spark()
config = load_config(["conf/local.yaml", "conf/datasets/completejourney.yaml"],
                     ["paths.lakehouse=/work/l19/lake"])
spec = model_spec(spark, config)
inputs = list(model_inputs("repeatnet"))
pdf = (spark.read.format("delta").load(config.table_path(C.GOLD, C.TRAIN_BASKETS))
       .select(*inputs, C.TARGET).limit(128 * 30).toPandas())
spark.stop()
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(threads)
def arr(col, dtype):
    return np.stack([np.asarray(v) for v in pdf[col]]).astype(dtype)
feats = {n: arr(n, np.float32 if n in C.FLOAT_INPUTS else np.int32) for n in inputs}
target = arr(C.TARGET, np.int32)
print({k: v.shape for k, v in feats.items()}, target.shape, "num_items", spec.num_items, flush=True)
settings = config.train.for_model("repeatnet")
if variant != "base":
    import recspark.models.repeatnet as R
    exec(open(f"/work/prof/{variant}.py").read())
model = build_model("repeatnet", spec, settings)
model.compile(optimizer=tf.keras.optimizers.Adam(0.001))
ds = tf.data.Dataset.from_tensor_slices((feats, target)).batch(128, drop_remainder=True).cache().repeat()
model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)  # trace
t = time.time(); h = model.fit(ds, steps_per_epoch=40, epochs=1, verbose=0); dt = time.time() - t
print(f"variant={variant} threads={threads}: {dt/40*1000:.1f} ms/step loss={h.history['loss'][-1]:.4f}", flush=True)
fwd = tf.function(lambda x: model(x, training=False))
b = {k: v[:128] for k, v in feats.items()}
fwd(b); t = time.time()
for _ in range(20): fwd(b)
print(f"forward: {(time.time()-t)/20*1000:.1f} ms", flush=True)
enc = tf.function(lambda x: model.user_vectors(model._cast_inputs(x), training=True))
enc(b); t = time.time()
for _ in range(20): enc(b)
print(f"encoder forward: {(time.time()-t)/20*1000:.1f} ms", flush=True)
