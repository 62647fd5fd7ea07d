import os, sys, time
os.environ["TF_USE_LEGACY_KERAS"] = "1"
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else "/work/main")
import numpy as np, tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1); tf.config.threading.set_inter_op_parallelism_threads(1)
from recspark import constants as C
from recspark.config import TrainConfig
from recspark.models import build_model
from recspark.models.spec import ModelSpec
N, L, R, B, BS = 17505 + 66, 50, 64, 64, 128
spec = ModelSpec(num_items=N, max_seq_len=L, num_event_types=5, num_gap_buckets=20, first_item_idx=66, repeat_candidates=R)
rng = np.random.default_rng(0)
x = {C.HISTORY: rng.integers(66, N, (BS, L)).astype(np.int32), C.HISTORY_TYPES: np.full((BS, L), 3, np.int32),
     C.HISTORY_GAPS: rng.integers(1, 20, (BS, L)).astype(np.int32), C.REPEAT_ITEMS: rng.integers(66, N, (BS, R)).astype(np.int32),
     C.REPEAT_FEATURES: rng.random((BS, R * C.REPEAT_FEATURE_COUNT)).astype(np.float32)}
y = rng.integers(66, N, (BS, B)).astype(np.int32); y[:, 40:] = 0
model = build_model("repeatnet", spec, TrainConfig(models=["repeatnet"], embedding_dim=64, seed=1))
xt = {k: tf.constant(v) for k, v in x.items()}; yt = tf.constant(y)
def timeit(name, fn, n=20):
    fn(); fn()
    t = time.perf_counter()
    for _ in range(n): r = fn()
    print(f"{name:30s} {(time.perf_counter()-t)/n*1000:7.1f} ms", flush=True)
ci = model._cast_inputs(xt)
enc = tf.function(lambda: model.user_vectors(ci, training=True))
#timeit("encoder fwd", enc)
def enc_grad():
    with tf.GradientTape() as tape:
        s = model.user_vectors(ci, training=True); l = tf.reduce_sum(s)
    return tape.gradient(l, model.trainable_variables)
#timeit("encoder fwd+bwd", tf.function(enc_grad))
state = enc()
def explore():
    e = tf.matmul(state, model.output_embeddings(), transpose_b=True) + model.output_bias
    return tf.nn.log_softmax(e)
#timeit("explore fwd", tf.function(explore))
#timeit("mixture fwd", tf.function(lambda: model.mixture(ci, training=True)))
#timeit("loss fwd", tf.function(lambda: model.compute_training_loss(xt, yt, training=True)))
def full():
    with tf.GradientTape() as tape:
        l = model.compute_training_loss(xt, yt, training=True)
    return tape.gradient(l, model.trainable_variables)
#timeit("loss fwd+bwd", tf.function(full))
model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
ds = tf.data.Dataset.from_tensors((x, y)).repeat()
model.fit(ds, steps_per_epoch=5, epochs=1, verbose=0)
t = time.perf_counter(); model.fit(ds, steps_per_epoch=30, epochs=1, verbose=0); print("fit step", (time.perf_counter()-t)/30*1000)
print("trainable", [(v.name, v.shape) for v in model.trainable_variables])
with tf.GradientTape() as tape:
    l = model.compute_training_loss(xt, yt, training=True)
g = tape.gradient(l, model.trainable_variables)
for v, gi in zip(model.trainable_variables, g):
    if isinstance(gi, tf.IndexedSlices): print("SPARSE", v.name, gi.values.shape)
