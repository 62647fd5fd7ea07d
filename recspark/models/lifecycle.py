"""A training run's life cycle: resumable checkpoints, early stopping, warm start, the launcher.

- **Checkpoints** (:func:`write_state`, :func:`find_resumable_state`): after every epoch rank 0
  writes ``state/epoch-NNN.npz`` under the model directory: the weights, the optimizer's variables
  (Adam's step count and moments), the epoch and the run's history, plus a *fingerprint* of what
  made the run (model, spec, training configuration, data versions). One ``os.replace`` publishes
  the file, so a killed run leaves either a whole checkpoint or none. A later run with
  ``train.resume`` continues after the newest checkpoint with its own fingerprint.
- **Early stopping** (:class:`ValidationSet`, :func:`ndcg_at_10`, :class:`EarlyStopping`): NDCG@10
  on a bounded sample of validation queries, computed by rank 0 at each epoch end and broadcast, so
  every rank takes the same stop decision (a rank that stopped alone would leave the others waiting
  in an allreduce forever).
- **Warm start** (:func:`plan_warm_start`, :func:`grow_weights`): every export saves the item and
  category vocabularies it was trained with (``vocab/``); the next run joins them with the current
  gold vocabularies on item_id / category, so each surviving item's rows move to its new index,
  dropped items disappear and new items keep their fresh initialisation.
- **Launcher** (:func:`horovod_launcher`): Databricks' ``sparkdl.HorovodRunner`` when present,
  otherwise ``horovod.spark.run``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from recspark import constants as C
from recspark.constants import OOV_IDX, PAD_IDX

if TYPE_CHECKING:
    import tensorflow as tf
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

STATE_DIR = "state"
STATE_PATTERN = re.compile(r"^epoch-(\d{3,})\.npz$")
PREVIOUS_DIR = "previous"  # the last export, kept for a warm start
NDCG_K = 10
VAL_METRIC = "val_ndcg_at_10"
# TrainConfig keys that do not change what a given epoch computes: a run may be resumed with more
# epochs, another patience, or resume switched on. Everything else is in the fingerprint.
NOT_FINGERPRINTED = frozenset({"epochs", "early_stopping_patience", "resume", "models", "validation_users"})


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
# Validation NDCG@10 and early stopping
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ValidationSet:
    """A bounded sample of validation queries as numpy arrays, small enough to ship to every rank.

    ``inputs`` maps model input names (gold columns, e.g. ``history``) to arrays [n, ...];
    ``relevant`` holds each query's held-out item indices padded with -1, and ``num_relevant`` their
    true count (an item outside the vocabulary cannot be hit but still counts in the ideal DCG, as
    in the evaluation); ``seen`` (padded with PAD_IDX) is excluded from the ranking when
    ``exclude_seen``.
    """

    inputs: dict
    relevant: np.ndarray
    num_relevant: np.ndarray
    seen: Optional[np.ndarray] = None
    exclude_seen: bool = False

    def __len__(self) -> int:
        return len(self.relevant)


def top_k_items(logits: np.ndarray, k: int, seen: Optional[np.ndarray] = None, *,
                first_item: int) -> np.ndarray:
    """Indices of the k best logits per row, best first (ties: the lower index), never a reserved
    index (below ``first_item``), nor ``seen`` items when given (PAD-padded rows); -1 where a row has
    fewer than k items left. The scorer's own top-k (:func:`recspark.topk.blocked_top_k`, one
    block): validation ranks exactly as serving does."""
    from recspark.topk import blocked_top_k, excluded_pairs, ranked_order

    n, num_items = logits.shape
    k = min(k, num_items - first_item)
    excluded = excluded_pairs(None if seen is None else [row[row >= first_item] for row in seen], n)
    top = blocked_top_k(lambda lo, hi: logits[:, lo:hi], n, num_items, first_item, k, block=num_items,
                        excluded=excluded)
    return np.take_along_axis(top.items, ranked_order(top.items, top.scores), axis=1)


def ndcg_from_top_k(top: np.ndarray, relevant: np.ndarray, num_relevant: np.ndarray, k: int = NDCG_K) -> float:
    """Mean NDCG@k of the ranked item indices ``top`` ([n, >= k]) against ``relevant`` (held-out
    indices padded with -1; an item unknown to the vocabulary is -1 too and counts in
    ``num_relevant``): :func:`recspark.evaluation.metrics.ndcg_at_k`, the project's one NDCG, on
    these arrays. An unknown item is never hit but counts in the ideal DCG, as in evaluation."""
    from recspark.evaluation.metrics import ndcg_at_k

    lists = [[int(i) for i in row] for row in top]
    # Each unknown item becomes its own id that no prediction (always >= 0) can match.
    held_out = [[int(i) if i >= 0 else -1 - j for j, i in enumerate(row[:count])]
                for row, count in zip(relevant, num_relevant)]
    return ndcg_at_k(lists, held_out, k) if lists else math.nan


def ndcg_at_10(model: "tf.keras.Model", validation: ValidationSet, batch_size: int = 512) -> float:
    """The model's mean NDCG@10 on ``validation`` (full ranking over the catalogue)."""
    logits = model.predict(validation.inputs, batch_size=batch_size, verbose=0)
    seen = validation.seen if validation.exclude_seen else None
    return ndcg_from_top_k(top_k_items(logits, NDCG_K, seen, first_item=model.spec.first_item_idx), validation.relevant,
                           validation.num_relevant)


