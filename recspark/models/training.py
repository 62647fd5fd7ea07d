"""Distributed training: Horovod on Spark (Gloo), fed by Petastorm, exported for the scoring stage.

The driver materialises the training DataFrame once (:mod:`recspark.feed`), then
``horovod.spark.run`` starts ``num_proc`` Spark tasks, each launching one training process that
reads its own shard. Gradients are averaged by ``hvd.DistributedOptimizer``; rank 0's initial
weights are broadcast after the first batch. Rank 0 alone writes, under ``model_dir``:

- ``model.keras``: the model without its optimizer, loadable with :func:`load_model` (plain
  ``tf.keras.models.load_model`` once ``recspark.models`` is imported; no Horovod);
- ``model_meta.json``: what the scorer needs to use it (``inputs``: the gold columns it reads;
  ``spec``: the ModelSpec that rebuilds it), and how it was trained;
- ``checkpoints/epoch-NNN.weights.h5``: weights after every epoch (load into ``build_model``);
- ``vocab/item_vocab.parquet``, ``vocab/category_vocab.parquet``: the vocabularies the model's rows
  are indexed by (when given), so that a warm start can move rows after the gold tables are refitted;
- ``state/epoch-NNN.npz``: the last epochs' resumable state (weights, optimizer, history and the
  run's fingerprint), see :mod:`recspark.models.checkpoints`; ``previous/``: the export before this
  run's, kept for a warm start.

A run killed in the middle fails with :class:`~recspark.models.launcher.RankFailedError` naming
the rank; with ``train.resume`` the next run of the same model, configuration and data continues
after the last checkpoint. With a validation sample, NDCG@10 is computed at every epoch end,
training stops after ``early_stopping_patience`` epochs without improvement (every rank at the
same epoch) and the best epoch's weights are exported.

With ``train.privacy`` on, user-level DP-SGD (:mod:`recspark.models.dp_sgd`) replaces the shards and
``hvd.DistributedOptimizer``: each step is a Poisson sample of users, each user's gradient clipped,
one draw of noise added by rank 0 and the sum allreduced; the spent budget is in ``model_meta.json``
(``privacy``) and :attr:`TrainResult.privacy`.

Every rank returns a :class:`RankResult` (weight digests, and the weights themselves for small
models), and the driver fails loudly if the ranks' final weights differ: that is what happens when
gradients are not averaged, e.g. when ``tf.keras`` is Keras 3, whose optimizers Horovod 0.28 does
not hook into.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

from pyspark.sql import DataFrame, SparkSession

from recspark.config import PYFUNC_DIR, TrainConfig
from recspark.constants import TARGET, USER_ID
from recspark.feed import make_converter, training_batches
from recspark.models.checkpoints import FAULT_ENV, STATE_DIR, RunState, checkpoint_callback, fault_callback
from recspark.models.checkpoints import find_resumable_state, restore_run
from recspark.models.checkpoints import fingerprint as run_fingerprint
from recspark.models.early_stopping import VAL_METRIC, ValidationSet, early_stopping_callback, validation_digest
from recspark.models.launcher import horovod_launcher, rank_failure
from recspark.models.warm_start import PREVIOUS_DIR, VOCAB_DIR, WarmStart, plan_warm_start, save_vocabularies
from recspark.models import ModelSpec, build_model, loss_inputs, model_inputs, require_legacy_keras
from recspark.utils.jobs import short_duration

if TYPE_CHECKING:
    import numpy as np
    import tensorflow as tf

    from recspark.dp_accountant import DPPlan

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
META_FILE = "model_meta.json"
CHECKPOINTS_DIR = "checkpoints"
# Ranks return their final weights as arrays up to this many parameters, only digests beyond.
RETURN_WEIGHTS_MAX_PARAMS = 2_000_000
# Petastorm reader threads per training process: two processes share a 2-core machine here.
READER_WORKERS = 2
SHUFFLE_CAPACITY = 1024
# Rank 0 writes a progress line inside an epoch at most this often (seconds).
PROGRESS_SECONDS = 60.0
# Rank 0's progress lines, in the model directory: the driver prints them as they come (Horovod
# forwards a rank's stdout only when the rank ends).
PROGRESS_FILE = "progress.log"

# The training processes inherit the Spark Python worker's environment, which was fixed when the
# driver's JVM started. Set it here too for a driver that has not imported `recspark` first; and
# pass it to Horovod explicitly (see _worker_env), which reaches the processes regardless.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


@dataclasses.dataclass
class RankResult:
    """What one Horovod rank returns: enough for the driver (and tests) to check the ranks agree."""

    rank: int
    size: int
    loss_history: list[float]
    initial_digests: list[str]  # sha256 of each variable's bytes before training
    final_digests: list[str]
    weights: Optional[list["np.ndarray"]]  # final weights, only for small models
    tf_keras_module: str  # where tf.keras.Model comes from in that process (tf_keras.*, not keras.*)
    legacy_keras_env: Optional[str]  # TF_USE_LEGACY_KERAS as that process saw it
    steps_per_epoch: int
    seconds: float
    initial_epoch: int = 0  # 0-based epoch this run started at (> 0: resumed from a checkpoint)
    epochs_run: int = 0  # epochs trained by this run
    val_ndcg_history: list[float] = dataclasses.field(default_factory=list)  # every epoch so far
    best_epoch: Optional[int] = None  # 1-based; its weights are the final (exported) ones
    # Wall-clock time (time.time()) at the end of every training batch of this run: rank 0 only,
    # and only with train_distributed(record_batch_times=True); empty otherwise.
    batch_end_times: list[float] = dataclasses.field(default_factory=list)
    # train.privacy: the spent budget (recspark.dp_accountant.DPPlan.report), rank 0 only; None without DP.
    privacy: Optional[dict] = None


@dataclasses.dataclass
class TrainResult:
    """Outcome of :func:`train_distributed`; ``rank_results`` is indexed by rank."""

    model_dir: str
    history: list[float]  # per-epoch training loss, averaged over ranks (earlier runs' epochs included)
    seconds: float
    rank_results: list[RankResult]
    fingerprint: str = ""
    initial_epoch: int = 0
    val_ndcg_history: list[float] = dataclasses.field(default_factory=list)
    best_epoch: Optional[int] = None
    launcher: str = ""
    privacy: Optional[dict] = None  # train.privacy: the spent budget, as in model_meta.json "privacy"

    @property
    def batch_end_times(self) -> list[float]:
        """Rank 0's batch end times (see RankResult.batch_end_times); empty unless recorded."""
        return self.rank_results[0].batch_end_times

    @property
    def ranks_agree(self) -> bool:
        """True when every rank ended with bit-identical weights."""
        return len({tuple(r.final_digests) for r in self.rank_results}) == 1


