"""Warm start: a new run begins from the previous export, its rows moved to the current vocabularies.

Every export saves the item and category vocabularies it was trained with (``vocab/``); the next
run joins them with the current gold vocabularies on item_id / category (:func:`plan_warm_start`),
so each surviving item's rows move to its new index, dropped items disappear and new items keep
their fresh initialisation (:func:`grow_weights`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from recspark import constants as C

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


PREVIOUS_DIR = "previous"  # the last export, kept for a warm start


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