def early_stopping_callback(
    validation: ValidationSet, patience: int, state: RunState, *, rank: int, broadcast: Callable[[float], float],
) -> "tf.keras.callbacks.Callback":
    """A callback that tracks validation NDCG@10 in ``state`` and stops all ranks together.

    Rank 0 computes the metric; ``broadcast`` (``hvd.broadcast`` of a scalar) hands every rank the
    same value, so every rank updates an identical ``state`` and sets ``stop_training`` at the same
    epoch. ``patience`` 0 records the metric but never stops. The callback keeps the best epoch's
    weights in memory (``best_weights``) for the export.
    """
    import tensorflow as tf

    class EarlyStopping(tf.keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.state = state
            # The best epoch's weights: set by a resumed run whose best epoch is older, else here.
            self.best_weights: Optional[list[np.ndarray]] = None

        def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
            value = ndcg_at_10(self.model, validation) if rank == 0 else 0.0
            value = float(broadcast(value))
            if logs is not None:
                logs[VAL_METRIC] = value  # later callbacks (progress, checkpoint) see it
            self.state.val_ndcg_history.append(value)
            if self.state.best_ndcg is None or value > self.state.best_ndcg:
                self.state.best_ndcg, self.state.best_epoch, self.state.wait = value, epoch + 1, 0
                self.best_weights = [np.array(w) for w in self.model.get_weights()]
            else:
                self.state.wait += 1
                if patience > 0 and self.state.wait >= patience:
                    self.model.stop_training = True

    return EarlyStopping()


# --------------------------------------------------------------------------------------------------
# Warm start: vocabulary growth
# --------------------------------------------------------------------------------------------------

def _checked_map(old_to_new: Optional[np.ndarray], old_size: int, new_size: int, what: str) -> np.ndarray:
    """``old_to_new`` validated against the sizes; None: the identity (new entries appended)."""
    if old_to_new is None:
        if new_size < old_size:
            raise ValueError(f"the {what} vocabulary shrank from {old_size} to {new_size}: "
                             f"pass its old-to-new map to say where the old {what} rows went")
        return np.arange(old_size)
    old_to_new = np.asarray(old_to_new)
    if old_to_new.shape != (old_size,) or old_to_new.max(initial=-1) >= new_size:
        raise ValueError(f"the {what} old-to-new map must map {old_size} old rows into 0..{new_size - 1}")
    return old_to_new


def grow_weights(
    old: Sequence[np.ndarray], fresh: Sequence[np.ndarray], old_num_items: int, new_num_items: int,
    old_to_new: Optional[np.ndarray] = None, *, categories: Optional[tuple[int, int]] = None,
    category_old_to_new: Optional[np.ndarray] = None, keep_fresh: Optional[Sequence[bool]] = None,
) -> list[np.ndarray]:
    """The old model's weights in the shapes of ``fresh`` (a newly initialised model over the
    current vocabularies).

    An item-indexed axis (size ``old_num_items`` before, ``new_num_items`` now: item embedding rows,
    output embedding rows, output bias) keeps every surviving item's slice at its new index and the
    fresh initialisation for the new items. ``old_to_new[i]`` is the new index of old item ``i``
    (-1: dropped); by default the identity, i.e. new items were appended. ``categories`` = (old,
    new) number of category rows and ``category_old_to_new`` do the same for a category-indexed
    axis (the feature models' category embedding). ``keep_fresh[i]`` keeps variable ``i``'s fresh
    value: the feature models' per-item attribute tables describe the current data, not a learned
    state. Every other variable must keep its shape and is copied.

    Axes are recognised by their sizes. Raises ValueError when the models do not match, or when a
    variable has more than one axis that could be item- or category-indexed and moving them would
    give different results (e.g. as many items as categories before and after).
    """
    item_map = _checked_map(old_to_new, old_num_items, new_num_items, "item")
    kinds = [("item", old_num_items, new_num_items, item_map)]
    if categories is not None:
        old_cats, new_cats = (int(n) for n in categories)
        kinds.append(("category", old_cats, new_cats, _checked_map(category_old_to_new, old_cats, new_cats, "category")))
    elif category_old_to_new is not None:
        raise ValueError("category_old_to_new needs categories=(old, new) row counts")
    if len(old) != len(fresh):
        raise ValueError(f"the old model has {len(old)} variables, the new one {len(fresh)}")
    if keep_fresh is not None and len(keep_fresh) != len(fresh):
        raise ValueError(f"keep_fresh has {len(keep_fresh)} entries for {len(fresh)} variables")

    def is_copy(old_size: int, new_size: int, mapping: np.ndarray) -> bool:
        # Moving along such an axis changes nothing: a plain copy gives the same values.
        return old_size == new_size and np.array_equal(mapping, np.arange(old_size))

    grown = []
    for i, (before, init) in enumerate(zip(old, fresh)):
        if keep_fresh is not None and keep_fresh[i]:
            grown.append(np.array(init, copy=True))
            continue
        candidates = [(axis, kind, mapping) for kind, old_size, new_size, mapping in kinds
                      if not is_copy(old_size, new_size, mapping)
                      for axis in range(init.ndim)
                      if before.ndim == init.ndim and before.shape[axis] == old_size and init.shape[axis] == new_size]
        if not candidates:
            if before.shape != init.shape:
                raise ValueError(f"variable {i}: shape {before.shape} cannot become {init.shape} "
                                 f"(items {old_num_items} -> {new_num_items}"
                                 + (f", categories {categories[0]} -> {categories[1]})" if categories else ")"))
            grown.append(np.array(before, dtype=init.dtype))
            continue
        if len(candidates) > 1:
            found = ", ".join(f"axis {axis} as {kind}" for axis, kind, _ in candidates)
            raise ValueError(f"variable {i} of shape {before.shape} -> {init.shape} is ambiguous ({found}): "
                             "its sizes do not say which axis is item- or category-indexed")
        axis, _, mapping = candidates[0]
        if [d for a, d in enumerate(before.shape) if a != axis] != [d for a, d in enumerate(init.shape) if a != axis]:
            raise ValueError(f"variable {i}: shape {before.shape} cannot become {init.shape}")
        kept = mapping >= 0
        out = np.array(init, copy=True)
        moved = np.moveaxis(out, axis, 0)  # a view: writing it writes `out`
        moved[mapping[kept]] = np.moveaxis(before, axis, 0)[kept]
        grown.append(out)
    return grown


# --------------------------------------------------------------------------------------------------
# Warm start: the vocabularies an export was trained with, and old-to-new index maps
# --------------------------------------------------------------------------------------------------

VOCAB_DIR = "vocab"  # inside an export: the vocabularies its rows are indexed by
ITEM_VOCAB_FILE = f"{C.ITEM_VOCAB}.parquet"  # item_id, item_idx
CATEGORY_VOCAB_FILE = f"{C.CATEGORY_VOCAB}.parquet"  # category, category_idx


@dataclasses.dataclass
class WarmStart:
    """What the workers need to start from a previous export: where it is and how its rows move.

    ``item_old_to_new`` / ``category_old_to_new``: new index of every old row (-1: dropped), None
    for the positional behaviour (old rows keep their index, new ones are appended).
    ``categories``: (old, new) category row counts, for the feature models only.
    """

    directory: str
    old_num_items: int
    item_old_to_new: Optional[np.ndarray] = None
    categories: Optional[tuple[int, int]] = None
    category_old_to_new: Optional[np.ndarray] = None


def save_vocabularies(model_dir: Path, item_vocab: Optional["DataFrame"],
                      category_vocab: Optional["DataFrame"]) -> Optional[Path]:
    """Writes the vocabularies a model is trained with to ``model_dir/vocab/`` (Parquet, by Spark),
    so that the export stays readable after the gold tables are refitted; returns that folder.

    One row per item or category: small, written as one file each. The folder is written beside
    and then renamed, so a reader sees the whole of it or none.
    """
    target = Path(model_dir) / VOCAB_DIR
    shutil.rmtree(target, ignore_errors=True)
    if item_vocab is None:
        return None
    tmp = Path(model_dir) / f".{VOCAB_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tables = [(item_vocab.select(C.ITEM_ID, C.ITEM_IDX), ITEM_VOCAB_FILE)]
    if category_vocab is not None:
        tables.append((category_vocab.select(C.CATEGORY, C.CATEGORY_IDX), CATEGORY_VOCAB_FILE))
    for table, name in tables:
        table.coalesce(1).write.mode("overwrite").parquet(str(tmp / name))
    os.replace(tmp, target)
    return target


def read_saved_vocabulary(spark: "SparkSession", model_dir: Path, name: str) -> Optional["DataFrame"]:
    """The vocabulary ``name`` (ITEM_VOCAB_FILE or CATEGORY_VOCAB_FILE) saved with an export, or None."""
    path = Path(model_dir) / VOCAB_DIR / name
    return spark.read.parquet(str(path)) if path.is_dir() else None


def vocabulary_map(old_vocab: "DataFrame", new_vocab: "DataFrame", key: str, index: str,
                   old_size: int, new_size: int, what: str = "item") -> np.ndarray:
    """old index -> new index (-1: dropped) of a model's ``old_size`` rows, by joining the old and
    the current vocabulary on ``key`` (item_id or category).

    Reserved indices (everything below each vocabulary's smallest index: PAD, unknown and any
    hashed out-of-vocabulary buckets) keep their position when both vocabularies reserve as many;
    otherwise they start fresh (their meaning changed). Rows beyond a model's size are ignored.
    Only the small index pairs reach the driver (one per surviving vocabulary entry).
    """
    from pyspark.sql import functions as F  # workers import this module without needing Spark SQL

    old = old_vocab.select(key, F.col(index).alias("_old"))
    new = new_vocab.select(key, F.col(index).alias("_new"))
    old_first = old.agg(F.min("_old")).first()[0]
    new_first = new.agg(F.min("_new")).first()[0]
    mapping = np.full(old_size, -1, dtype=np.int64)
    # An empty vocabulary has no item rows: every row of its model is reserved.
    old_reserved = min(old_size, old_size if old_first is None else int(old_first))
    new_reserved = new_size if new_first is None else int(new_first)
    if old_reserved == new_reserved:
        mapping[:old_reserved] = np.arange(old_reserved)
    else:
        log.warning("warm start: %d reserved %s indices before, %d now: the reserved rows start fresh",
                    old_reserved, what, new_reserved)
    pairs = (old.filter(F.col("_old") < old_size).join(new.filter(F.col("_new") < new_size), key, "inner")
             .select("_old", "_new").collect())
    for row in pairs:
        mapping[row["_old"]] = row["_new"]
    kept = int((mapping[old_reserved:] >= 0).sum()) if old_size > old_reserved else 0
    log.info("warm start: %d of %d old %s rows kept (%d reserved), %d dropped; %d rows now",
             kept, max(0, old_size - old_reserved), what, old_reserved if old_reserved == new_reserved else 0,
             max(0, old_size - old_reserved) - kept, new_size)
    return mapping


def plan_warm_start(spark: "SparkSession", previous_dir: Path, previous_meta: dict, spec_dict: dict,
                    item_vocab: Optional["DataFrame"], category_vocab: Optional["DataFrame"]) -> WarmStart:
    """The :class:`WarmStart` of a run starting from the export in ``previous_dir`` (its meta
    ``previous_meta``) with the current ``spec_dict`` and gold vocabularies.

    Maps are built where both the export's saved vocabulary and the current one exist; otherwise
    (an export older than the saved vocabularies, or no current vocabulary given) the rows stay
    where they were, with a warning: that is only right when the numbering did not change.
    """
    old_num_items = int(previous_meta["num_items"])
    new_num_items = int(spec_dict["num_items"])
    plan = WarmStart(directory=str(previous_dir), old_num_items=old_num_items)
    old_items = read_saved_vocabulary(spark, previous_dir, ITEM_VOCAB_FILE)
    if old_items is not None and item_vocab is not None:
        plan.item_old_to_new = vocabulary_map(old_items, item_vocab, C.ITEM_ID, C.ITEM_IDX,
                                              old_num_items, new_num_items, "item")
    else:
        log.warning("warm start from %s: %s, old item rows keep their positions (wrong if the item "
                    "vocabulary was renumbered)", previous_dir,
                    "the export has no saved vocabulary" if old_items is None else "no current item vocabulary given")
    old_features = (previous_meta.get("spec") or {}).get("features") or {}
    new_features = spec_dict.get("features") or {}
    if "num_categories" in old_features and "num_categories" in new_features:
        plan.categories = (int(old_features["num_categories"]), int(new_features["num_categories"]))
        old_categories = read_saved_vocabulary(spark, previous_dir, CATEGORY_VOCAB_FILE)
        if old_categories is not None and category_vocab is not None:
            plan.category_old_to_new = vocabulary_map(old_categories, category_vocab, C.CATEGORY, C.CATEGORY_IDX,
                                                      *plan.categories, "category")
        else:
            log.warning("warm start from %s: no saved or current category vocabulary, old category rows keep "
                        "their positions", previous_dir)
    return plan


# --------------------------------------------------------------------------------------------------
# The launcher and its failures
# --------------------------------------------------------------------------------------------------

def horovod_launcher() -> tuple[str, Callable[..., list]]:
    """``("HorovodRunner", run)`` on Databricks (sparkdl importable), else ``("horovod.spark.run", run)``.

    Both return ``run(fn, kwargs, num_proc, env)`` -> the ranks' return values in rank order (on
    HorovodRunner only rank 0's value exists: it returns a one-element list).
    """
    try:
        from sparkdl import HorovodRunner  # type: ignore[import-not-found]
    except ImportError:
        HorovodRunner = None
    if HorovodRunner is not None:
        def run_databricks(fn: Callable, kwargs: dict, num_proc: int, env: dict) -> list:
            os.environ.update(env)  # HorovodRunner has no env argument; its processes inherit the driver's
            return [HorovodRunner(np=num_proc).run(fn, **kwargs)]
        return "HorovodRunner", run_databricks

    def run_spark(fn: Callable, kwargs: dict, num_proc: int, env: dict) -> list:
        import sys

        import horovod.spark

        from recspark.session import logs_warnings

        # verbose=1 prints every rank's launch command (a long pickled blob) and Horovod's info
        # lines: only with --verbose. A failed rank is reported either way.
        return horovod.spark.run(fn, kwargs=kwargs, num_proc=num_proc, env=env, stdout=sys.stdout,
                                 stderr=sys.stderr, verbose=1 if logs_warnings() else 0)
    return "horovod.spark.run", run_spark


class RankFailedError(RuntimeError):
    """A Horovod process died; ``rank`` is the first one that exited (None when unknown)."""

    def __init__(self, message: str, rank: Optional[int], exit_code: Optional[int]) -> None:
        super().__init__(message)
        self.rank = rank
        self.exit_code = exit_code


# horovod.runner.gloo_run.launch_gloo reports the first process to exit non-zero by its slot index,
# which is its rank (slots are allocated in rank order).
_GLOO_FAILURE = re.compile(r"Process name:\s*(\d+)\s*\n\s*Exit code:\s*(-?\d+)")


def rank_failure(error: BaseException) -> RankFailedError:
    """Turns Horovod's launcher error into a :class:`RankFailedError` naming the failed rank."""
    match = _GLOO_FAILURE.search(str(error))
    rank, code = (int(match.group(1)), int(match.group(2))) if match else (None, None)
    signal_name = ""
    if code is not None and (code < 0 or code > 128):
        import signal

        number = -code if code < 0 else code - 128
        try:
            signal_name = f" ({signal.Signals(number).name})"
        except ValueError:
            pass
    who = f"Horovod rank {rank}" if rank is not None else "A Horovod process (rank unknown)"
    message = (f"{who} failed with exit code {code}{signal_name}; the run can be resumed from its last "
               f"epoch checkpoint (train.resume=true). Horovod said: {str(error).strip()}")
    return RankFailedError(message, rank, code)


# --------------------------------------------------------------------------------------------------
# The validation sample (driver side)
# --------------------------------------------------------------------------------------------------

def collect_validation_set(
    eval_queries: "DataFrame", item_vocab: "DataFrame", *, inputs: Sequence[str], max_users: int,
    exclude_seen: bool, seed: int,
) -> Optional[ValidationSet]:
    """Up to ``max_users`` validation queries of the gold ``eval_queries`` as numpy arrays, or None.

    None when there is no validation query, ``max_users`` is 0, or the model reads a column that
    eval_queries does not have (its early stopping is then off). The sample is a hash order of the
    users (stable across runs of the same data). Relevant item ids become item indices through
    the vocabulary (-1: not in it). User ids stay in Spark: the arrays hold only indices.
    """
    from pyspark.sql import functions as F

    from recspark import constants as C

    missing = [name for name in inputs if name not in eval_queries.columns]
    if max_users <= 0 or missing:
        return None
    sample = (eval_queries.filter(F.col(C.SPLIT) == C.VALIDATION)
              .orderBy(F.xxhash64(C.USER_ID, F.lit(seed)), C.USER_ID)
              .limit(max_users))
    relevant = (sample.select(C.USER_ID, F.posexplode(C.RELEVANT).alias("_pos", C.ITEM_ID))
                .join(item_vocab.select(C.ITEM_ID, C.ITEM_IDX), C.ITEM_ID, "left")
                .groupBy(C.USER_ID)
                .agg(F.sort_array(F.collect_list(F.struct(
                    F.col("_pos"), F.coalesce(F.col(C.ITEM_IDX), F.lit(-1)).alias("_idx")))).alias("_relevant")))
    # This collect is bounded: at most max_users rows (train.validation_users), each a few
    # max_seq_len-long int arrays plus the user's held-out and seen item indices, no user id.
    rows = (sample.join(relevant, C.USER_ID)
            .select(*inputs, F.col("_relevant._idx").alias("_relevant"), C.SEEN_IDX)
            .collect())
    if not rows:
        return None

    def padded(lists: list[list[int]], fill: int) -> np.ndarray:
        out = np.full((len(lists), max(1, max(len(x) for x in lists))), fill, dtype=np.int32)
        for i, values in enumerate(lists):
            out[i, :len(values)] = values
        return out

    relevant_lists = [list(row["_relevant"]) for row in rows]
    return ValidationSet(
        inputs={name: np.array([row[name] for row in rows], dtype=np.float32 if name in C.FLOAT_INPUTS else np.int32)
                for name in inputs},
        relevant=padded(relevant_lists, -1),
        num_relevant=np.array([len(x) for x in relevant_lists], dtype=np.int32),
        seen=padded([list(row[C.SEEN_IDX]) for row in rows], PAD_IDX),
        exclude_seen=exclude_seen,
    )


def validation_digest(validation: Optional[ValidationSet]) -> Optional[str]:
    """sha256 of a validation sample: part of the fingerprint (it decides the best epoch)."""
    if validation is None:
        return None
    digest = hashlib.sha256()
    for name in sorted(validation.inputs):
        digest.update(name.encode() + np.ascontiguousarray(validation.inputs[name]).tobytes())
    for array in (validation.relevant, validation.num_relevant):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(str(validation.exclude_seen).encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Worker side: restoring a checkpoint or a previous model, and the per-epoch checkpoint callback
# --------------------------------------------------------------------------------------------------

FAULT_ENV = "RECSPARK_TEST_KILL"  # "<rank>:<epoch>": tests only, see fault_callback


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