def _digest(array: "np.ndarray") -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _steps_per_epoch(num_rows: int, batch_size: int, size: int) -> int:
    """Full global batches per epoch; at least one, so a tiny data set still trains."""
    return max(1, num_rows // (batch_size * size))


def _pin_devices(hvd: Any) -> None:
    """Horovod's pattern: one GPU per local rank, memory growth on; on CPU, share the cores."""
    import tensorflow as tf

    gpus = tf.config.experimental.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        tf.config.experimental.set_visible_devices(gpus[hvd.local_rank()], "GPU")
    else:
        # local_size() processes share this host's cores: without a cap each would start one
        # thread per core and they would thrash each other.
        threads = max(1, (os.cpu_count() or 1) // hvd.local_size())
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


class ProgressFollower:
    """Prints the lines appended to ``path`` as they come, from a thread, until :meth:`stop` (which
    prints the rest): rank 0's progress while the ranks train, whatever Horovod does with their
    stdout. ``path`` must be readable by the driver (local mode: any path; a cluster: shared storage,
    as the model directory already is)."""

    def __init__(self, path: Path, poll_seconds: float = 1.0, out: Any = None) -> None:
        import threading

        self.path, self.poll_seconds, self.out = Path(path), poll_seconds, out
        self.offset = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-follower", daemon=True)
        self._thread.start()

    def _print_new_lines(self) -> None:
        try:
            with open(self.path, "rb") as progress:
                progress.seek(self.offset)
                data = progress.read()
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next poll
        self.offset += len(complete)
        for line in complete.decode("utf-8", errors="replace").splitlines():
            print(line, file=self.out or sys.stdout, flush=True)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self._print_new_lines()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._print_new_lines()


def _progress_callback(epochs: int, batch_end_times: Optional[list[float]] = None, *, steps: Optional[int] = None,
                       interval: float = PROGRESS_SECONDS, path: Optional[Path] = None) -> "tf.keras.callbacks.Callback":
    """Rank 0's progress: one line per epoch with the time left (at most: early stopping may end
    sooner) and, with ``steps`` (per epoch), a line every ``interval`` seconds inside a long epoch,
    appended to ``path`` (the driver follows it, :class:`ProgressFollower`; printed without one);
    with ``batch_end_times``, also appends the time at every batch end to it."""
    import tensorflow as tf

    def emit(line: str) -> None:
        if path is None:
            print(line, flush=True)
            return
        with open(path, "a") as progress:
            progress.write(line + "\n")

    class Progress(tf.keras.callbacks.Callback):
        """Placed after MetricAverageCallback: the loss shown is averaged over the ranks. Horovod's
        broadcast callback already hooks every batch, so the batch hook here costs one clock read."""

        def on_train_begin(self, logs: Optional[dict] = None) -> None:
            self.epoch_seconds: list[float] = []

        def on_epoch_begin(self, epoch: int, logs: Optional[dict] = None) -> None:
            self.epoch, self.started, self.shown = epoch, time.time(), time.time()

        def on_train_batch_end(self, batch: int, logs: Optional[dict] = None) -> None:
            now = time.time()
            if batch_end_times is not None:
                batch_end_times.append(now)
            if steps and now - self.shown >= interval and batch + 1 < steps:
                self.shown = now
                rate = (now - self.started) / (batch + 1)
                emit(f"   epoch {self.epoch + 1}/{epochs}: "
                     f"{batch + 1}/{steps} steps, ~{short_duration(rate * (steps - batch - 1))} left in the epoch")

        def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
            seconds = time.time() - self.started
            self.epoch_seconds.append(seconds)
            loss = (logs or {}).get("loss", float("nan"))
            ndcg = (logs or {}).get(VAL_METRIC)  # set by the early-stopping callback, placed before
            shown = "" if ndcg is None else f" val_ndcg@10={ndcg:.4f}"
            remaining = epochs - epoch - 1
            left = (f", at most ~{short_duration(remaining * sum(self.epoch_seconds) / len(self.epoch_seconds))} left"
                    if remaining > 0 else "")
            emit(f"epoch {epoch + 1}/{epochs} loss={loss:.4f}{shown} seconds={seconds:.1f}{left}")

    return Progress()


def _export(model: "tf.keras.Model", model_dir: Path, meta: dict, model_name: str, spec: ModelSpec,
            train_config: TrainConfig) -> None:
    """Writes model.keras (a fresh, optimizer-free copy) and model_meta.json, each atomically."""
    # The trained model's optimizer is Horovod's dynamically made subclass: a plain copy without
    # it is what loads anywhere with no Horovod, and inference needs no optimizer.
    export = build_model(model_name, spec, train_config)
    export.set_weights(model.get_weights())
    tmp_model = model_dir / f".{MODEL_FILE}.tmp.keras"  # Keras insists on the .keras suffix
    export.save(tmp_model)
    os.replace(tmp_model, model_dir / MODEL_FILE)
    tmp_meta = model_dir / f".{META_FILE}.tmp"
    tmp_meta.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp_meta, model_dir / META_FILE)


def _train_fn(
    converter: Any,
    *,
    model_name: str,
    num_rows: int,
    spec: ModelSpec,
    train_config: TrainConfig,
    model_dir: str,
    fingerprint: str = "",
    resume_state: Optional[RunState] = None,
    validation: Optional[ValidationSet] = None,
    warm_start: Optional[WarmStart] = None,
    shuffle: bool = True,
    optimizer_name: str = "adam",
    record_batch_times: bool = False,
    privacy_plan: Optional["DPPlan"] = None,
) -> RankResult:
    """Runs in every Horovod process (one per Spark task); rank 0 alone writes to ``model_dir``."""
    require_legacy_keras()  # before anything builds an optimizer
    import horovod.tensorflow.keras as hvd
    import tensorflow as tf

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    _pin_devices(hvd)
    # Same seed on every rank: same initial weights (the broadcast then changes nothing) and a
    # reproducible run; the shards, not the seeds, make the ranks' batches differ.
    tf.keras.utils.set_random_seed(train_config.seed)

    model = build_model(model_name, spec, train_config)
    initial_digests = [_digest(w) for w in model.get_weights()]

    # Linear scaling rule: the global batch is size times larger, so is the step. No `loss=`: the
    # model states its own (Recommender.compute_training_loss).
    optimizers = {"adam": tf.keras.optimizers.Adam, "sgd": tf.keras.optimizers.SGD}
    optimizer = optimizers[optimizer_name](learning_rate=train_config.learning_rate * size)
    if privacy_plan is None:
        optimizer = hvd.DistributedOptimizer(optimizer)
    model.compile(optimizer=optimizer)
    if privacy_plan is not None:
        # DP-SGD reduces its noisy, clipped gradient sum itself (recspark.models.dp_sgd): a plain optimizer.
        from recspark.models import dp_sgd

        dp_sgd.install(model, privacy_plan, rank=rank, size=size)
    # The optimizer's variables exist from here on (not only after the first step), so a checkpoint
    # can be restored into them and rank 0's values broadcast before training starts.
    optimizer.build(model.trainable_variables)
    state = (dataclasses.replace(resume_state, loss_history=list(resume_state.loss_history),
                                 val_ndcg_history=list(resume_state.val_ndcg_history))
             if resume_state is not None else RunState(epoch=0, fingerprint=fingerprint))
    best_restored = restore_run(model, optimizer, rank=rank, state=resume_state, warm_start=warm_start)
    initial_epoch = state.epoch

    callbacks: list = [
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),
        # Before any callback that reads logs, so they see the loss averaged over ranks.
        hvd.callbacks.MetricAverageCallback(),
    ]
    out = Path(model_dir)
    early_stopping = None
    if validation is not None:
        import horovod.tensorflow as hvd_tf

        def broadcast(value: float) -> float:
            return float(hvd_tf.broadcast(tf.constant(value, tf.float64), root_rank=0, name="val_ndcg").numpy())

        early_stopping = early_stopping_callback(
            validation, train_config.early_stopping_patience, state, rank=rank, broadcast=broadcast)
        early_stopping.best_weights = best_restored
        callbacks.append(early_stopping)
    batch_end_times: list[float] = []
    steps = (_steps_per_epoch(num_rows, train_config.batch_size, size) if privacy_plan is None
             else privacy_plan.steps_per_epoch)
    if rank == 0:
        callbacks.append(_progress_callback(train_config.epochs, batch_end_times if record_batch_times else None,
                                            steps=steps, path=out / PROGRESS_FILE))
        callbacks.append(tf.keras.callbacks.ModelCheckpoint(
            str(out / CHECKPOINTS_DIR / "epoch-{epoch:03d}.weights.h5"), save_weights_only=True))
    callbacks.append(checkpoint_callback(str(out), state, rank=rank, early_stopping=early_stopping))
    fault = fault_callback(str(out), rank)
    if fault is not None:
        callbacks.append(fault)
    # A resumed run whose early stopping had already fired has nothing left to train.
    stopped = (validation is not None and train_config.early_stopping_patience > 0
               and state.wait >= train_config.early_stopping_patience)
    epochs = initial_epoch if stopped else max(train_config.epochs, initial_epoch)

    started = time.time()
    with _batches(converter, model, spec, train_config, rank=rank, size=size, shuffle=shuffle,
                  privacy_plan=privacy_plan, first_step=initial_epoch * steps) as batches:
        if epochs > initial_epoch:  # a finished run that is resumed only exports again
            model.fit(batches, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                      callbacks=callbacks, verbose=0)
    seconds = time.time() - started
    loss_history = list(state.loss_history)  # this run's epochs after the resumed ones
    if early_stopping is not None and state.best_epoch is not None and state.best_epoch != state.epoch:
        # Export the best epoch, not the last: every rank holds the same copy, so ranks still agree.
        model.set_weights(early_stopping.best_weights)

    privacy_report = None
    if rank == 0:
        meta = {
            "model": model_name,
            "inputs": list(model.INPUTS),
            "num_items": spec.num_items,
            "max_seq_len": spec.max_seq_len,
            "embedding_dim": train_config.embedding_dim,
            "settings": dict(model.settings),
            "spec": spec.to_dict(),
            "epochs": train_config.epochs,
            "loss_history": loss_history,
            "training_seconds": round(seconds, 3),
            "num_proc": size,
            "batch_size": train_config.batch_size,
            "learning_rate": train_config.learning_rate,
            "learning_rate_scaled": train_config.learning_rate * size,
            "steps_per_epoch": steps,
            "num_rows": num_rows,
            "seed": train_config.seed,
            "optimizer": optimizer_name,
            "fingerprint": fingerprint,
            "resumed_from_epoch": initial_epoch,
            "epochs_trained": state.epoch,
            "val_ndcg_history": list(state.val_ndcg_history),
            "best_epoch": state.best_epoch,
            "warm_start_from": warm_start.directory if warm_start is not None else None,
            # How the previous export's rows were placed: "vocabulary" (joined on item_id), "positional".
            "warm_start_items": (None if warm_start is None else
                                 "vocabulary" if warm_start.item_old_to_new is not None else "positional"),
        }
        if privacy_plan is not None:
            # Every step taken counts, the resumed run's earlier ones included, past the best epoch too.
            meta["privacy"] = privacy_report = privacy_plan.report(state.epoch * steps)
        _export(model, out, meta, model_name, spec, train_config)

    weights = model.get_weights()
    return RankResult(
        rank=rank,
        size=size,
        loss_history=loss_history,
        initial_digests=initial_digests,
        final_digests=[_digest(w) for w in weights],
        weights=weights if model.count_params() <= RETURN_WEIGHTS_MAX_PARAMS else None,
        tf_keras_module=tf.keras.Model.__module__,
        legacy_keras_env=os.environ.get("TF_USE_LEGACY_KERAS"),
        steps_per_epoch=steps,
        seconds=seconds,
        initial_epoch=initial_epoch,
        epochs_run=state.epoch - initial_epoch,
        val_ndcg_history=list(state.val_ndcg_history),
        best_epoch=state.best_epoch,
        batch_end_times=batch_end_times,
        privacy=privacy_report,
    )


