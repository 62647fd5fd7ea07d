"""Column and table names shared by every stage, so that a rename happens in one place."""
import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import Column

# Canonical event columns (bronze and after).
EVENT_ID = "event_id"
USER_ID = "user_id"
ITEM_ID = "item_id"
EVENT_TYPE = "event_type"
EVENT_TS = "event_ts"
QUANTITY = "quantity"
PRICE = "price"
SESSION_ID = "session_id"
# Gold sequences: each step's money (quantity x price of a purchase with a known price, else null).
PURCHASE_VALUE = "purchase_value"
SOURCE_FILE = "source_file"
SOURCE_ROW = "source_row"

# Item and user attributes.
CATEGORY = "category"
BRAND = "brand"
STOCK = "stock"
AGE = "age"
GENDER = "gender"
REGION = "region"
ATTRIBUTES = "attributes"

# Quarantine.
RAW_RECORD = "raw_record"
REASON = "reason"

# Gold / model columns.
ITEM_IDX = "item_idx"
HISTORY = "history"
TARGET = "target"
SPLIT = "split"
RELEVANT = "relevant"
SEEN = "seen"
TRAIN_COUNT = "train_count"

# Recommendations and predictions.
RANK = "rank"
SCORE = "score"
CONFIDENCE = "confidence"
RUN_ID = "run_id"
MODEL_NAME = "model_name"
RECOMMENDATIONS = "recommendations"
PREDICTION = "prediction"

EVENT_TYPES_DEFAULT = ("view", "cart", "purchase")

# Index layout of items (item_idx) and categories (category_idx), the one source of truth:
#   0                      PAD_IDX: pads sequences (for categories: a missing category);
#   1                      OOV_IDX: the generic unknown (the scorer's stand-in for an empty history);
#   2 .. 2 + buckets - 1   hashed buckets: an id outside the vocabulary goes to bucket
#                          pmod(xxhash64(id), buckets), so unknown ids stay apart from each other;
#   ItemLayout(buckets).first_item ..  the vocabulary, most frequent first.
# With buckets = 1 there is no bucket row: every unknown id shares OOV_IDX and the vocabulary starts
# at 2 (the layout before hashed buckets existed). Indices below first_item are "reserved": never a
# training target, never recommended. Only the configuration knows `buckets`, so there is no
# module-level "first item" constant: build an ItemLayout from the configuration and pass it.
PAD_IDX = 0
OOV_IDX = 1
FIRST_BUCKET_IDX = 2


@dataclasses.dataclass(frozen=True)
class ItemLayout:
    """Where PAD, the unknown, the hashed out-of-vocabulary buckets and the vocabulary sit in an index
    range (items or categories), built from the configured number of buckets."""

    oov_buckets: int
    pad: int = dataclasses.field(default=PAD_IDX, init=False)
    unknown: int = dataclasses.field(default=OOV_IDX, init=False)
    first_bucket: int = dataclasses.field(default=FIRST_BUCKET_IDX, init=False)

    def __post_init__(self) -> None:
        if self.oov_buckets < 1:
            raise ValueError(f"out-of-vocabulary buckets must be >= 1, got {self.oov_buckets}")

    @property
    def first_item(self) -> int:
        """The first vocabulary index, which is also the number of reserved indices (one bucket is
        the generic unknown itself, so it adds no row)."""
        return self.first_bucket if self.oov_buckets == 1 else self.first_bucket + self.oov_buckets

    @property
    def buckets(self) -> range:
        """The indices an id outside the vocabulary can get (just ``unknown`` with one bucket)."""
        return range(self.unknown, self.unknown + 1) if self.oov_buckets == 1 else range(self.first_bucket, self.first_item)

    def reserved(self, index: int) -> bool:
        """True for PAD, the unknown and the buckets: never a training target, never recommended."""
        return index < self.first_item

    def unknown_index(self, key: "Column") -> "Column":
        """Spark expression: the reserved index of an id outside the vocabulary, first_bucket +
        pmod(xxhash64(id), oov_buckets), or ``unknown`` with one bucket.

        xxhash64 is a Spark built-in with a fixed seed, so an id gets the same bucket in every run and
        on every executor (Python's hash() is salted per process); pmod keeps the bucket non-negative.
        """
        from pyspark.sql import functions as F  # this module stays importable without Spark

        if self.oov_buckets == 1:
            return F.lit(self.unknown)
        return (F.lit(self.first_bucket) + F.pmod(F.xxhash64(key), F.lit(self.oov_buckets))).cast("int")


def first_vocab_index(buckets: int) -> int:
    """``ItemLayout(buckets).first_item``: the first vocabulary index with ``buckets`` hashed
    out-of-vocabulary buckets (kept for the category vocabulary's callers)."""
    return ItemLayout(buckets).first_item


# The layout of a saved model whose model_meta.json predates `first_item_idx`: such models were
# trained before hashed buckets existed, i.e. with the single shared unknown (first item 2).
LEGACY_LAYOUT = ItemLayout(oov_buckets=1)

