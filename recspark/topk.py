"""The top-k of a batch of users over the catalogue, in blocks: the one top-k of recspark (the scorer's
UDF, the real-time pyfunc and training's validation all rank with it). NumPy only, so anything may
import it."""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np


_NO_PAIRS = (np.zeros(0, np.int64), np.zeros(0, np.int64))


def excluded_pairs(per_row: Sequence | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, items) of per-row item lists (e.g. each user's seen items), sorted by item so that each
    item block finds its own pairs by bisection."""
    if per_row is None:
        return _NO_PAIRS
    arrays = [np.asarray(items if items is not None else (), dtype=np.int64) for items in per_row]
    lengths = np.fromiter((len(a) for a in arrays), np.int64, count=n)
    if not lengths.sum():
        return _NO_PAIRS
    rows, items = np.repeat(np.arange(n), lengths), np.concatenate(arrays)
    order = np.argsort(items, kind="stable")
    return rows[order], items[order]


def _row_logsumexp(scores: np.ndarray) -> np.ndarray:
    """float64 log-sum-exp of each row; -inf for a row without a finite value."""
    peak = scores.max(axis=1)
    shift = np.where(np.isfinite(peak), peak, 0.0).astype(np.float32)
    buffer = np.subtract(scores, shift[:, None])  # one temporary, exponentiated in place
    with np.errstate(divide="ignore", under="ignore"):
        np.exp(buffer, out=buffer)
        return np.log(buffer.sum(axis=1, dtype=np.float64)) + shift


@dataclasses.dataclass
class TopK:
    """A batch's running top-K over the item blocks, and the per-row sums its confidences need."""

    items: np.ndarray  # [n, k] int64 item_idx, -1 where fewer than k items could be recommended
    scores: np.ndarray  # [n, k] float32, -inf there; in no particular order
    lse_all: np.ndarray  # [n] log-sum-exp of the block scores over every non-reserved item (when asked)
    lse_rest: np.ndarray  # [n] log-sum-exp over the items that stayed candidates (not excluded, not held out)
    rest: np.ndarray  # [n] how many items those are (counted only with need_lse_all)


def top_k_positions(scores: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Per row, the positions of the ``k`` best ``scores`` (``width > k``), a tie at the k-th place going
    to the lower item_idx, as ranked_order and a full sort do: argpartition alone picks among tied
    values arbitrarily (an untrained or dead model scores many items exactly alike). The sort runs
    only for rows whose k-th value is tied beyond the kept places."""
    width = scores.shape[1]
    keep = np.argpartition(scores, width - k, axis=1)[:, width - k:]
    kept = np.take_along_axis(scores, keep, axis=1)
    kth = kept.min(axis=1, keepdims=True)
    tied = np.isfinite(kth[:, 0]) & ((scores == kth).sum(axis=1) > (kept == kth).sum(axis=1))
    if tied.any():
        rows = np.nonzero(tied)[0]
        keep[rows] = ranked_order(items[rows], scores[rows])[:, :k]
    return keep


def blocked_top_k(score_block: Callable[[int, int], np.ndarray], n: int, num_items: int, first_item: int, k: int,
                  block: int, excluded: tuple[np.ndarray, np.ndarray] = _NO_PAIRS,
                  blocked: np.ndarray | None = None, held_out: tuple[np.ndarray, np.ndarray] = _NO_PAIRS,
                  need_lse_all: bool = False) -> TopK:
    """Top-``k`` items of ``n`` rows, scoring the items ``block`` at a time (``score_block(lo, hi)``
    -> float32 [n, hi - lo]) and merging each block into a running top-``k``: memory is n x block +
    n x k whatever ``num_items``. Reserved indices (below ``first_item``) are never scored; the
    ``excluded`` (rows, items) pairs (seen items), the ``blocked`` item mask (out of stock, for every
    row) and the ``held_out`` pairs (items the caller scores itself) never enter the top-k."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    top_scores = np.full((n, k), -np.inf, np.float32)
    top_items = np.full((n, k), -1, np.int64)
    threshold = np.full(n, -np.inf, np.float32)  # each row's k-th best so far
    lse_all = np.full(n, -np.inf)
    lse_rest = np.full(n, -np.inf)
    rest = np.zeros(n, np.int64)
    for lo in range(first_item, num_items, block):
        hi = min(lo + block, num_items)
        scores = score_block(lo, hi)
        if scores.dtype != np.float32 or scores.base is not None or not scores.flags.writeable:
            scores = np.array(scores, dtype=np.float32)  # a copy of its own: it is masked in place
        if need_lse_all:
            lse_all = np.logaddexp(lse_all, _row_logsumexp(scores))
        if blocked is not None:
            scores[:, blocked[lo:hi]] = -np.inf
        for rows, items in (excluded, held_out):
            start, stop = np.searchsorted(items, (lo, hi))
            scores[rows[start:stop], items[start:stop] - lo] = -np.inf
        lse_rest = np.logaddexp(lse_rest, _row_logsumexp(scores))
        if need_lse_all:  # only the repeat plan's confidences count the rest (one more pass otherwise)
            rest += np.isfinite(scores).sum(axis=1)
        # Only a value above its row's current k-th best can enter that row's top-k.
        above = scores > threshold[:, None]
        if np.count_nonzero(above) > n * k:
            # Many (the first block): each row's block top-k by argpartition, then merged with the running top-k.
            width = hi - lo
            if width > k:
                part = top_k_positions(scores, np.broadcast_to(np.arange(lo, hi), scores.shape), k)
                block_scores, block_items = np.take_along_axis(scores, part, axis=1), part + lo
            else:
                block_scores, block_items = scores, np.broadcast_to(np.arange(lo, hi), scores.shape)
            touched = np.arange(n)
            merged_scores = np.concatenate([top_scores, block_scores], axis=1)
            merged_items = np.concatenate([top_items, block_items], axis=1)
        else:
            # Few (later blocks): only they are gathered, row by row, beside the running top-k.
            rows, cols = np.nonzero(above)
            if not len(rows):
                continue
            touched, starts, counts = np.unique(rows, return_index=True, return_counts=True)
            width = k + int(counts.max())
            merged_scores = np.full((len(touched), width), -np.inf, np.float32)
            merged_items = np.full((len(touched), width), -1, np.int64)
            merged_scores[:, :k], merged_items[:, :k] = top_scores[touched], top_items[touched]
            local = np.repeat(np.arange(len(touched)), counts)
            slot = k + np.arange(len(rows)) - np.repeat(starts, counts)  # nonzero lists each row's values together
            merged_scores[local, slot], merged_items[local, slot] = scores[rows, cols], cols + lo
        keep = top_k_positions(merged_scores, merged_items, k)
        top_scores[touched] = np.take_along_axis(merged_scores, keep, axis=1)
        top_items[touched] = np.take_along_axis(merged_items, keep, axis=1)
        threshold[touched] = top_scores[touched].min(axis=1)
    return TopK(top_items, top_scores, lse_all, lse_rest, rest)


def ranked_order(items: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per row, the positions of a top-k best first (ties: lower item_idx first)."""
    return np.lexsort((items, -scores), axis=1)