@contextlib.contextmanager
def _batches(converter: Any, model: "tf.keras.Model", spec: ModelSpec, train_config: TrainConfig, *, rank: int,
             size: int, shuffle: bool, privacy_plan: Optional["DPPlan"], first_step: int) -> Iterator["tf.data.Dataset"]:
    """This rank's training batches: its Petastorm shard, or with DP-SGD this rank's part of each
    step's Poisson sample of users (from every row, which each rank reads; see recspark.models.dp_sgd)."""
    if privacy_plan is None:
        with training_batches(
            converter, rank=rank, size=size, batch_size=train_config.batch_size, max_seq_len=spec.max_seq_len,
            inputs=[*model.INPUTS, *loss_inputs(train_config)], shuffling_queue_capacity=SHUFFLE_CAPACITY if shuffle else 0,
            workers_count=READER_WORKERS, seed=train_config.seed + rank,
        ) as batches:
            yield batches
        return
    from recspark.feed import read_rows
    from recspark.models import dp_sgd

    inputs = [*model.INPUTS, *loss_inputs(train_config)]
    sampler = dp_sgd.UserSampler(read_rows(converter, [*inputs, TARGET, USER_ID]), privacy_plan,
                                 rank=rank, size=size, seed=privacy_plan.sampling_seed)
    yield dp_sgd.user_dataset(sampler, inputs, first_step)


