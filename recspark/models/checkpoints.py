"""A training run's checkpoints: resumable after a kill, and restored on every rank.

After every epoch rank 0 writes ``state/epoch-NNN.npz`` under the model directory: the weights, the
optimizer's variables (Adam's step count and moments), the epoch and the run's history, plus a
*fingerprint* of what made the run (model, spec, training configuration, data versions). One
``os.replace`` publishes the file, so a killed run leaves either a whole checkpoint or none. A later
run with ``train.resume`` continues after the newest checkpoint with its own fingerprint
(:func:`find_resumable_state`); :func:`restore_run` puts it (or a warm start's weights,
:mod:`recspark.models.warm_start`) into every rank's model before the first step.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from recspark.models.warm_start import WarmStart, grow_weights

if TYPE_CHECKING:
    import tensorflow as tf


STATE_DIR = "state"
STATE_PATTERN = re.compile(r"^epoch-(\d{3,})\.npz$")
# TrainConfig keys that do not change what a given epoch computes: a run may be resumed with more
# epochs, another patience, or resume switched on. Everything else is in the fingerprint.
NOT_FINGERPRINTED = frozenset({"epochs", "early_stopping_patience", "resume", "models", "validation_users"})
FAULT_ENV = "RECSPARK_TEST_KILL"  # "<rank>:<epoch>": tests only, see fault_callback


# --------------------------------------------------------------------------------------------------
# Fingerprint and checkpoints
# --------------------------------------------------------------------------------------------------

def fingerprint(model_name: str, spec: dict, train_config: dict, data_versions: dict) -> str:
    """sha256 of what determines a run's epochs: a checkpoint resumes only a run with the same one."""
    relevant = {k: v for k, v in train_config.items() if k not in NOT_FINGERPRINTED}
    payload = json.dumps({"model": model_name, "spec": spec, "train": relevant, "data": data_versions},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclasses.dataclass
class RunState:
    """Everything a resumed run needs besides the arrays: where it stopped and what it saw so far."""

    epoch: int  # epochs completed (1-based count): the resumed run starts at this 0-based epoch
    fingerprint: str
    loss_history: list = dataclasses.field(default_factory=list)
    val_ndcg_history: list = dataclasses.field(default_factory=list)
    best_epoch: Optional[int] = None  # 1-based epoch with the best validation NDCG
    best_ndcg: Optional[float] = None
    wait: int = 0  # epochs since the best one
    path: Optional[str] = None  # the file it was read from


def optimizer_variables(optimizer: Any) -> list:
    """The optimizer's variables (tf-keras exposes them as a property, older Keras as a method)."""
    variables = optimizer.variables
    return list(variables() if callable(variables) and not isinstance(variables, (list, tuple)) else variables)


def write_state(model_dir: Path, state: RunState, weights: Sequence[np.ndarray], optimizer_weights: Sequence[np.ndarray],
                best_weights: Optional[Sequence[np.ndarray]] = None) -> Path:
    """Writes ``state/epoch-NNN.npz`` atomically (temporary file, then one rename); returns its path.

    ``best_weights`` are stored only when the best epoch is not this one, so that a resumed run can
    still export the best epoch's model.
    """
    directory = Path(model_dir) / STATE_DIR
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"epoch-{state.epoch:03d}.npz"
    tmp = directory / f".epoch-{state.epoch:03d}.tmp.npz"
    meta = {k: v for k, v in dataclasses.asdict(state).items() if k != "path"}
    arrays = {"meta": np.array(json.dumps(meta))}
    arrays.update({f"w{i:04d}": w for i, w in enumerate(weights)})
    arrays.update({f"o{i:04d}": w for i, w in enumerate(optimizer_weights)})
    if best_weights is not None:
        arrays.update({f"b{i:04d}": w for i, w in enumerate(best_weights)})
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())  # the rename must not publish a file whose bytes are still in flight
    os.replace(tmp, final)
    return final


def read_state_meta(path: Path) -> RunState:
    """The :class:`RunState` of a checkpoint file, without loading its arrays."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
    return RunState(**meta, path=str(path))


def read_state_arrays(path: Path) -> tuple[list[np.ndarray], list[np.ndarray], Optional[list[np.ndarray]]]:
    """(weights, optimizer weights, best weights or None) of a checkpoint file."""
    with np.load(path, allow_pickle=False) as data:
        def group(prefix: str) -> list[np.ndarray]:
            return [data[k] for k in sorted(k for k in data.files if k.startswith(prefix))]
        best = group("b")
        return group("w"), group("o"), best or None


def find_resumable_state(model_dir: Path, fingerprint_: str) -> Optional[RunState]:
    """The newest complete checkpoint of this fingerprint in ``model_dir``, or None.

    Temporary files (a write interrupted by a kill) never match the pattern; a file that does not
    load (a truncated copy from elsewhere) is skipped for the next older one.
    """
    directory = Path(model_dir) / STATE_DIR
    if not directory.is_dir():
        return None
    candidates = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := STATE_PATTERN.match(p.name)))
    for _, path in reversed(candidates):
        try:
            state = read_state_meta(path)
        except (OSError, ValueError, KeyError):
            continue
        if state.fingerprint == fingerprint_:
            return state
    return None


def prune_states(model_dir: Path, keep: int = 2) -> None:
    """Keeps the ``keep`` newest checkpoints: resuming needs only the last complete one."""
    directory = Path(model_dir) / STATE_DIR
    paths = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := STATE_PATTERN.match(p.name)))
    for _, path in paths[:-keep]:
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# Worker side: restoring a checkpoint or a previous model, and the per-epoch checkpoint callback
# --------------------------------------------------------------------------------------------------

def broadcast_arrays(arrays: Optional[Sequence[np.ndarray]], like: Sequence[np.ndarray], rank: int) -> list[np.ndarray]:
    """Rank 0's ``arrays`` on every rank (the others pass None and get arrays shaped like ``like``)."""
    import horovod.tensorflow as hvd_tf
    import tensorflow as tf

    out = []
    for i, template in enumerate(like):
        value = arrays[i] if rank == 0 else np.zeros_like(template)
        out.append(hvd_tf.broadcast(tf.constant(value), root_rank=0, name=f"recspark_restore_{i}").numpy())
    return out


