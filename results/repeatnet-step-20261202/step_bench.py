import os, sys, time
os.environ["TF_USE_LEGACY_KERAS"] = "1"
sys.path.insert(0, "/work/main")
import numpy as np, tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1); tf.config.threading.set_inter_op_parallelism_threads(1)
from recspark import constants as C
from recspark.config import TrainConfig
from recspark.models import build_model
from recspark.models.spec import ModelSpec
from recspark.models.repeatnet import RepeatNet, _EPS
N, L, R, B, BS = 17505 + 66, 50, 64, 64, 128

def fast_loss(self, inputs, target, training=True):
    inputs = self._cast_inputs(inputs)
    state = self.user_vectors(inputs, training=training)
    explore = tf.matmul(state, self.output_embeddings(), transpose_b=True) + self.output_bias
    reserved = tf.range(self.spec.num_items) < self.spec.first_item_idx
    explore = tf.where(reserved[None, :], tf.fill(tf.shape(explore), -1e9), explore)
    norm = tf.reduce_logsumexp(explore, axis=1, keepdims=True)
    target = tf.cast(target, tf.int32)
    p_explore = tf.exp(tf.gather(explore, target, batch_dims=1) - norm)  # [n, B]
    p_positions, gate = self.repeat_head(inputs, state)
    same = tf.cast(tf.equal(target[:, :, None], inputs[C.REPEAT_ITEMS][:, None, :]), tf.float32)  # [n, B, R]
    p_repeat = tf.reduce_sum(same * p_positions[:, None, :], axis=2)
    picked = tf.math.log(gate[:, None] * p_repeat + (1.0 - gate[:, None]) * p_explore + _EPS)
    valid = tf.cast(target >= self.spec.first_item_idx, tf.float32)
    per_row = -tf.reduce_sum(picked * valid, axis=1) / tf.maximum(tf.reduce_sum(valid, axis=1), 1.0)
    has_target = tf.cast(tf.reduce_sum(valid, axis=1) > 0, tf.float32)
    return tf.reduce_sum(per_row * has_target) / tf.maximum(tf.reduce_sum(has_target), 1.0)

spec = ModelSpec(num_items=N, max_seq_len=L, num_event_types=5, num_gap_buckets=20, first_item_idx=66, repeat_candidates=R)
rng = np.random.default_rng(0)
x = {C.HISTORY: rng.integers(66, N, (BS, L)).astype(np.int32), C.HISTORY_TYPES: np.full((BS, L), 3, np.int32),
     C.HISTORY_GAPS: rng.integers(1, 20, (BS, L)).astype(np.int32), C.REPEAT_ITEMS: rng.integers(66, N, (BS, R)).astype(np.int32),
     C.REPEAT_FEATURES: rng.random((BS, R * C.REPEAT_FEATURE_COUNT)).astype(np.float32)}
y = rng.integers(66, N, (BS, B)).astype(np.int32); y[:, 40:] = 0
y[:, :20] = x[C.REPEAT_ITEMS][:, :20]
model = build_model("repeatnet", spec, TrainConfig(models=["repeatnet"], embedding_dim=64, seed=1))
slow = float(model.compute_training_loss(x, y, training=False)); fast = float(fast_loss(model, x, y, training=False))
print("loss slow", slow, "fast", fast)
for name in ("fast", "slow", "fast", "slow"):
    model = build_model("repeatnet", spec, TrainConfig(models=["repeatnet"], embedding_dim=64, seed=1))
    if name == "fast":
        model.compute_training_loss = fast_loss.__get__(model)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.fit(ds, steps_per_epoch=5, epochs=1, verbose=0)
    t = time.perf_counter(); model.fit(ds, steps_per_epoch=40, epochs=1, verbose=0); s = (time.perf_counter() - t) / 40
    print(f"{name} train step {s*1000:.0f} ms per batch of {BS}", flush=True)