def _task_slots(spark: SparkSession) -> int:
    """How many Spark tasks can run at once (an upper bound off local mode, where executors come and go)."""
    sc = spark.sparkContext
    return sc.defaultParallelism // int(sc.getConf().get("spark.task.cpus", "1"))


def _worker_env() -> dict[str, str]:
    """Environment added to every Horovod process on top of its Spark worker's. Unless Spark logs
    warnings (a --verbose run), the libraries' FutureWarnings and DeprecationWarnings (Petastorm on
    pyarrow: a dozen lines per rank) stay out of the output."""
    from recspark.session import logs_warnings

    quiet = {} if logs_warnings() or "PYTHONWARNINGS" in os.environ else {
        "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning"}
    return {
        **quiet,
        "TF_USE_LEGACY_KERAS": "1",
        "PYTHONUNBUFFERED": "1",  # progress lines arrive as they happen, not at exit
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "1"),
        # Tests only: a rank that kills itself (fault_callback); absent otherwise.
        **({FAULT_ENV: os.environ[FAULT_ENV]} if os.environ.get(FAULT_ENV) else {}),
    }


def _prepare_model_dir(model_dir: Path, *, resuming: bool = False, keep_previous: bool = False) -> None:
    """Creates model_dir and removes a previous run's outputs, so no stale epoch survives a shorter run.

    ``resuming``: the epoch checkpoints and states of the run being resumed stay. ``keep_previous``:
    the last export (model, meta and saved vocabularies) moves to ``previous/`` (the warm start
    reads it) instead of being deleted.
    """
    if keep_previous and (model_dir / MODEL_FILE).is_file():
        previous = model_dir / PREVIOUS_DIR
        shutil.rmtree(previous, ignore_errors=True)
        previous.mkdir(parents=True)
        for name in (MODEL_FILE, META_FILE, VOCAB_DIR):
            if (model_dir / name).exists():
                os.replace(model_dir / name, previous / name)
    # This run's vocabularies are written afresh (save_vocabularies); an older run's must not stay.
    shutil.rmtree(model_dir / VOCAB_DIR, ignore_errors=True)
    if not resuming:
        shutil.rmtree(model_dir / CHECKPOINTS_DIR, ignore_errors=True)
        shutil.rmtree(model_dir / STATE_DIR, ignore_errors=True)
    for name in (MODEL_FILE, META_FILE):
        (model_dir / name).unlink(missing_ok=True)
    # An older run's pyfunc would outlive a run that does not serve this folder (train.refit moves it).
    shutil.rmtree(model_dir / PYFUNC_DIR, ignore_errors=True)
    (model_dir / CHECKPOINTS_DIR).mkdir(parents=True, exist_ok=True)