def restore_run(model: "tf.keras.Model", optimizer: Any, *, rank: int, state: Optional[RunState],
                warm_start: Optional[WarmStart] = None) -> Optional[list[np.ndarray]]:
    """Puts a resumed run's state (or a warm start's weights) into every rank's model and optimizer.

    A warm start moves the previous export's item and category rows to their current indices
    (:func:`grow_weights`); the non-trainable variables (the feature models' item attribute
    tables, built from the current gold tables) keep their fresh values.

    Rank 0 reads the files; ``hvd.broadcast_variables`` then gives every rank the same values before
    the first step, so the first batch's gradients already agree. Returns the best epoch's weights
    when the checkpoint carries them (its best epoch is older than its last), else None.
    """
    import horovod.tensorflow as hvd_tf

    variables = optimizer_variables(optimizer)
    best = None
    if state is not None:
        if rank == 0:
            weights, optimizer_weights, best = read_state_arrays(Path(state.path))
            model.set_weights(weights)
            if len(optimizer_weights) != len(variables):
                raise ValueError(f"{state.path}: {len(optimizer_weights)} optimizer variables, expected {len(variables)}")
            for variable, value in zip(variables, optimizer_weights):
                variable.assign(value)
        if state.best_epoch is not None and state.best_epoch != state.epoch:
            best = broadcast_arrays(best, model.get_weights(), rank)
    elif warm_start is not None and rank == 0:
        import tensorflow as tf

        import recspark.models  # noqa: F401  (registers the model classes for load_model)

        previous = tf.keras.models.load_model(Path(warm_start.directory) / "model.keras", compile=False)
        model.set_weights(grow_weights(
            previous.get_weights(), model.get_weights(), warm_start.old_num_items, int(model.spec.num_items),
            warm_start.item_old_to_new, categories=warm_start.categories,
            category_old_to_new=warm_start.category_old_to_new,
            keep_fresh=[not variable.trainable for variable in model.weights]))
    hvd_tf.broadcast_variables(model.variables + variables, root_rank=0)
    return best


def checkpoint_callback(model_dir: str, state: RunState, *, rank: int,
                        early_stopping: Optional[Any] = None) -> "tf.keras.callbacks.Callback":
    """Every rank records the epoch's loss in ``state``; rank 0 then writes ``state/epoch-NNN.npz``.

    Placed after MetricAverageCallback (rank-averaged loss) and the early-stopping callback (the
    epoch's NDCG and best epoch are in ``state`` already).
    """
    import tensorflow as tf

    class StateCheckpoint(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
            state.loss_history.append(float((logs or {}).get("loss", math.nan)))
            state.epoch = epoch + 1
            if rank != 0:
                return
            best = None
            if early_stopping is not None and state.best_epoch != state.epoch:
                best = early_stopping.best_weights
            write_state(Path(model_dir), state, self.model.get_weights(),
                        [np.array(v) for v in optimizer_variables(self.model.optimizer)], best)
            prune_states(Path(model_dir))

    return StateCheckpoint()


def fault_callback(model_dir: str, rank: int) -> Optional["tf.keras.callbacks.Callback"]:
    """Tests only: with ``RECSPARK_TEST_KILL=<rank>:<epoch>``, that rank SIGKILLs itself at the start of
    that (0-based) epoch, once rank 0's checkpoint of the previous epoch is on disk. A real kill: the
    process dies without cleanup, exactly as under the OOM killer."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    kill_rank, kill_epoch = (int(x) for x in spec.split(":"))
    if kill_rank != rank:
        return None
    import signal
    import time

    import tensorflow as tf

    class Kill(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Optional[dict] = None) -> None:
            if epoch != kill_epoch:
                return
            checkpoint = Path(model_dir) / STATE_DIR / f"epoch-{epoch:03d}.npz"
            deadline = time.time() + 120
            while not checkpoint.exists() and time.time() < deadline:
                time.sleep(0.2)
            print(f"rank {rank}: killing myself (SIGKILL) at epoch {epoch} ({FAULT_ENV})", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    return Kill()
