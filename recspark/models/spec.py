"""ModelSpec: the data-derived sizes every model is built from, in a module of its own so that the
model classes import it without importing the package's registry of them (recspark.models)."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from recspark import constants as C


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Sizes taken from the data (not tuned): a model is rebuilt from these plus its TrainConfig.

    JSON-serialisable (:meth:`to_dict`), so it travels in ``model_meta.json`` and the model's config.
    """

    num_items: int  # item_idx range, PAD and OOV included: max(item_idx) + 1
    max_seq_len: int
    # Event type ids: 0 pads, 1 + position in ingest.event_types, len(event_types) + 1 unknown.
    num_event_types: int = 2
    # Time-gap buckets 1..num_gap_buckets (0 pads): the embedding table has num_gap_buckets + 1 rows.
    num_gap_buckets: int = 1
    # Training count per item_idx (PAD and OOV: 0), only for the "popularity" negative sampler.
    item_counts: Optional[list[int]] = None
    # Feature models (towers, dnn) only: user_vector_dim, num_categories, num_prices and the per-item
    # attribute tables (recspark.models.item_tables.feature_spec).
    features: Optional[dict[str, Any]] = None
    # The first vocabulary item_idx = the count of reserved indices (PAD, OOV, hashed OOV buckets:
    # config.features.item_layout.first_item); ranking never returns one below it. No default: it
    # depends on features.oov_buckets, so whoever builds a spec states it (keyword-only).
    first_item_idx: int = dataclasses.field(kw_only=True)
    # Items in a row's repeat profile (features.repeat_candidates; repeatnet's repeat head).
    repeat_candidates: int = 0
    # Numbers per repeat candidate (gold repeat_features): the count of the recspark that trained the
    # model, which must match the features stage that feeds it (C.REPEAT_FEATURE_COUNT); None in an
    # export made before the count was recorded (2026-12-02), whose count cannot be told.
    repeat_features: Optional[int] = C.REPEAT_FEATURE_COUNT

    def __post_init__(self) -> None:
        if self.num_items < 3:
            raise ValueError(f"num_items must count PAD, OOV and at least one item, got {self.num_items}")
        if self.first_item_idx < 2 or self.num_items <= self.first_item_idx:
            raise ValueError(f"num_items={self.num_items} must count the {self.first_item_idx} reserved indices "
                             "(PAD, OOV, buckets) and at least one item")
        if self.max_seq_len < 1 or self.num_event_types < 1 or self.num_gap_buckets < 1:
            raise ValueError(f"sizes must be positive: {self}")
        if self.item_counts is not None and len(self.item_counts) != self.num_items:
            raise ValueError(f"item_counts has {len(self.item_counts)} entries for {self.num_items} items")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelSpec":
        # A model_meta.json written before first_item_idx existed comes from the single-unknown layout;
        # one written before repeat_features existed has a repeat profile of an unknown width.
        legacy = {"first_item_idx": C.LEGACY_LAYOUT.first_item, "repeat_features": None}
        return cls(**{**legacy, **values})