def train_distributed(
    spark: SparkSession,
    train_df: DataFrame,
    *,
    model: str,
    spec: ModelSpec,
    train_config: TrainConfig,
    model_dir: str | Path,
    cache_url: str,
    validation: Optional[ValidationSet] = None,
    data_versions: Optional[dict] = None,
    shuffle: bool = True,
    optimizer: str = "adam",
    item_vocab: Optional[DataFrame] = None,
    category_vocab: Optional[DataFrame] = None,
    record_batch_times: bool = False,
) -> TrainResult:
    """Trains ``model`` on ``train_df`` (the model's input columns and target) with ``num_proc``
    Horovod processes; ``spec`` holds the data's sizes (:func:`recspark.models.model_spec`).

    ``validation``: the bounded validation sample for NDCG@10 and early stopping (None: off).
    ``data_versions``: the Delta versions of the tables read, part of the run's fingerprint (a
    checkpoint resumes only the same model, configuration and data). ``shuffle=False`` and
    ``optimizer="sgd"`` exist for the equivalence tests (a deterministic order, a plain step).
    ``item_vocab`` / ``category_vocab``: the gold vocabularies ``spec`` was made from; saved in the
    export (``vocab/``) and, with ``train.warm_start``, joined with the previous export's saved ones
    to move its rows to their current indices (without them rows keep their positions).
    ``record_batch_times``: rank 0 notes the wall-clock time at the end of every training batch, returned
    as ``TrainResult.batch_end_times`` (for benchmarks: the ranks step in lockstep through the
    gradient allreduce, so rank 0's times time the whole run, start-up and compilation left out).
    Raises :class:`~recspark.models.launcher.RankFailedError` naming the rank when a Horovod process dies.

    ``model_dir`` must be visible to rank 0's process (local mode: any local path; a cluster: shared
    storage such as /dbfs). Raises RuntimeError if the ranks end with different weights.
    """
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    num_proc = train_config.num_proc
    slots = _task_slots(spark)
    master = spark.sparkContext.master
    if num_proc > slots:
        # horovod.spark.run needs all num_proc tasks running at once; with too few slots it would
        # wait for start_timeout (10 minutes by default) before saying so.
        message = f"train.num_proc={num_proc} but Spark runs only {slots} tasks at once ({master})"
        if master.startswith("local"):
            raise ValueError(message)
        log.warning("%s; Horovod will wait for more executors", message)
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        log.warning("TF_USE_LEGACY_KERAS is %r in the driver; Horovod processes get '1' explicitly",
                    os.environ.get("TF_USE_LEGACY_KERAS"))

    out = Path(model_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # Only the columns the model reads travel through Petastorm; with DP-SGD also the user each row
    # belongs to, the unit of sampling and clipping.
    privacy_plan = _privacy_plan(train_df, train_config) if train_config.privacy.enabled else None
    columns = [*model_inputs(model), *loss_inputs(train_config), TARGET, *([USER_ID] if privacy_plan is not None else [])]
    converter = make_converter(spark, train_df.select(*columns), cache_url, num_files=num_proc)
    try:
        num_rows = len(converter)  # counted once, by Petastorm, on the materialised data
        if num_rows < num_proc:
            raise ValueError(f"{num_rows} training rows cannot feed {num_proc} Horovod processes")
        settings = dataclasses.asdict(train_config)
        if privacy_plan is None:  # off: the fingerprint of a run without DP is what it always was
            settings.pop("privacy")
        fingerprint = run_fingerprint(
            model, spec.to_dict(), settings,
            {**(data_versions or {}), "num_rows": num_rows, "shuffle": shuffle, "optimizer": optimizer,
             "validation": validation_digest(validation)})
        resume_state = find_resumable_state(out, fingerprint) if train_config.resume else None
        if resume_state is not None:
            log.info("resuming %s after epoch %d from %s", model, resume_state.epoch, resume_state.path)
        warm_start = None
        if train_config.warm_start and resume_state is None:
            _prepare_model_dir(out, keep_previous=True)
            previous = out / PREVIOUS_DIR
            if (previous / MODEL_FILE).is_file():
                warm_start = plan_warm_start(
                    spark, previous, json.loads((previous / META_FILE).read_text()), spec.to_dict(),
                    item_vocab, category_vocab)
            else:
                log.warning("train.warm_start: no previous export in %s, %s starts from scratch", out, model)
        else:
            _prepare_model_dir(out, resuming=resume_state is not None)
        # Before training: the export is complete once rank 0 writes model.keras beside it.
        save_vocabularies(out, item_vocab, category_vocab)
        launcher, run = horovod_launcher()
        started = time.time()
        (out / PROGRESS_FILE).unlink(missing_ok=True)
        follower = ProgressFollower(out / PROGRESS_FILE)
        try:
            results: list[RankResult] = run(
                _train_fn,
                dict(converter=converter, model_name=model, num_rows=num_rows, spec=spec, train_config=train_config,
                     model_dir=str(out), fingerprint=fingerprint, resume_state=resume_state, validation=validation,
                     warm_start=warm_start, shuffle=shuffle,
                     optimizer_name=optimizer, record_batch_times=record_batch_times, privacy_plan=privacy_plan),
                num_proc,
                _worker_env(),
            )
        except Exception as error:
            if "exited with non-zero status" in str(error):
                raise rank_failure(error) from error
            raise
        finally:
            follower.stop()
        seconds = time.time() - started
    finally:
        converter.delete()

    first = results[0]
    result = TrainResult(model_dir=str(out), history=first.loss_history, seconds=seconds, rank_results=results,
                         fingerprint=fingerprint, initial_epoch=first.initial_epoch,
                         val_ndcg_history=first.val_ndcg_history, best_epoch=first.best_epoch, launcher=launcher,
                         privacy=first.privacy)
    if not result.ranks_agree:
        raise RuntimeError(
            "Horovod ranks ended with different weights: gradients were not averaged "
            f"(tf.keras per rank: {[r.tf_keras_module for r in results]})"
        )
    log.info("trained %s on %d rows with %d processes in %.1fs; loss %s", model, num_rows,
             num_proc, seconds, result.history)
    return result


def _privacy_plan(train_df: DataFrame, train_config: TrainConfig) -> "DPPlan":
    """The DP-SGD plan of this run (recspark.dp_accountant): the users counted by Spark, the global
    batch (batch_size x num_proc) the expected users per step; the noise derived when a target
    epsilon is given."""
    from recspark import dp_accountant

    num_users = train_df.select(USER_ID).distinct().count()
    plan = dp_accountant.plan(train_config.privacy, num_users=num_users,
                              users_per_step=train_config.batch_size * train_config.num_proc,
                              epochs=train_config.epochs)
    print(f"train.privacy: user-level DP-SGD over {num_users:,} users, q={plan.sampling_rate:.5f} "
          f"(~{plan.expected_users:.0f} users per step, {plan.steps_per_epoch} steps per epoch), "
          f"noise multiplier {plan.noise_multiplier:.4f}, clip norm {plan.clip_norm}; at most "
          f"epsilon={plan.report(plan.planned_steps)['epsilon']} at delta={plan.delta:.3g} "
          f"({plan.accountant.upper()}) after {plan.planned_steps} steps", flush=True)
    return plan


def load_model(model_dir: str | Path) -> tuple["tf.keras.Model", dict]:
    """Loads ``model.keras`` and ``model_meta.json`` from ``model_dir`` (no Horovod; the custom
    classes are registered by ``recspark.models``, this module's package)."""
    import tensorflow as tf

    require_legacy_keras()
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / META_FILE).read_text())
    if "inputs" not in meta:
        raise ValueError(f"{model_dir}: exported by an older recspark (no 'inputs' in {META_FILE}); train it again")
    model = tf.keras.models.load_model(model_dir / MODEL_FILE)
    if model.spec.num_items != meta["num_items"]:
        raise ValueError(f"{model_dir}: model scores {model.spec.num_items} items, meta says {meta['num_items']}")
    if list(model.INPUTS) != meta["inputs"]:
        raise ValueError(f"{model_dir}: model reads {list(model.INPUTS)}, meta says {meta['inputs']}")
    return model, meta