# Layers and tables.
BRONZE, SILVER, GOLD = "bronze", "silver", "gold"
EVENTS, ITEMS, USERS, QUARANTINE, RUN_LOG = "events", "items", "users", "quarantine", "run_log"
ITEM_VOCAB = "item_vocab"
TRAIN_EXAMPLES = "train_examples"
# Non-overlapping max_seq_len windows: what a model that learns at every step reads (SASRec).
TRAIN_WINDOWS = "train_windows"
# One row per training basket, every item of it a target: what a next-basket model reads (repeatnet).
TRAIN_BASKETS = "train_baskets"
# train_baskets over the training and validation periods: what a validation-tuned next-basket model
# is refitted on before it is tested and served (train.refit).
REFIT_BASKETS = "refit_baskets"
# The serving side of gold, over every period: the training vocabulary extended by the items that
# reached `min_item_count` only later (appended, train_count 0, so every training index keeps its
# item), the sequences indexed by it, and train_baskets over all periods from them: what the model
# that serves is fitted on last (train.refit), so that it has learned the latest weeks and their new items.
SERVING_ITEM_VOCAB = "serving_item_vocab"
SERVING_SEQUENCES = "serving_sequences"
SERVE_BASKETS = "serve_baskets"
# The gold table each model trains on (features writes only the ones train.models read): one
# prediction per row reads every step (train_examples); a model that learns at every step of a row
# reads non-overlapping windows, so each step is learned once (SASRec); next-basket models read baskets.
MODEL_EXAMPLES = {"mean_pool": TRAIN_EXAMPLES, "sasrec": TRAIN_WINDOWS, "towers": TRAIN_EXAMPLES,
                  "dnn": TRAIN_EXAMPLES, "repeatnet": TRAIN_BASKETS, "repeatnet_explore": TRAIN_BASKETS,
                  "repeatnet_next_item": TRAIN_BASKETS}
# What a model was fitted on (metrics.json "fit_on", MLflow tag): the training period, train +
# validation (a tested refit), or every period (the serving fit, never tested: nothing is left after it).
FIT_ON_TRAIN = "train"
FIT_ON_REFIT = "train+validation"
FIT_ON_ALL = "all events"
EVAL_QUERIES = "eval_queries"
SERVING_HISTORIES = "serving_histories"

# Feedback on served lists (recspark.feedback): bronze / silver `feedback`, one row per impression or
# response; gold `served_metrics`, one row per recommendations run.
FEEDBACK = "feedback"
FEEDBACK_ID = "feedback_id"
RESPONSE = "response"
SERVED_METRICS = "served_metrics"

# The splits of gold sequences (the `split` of every step).
TRAIN, VALIDATION, TEST = "train", "validation", "test"

# Behaviour sequences beside `history`, aligned with it and left-padded with 0: the event type of
# each step (1 + its position in ingest.event_types; 0 pads) and the log2-bucketed time gap from the
# step to the sequence's latest step (1 = same time; 0 pads).
HISTORY_TYPES = "history_types"
HISTORY_GAPS = "history_gaps"

# Repeat profiles (repeatnet): each row's own items from before its cut-off, most often bought first,
# as item_idx (int[repeat_candidates], PAD-padded) and REPEAT_FEATURE_COUNT numbers per item
# (float[repeat_candidates * REPEAT_FEATURE_COUNT], flattened; see recspark.pipeline.features).
REPEAT_ITEMS = "repeat_items"
REPEAT_FEATURES = "repeat_features"
REPEAT_FEATURE_COUNT = 7
# Microseconds in a day: the repeat features' day counts (Spark and the serving module's Python).
DAY_MICROS = 86_400_000_000.0
# A next-basket example's shown-and-ignored items (int[feedback.k], PAD-padded): the items of the
# latest list served to its user before the basket (within feedback.ignored_days) that drew no
# response. Read only by a loss (train.ignored_weight), never by the model's forward pass.
IGNORED = "ignored"
# Model inputs that are numbers, not indices.
FLOAT_INPUTS = ("user_vector", REPEAT_FEATURES)

# The item_idx of everything a query or serving row's user has interacted with (excluded from
# their recommendations when evaluate.exclude_seen is on).
SEEN_IDX = "seen_idx"

# Feature tables: category vocabulary, normalised numeric user features, stored statistics.
CATEGORY_IDX = "category_idx"
CATEGORY_VOCAB = "category_vocab"
USER_VECTOR = "user_vector"
FEATURE_STATS = "feature_stats"

# The baselines evaluate can rank beside the learned models, in report order (evaluate.baselines
# chooses among them; recspark.evaluation.evaluate builds them).
BASELINES = ("most_popular", "most_popular_recent", "item_cooccurrence", "als", "repeat_purchase", "tifu_knn")

# The replayed loop (recspark.loop) keeps its tables apart: a lakehouse folder "<run name>-loop", or
# with paths.catalog a schema "<schema>_<run name>_loop"; erasure (recspark.pipeline.forget) finds both.
LOOP_SUFFIX = "loop"
