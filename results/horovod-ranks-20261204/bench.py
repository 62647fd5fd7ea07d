import os, sys, time
os.environ["TF_USE_LEGACY_KERAS"] = "1"
sys.path.insert(0, "/work/exp27")

def fn(sad, steps=60):
    import os, time
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np, tensorflow as tf
    if sad > -2:
        import horovod.tensorflow.keras as hvd
        rank = 0
        if os.environ.get('EXP_INIT', '1') == '1':
            hvd.init(); rank = hvd.rank()
    else:
        rank = 0
    tf.config.threading.set_intra_op_parallelism_threads(1); tf.config.threading.set_inter_op_parallelism_threads(1)
    from recspark import constants as C
    from recspark.config import TrainConfig
    from recspark.models import build_model
    from recspark.models.spec import ModelSpec
    N, L, R, B, BS = int(os.environ.get("EXP_N", 17571)), 50, 64, 64, 128
    spec = ModelSpec(num_items=N, max_seq_len=L, num_event_types=5, num_gap_buckets=20, first_item_idx=66, repeat_candidates=R)
    rng = np.random.default_rng(rank)
    x = {C.HISTORY: rng.integers(66, N, (BS, L)).astype(np.int32), C.HISTORY_TYPES: np.full((BS, L), 3, np.int32),
         C.HISTORY_GAPS: rng.integers(1, 20, (BS, L)).astype(np.int32), C.REPEAT_ITEMS: rng.integers(66, N, (BS, R)).astype(np.int32),
         C.REPEAT_FEATURES: rng.random((BS, R * C.REPEAT_FEATURE_COUNT)).astype(np.float32)}
    y = rng.integers(66, N, (BS, B)).astype(np.int32); y[:, 40:] = 0
    model = build_model("repeatnet", spec, TrainConfig(models=["repeatnet"], embedding_dim=64, seed=1))
    opt = tf.keras.optimizers.Adam(1e-3)
    if sad >= 0:
        opt = hvd.DistributedOptimizer(opt, sparse_as_dense=bool(sad))
    model.compile(optimizer=opt)
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.fit(ds, steps_per_epoch=5, epochs=1, verbose=0)
    ends = []
    cb = tf.keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, l: ends.append(time.perf_counter()))
    t = time.perf_counter(); model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[cb])
    d = np.diff(ends) * 1000
    print('STEPS', rank, np.round(d[:30]).astype(int).tolist(), flush=True)
    import threading
    return ((time.perf_counter() - t) / steps * 1000, sorted(os.sched_getaffinity(0)), threading.active_count(), os.cpu_count())

if __name__ == "__main__":
    import horovod
    from horovod.runner import run
    for sad in [int(a) for a in sys.argv[1:]]:
        r = run(fn, args=(sad,), np=2, use_gloo=True)
        print("sad", sad, "ms/step per rank", r, flush=True)
