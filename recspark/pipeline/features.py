"""Features: silver -> gold. Time-based split, item vocabulary, behaviour sequences, model inputs.

Everything is Spark built-ins over arrays (``array_sort``, ``filter``, ``transform``, ``slice``,
``posexplode``): no Python UDF, no collect.

Split: each user's events are grouped in sessions (baskets; for data without sessions, each event
is its own). The user's last ``n_test_sessions`` go to test, the ``n_validation_sessions`` before
them to validation, the rest to train. Sessions are ordered by their last timestamp, ties by the
position in the source file (for MovieLens-1M: the row order of ``ml-1m.inter``). A user with too
few sessions stays entirely in train.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import Config, FeaturesConfig
from recspark.utils.delta import overwrite_table, read_table, table_exists

TRAIN = "train"
SEQUENCES = "sequences"
SEEN_IDX = "seen_idx"


def with_split(events: DataFrame, n_test: int, n_validation: int) -> DataFrame:
    """Adds ``split`` (train / validation / test) by each user's latest sessions."""
    unit = F.coalesce(F.col(C.SESSION_ID), F.col(C.EVENT_ID))
    sessions = (
        events.withColumn("_unit", unit)
        .groupBy(C.USER_ID, "_unit")
        .agg(F.max(F.struct(C.EVENT_TS, C.SOURCE_FILE, C.SOURCE_ROW)).alias("_end"))
    )
    latest_first = Window.partitionBy(C.USER_ID).orderBy(F.col("_end").desc())
    ranked = (
        sessions.withColumn("_rank", F.row_number().over(latest_first))
        .withColumn("_sessions", F.count(F.lit(1)).over(Window.partitionBy(C.USER_ID)))
        .withColumn(
            C.SPLIT,
            F.when(F.col("_sessions") <= n_test + n_validation, F.lit(TRAIN))
            .when(F.col("_rank") <= n_test, F.lit(C.TEST))
            .when(F.col("_rank") <= n_test + n_validation, F.lit(C.VALIDATION))
            .otherwise(F.lit(TRAIN)),
        )
        .select(C.USER_ID, "_unit", C.SPLIT)
    )
    return events.withColumn("_unit", unit).join(ranked, [C.USER_ID, "_unit"]).drop("_unit")


def fit_item_vocab(train_events: DataFrame, min_count: int) -> DataFrame:
    """item_id -> contiguous item_idx (from FIRST_ITEM_IDX, most frequent first) for items seen at
    least ``min_count`` times in the training period; every other item maps to OOV_IDX."""
    counts = train_events.groupBy(C.ITEM_ID).agg(F.count(F.lit(1)).alias(C.TRAIN_COUNT))
    # A global order needs one partition; the vocabulary is one row per item, small next to events.
    order = Window.orderBy(F.col(C.TRAIN_COUNT).desc(), F.col(C.ITEM_ID))
    return (counts.filter(F.col(C.TRAIN_COUNT) >= min_count)
            .withColumn(C.ITEM_IDX, (F.row_number().over(order) + (C.FIRST_ITEM_IDX - 1)).cast("int")))


def with_item_idx(events: DataFrame, vocab: DataFrame) -> DataFrame:
    return (events.join(F.broadcast(vocab.select(C.ITEM_ID, C.ITEM_IDX)), C.ITEM_ID, "left")
            .withColumn(C.ITEM_IDX, F.coalesce(F.col(C.ITEM_IDX), F.lit(C.OOV_IDX)).cast("int")))


def build_sequences(events: DataFrame) -> DataFrame:
    """One row per user: the chronological sequence of (item, index, time, event type, split)."""
    step = F.struct(C.EVENT_TS, C.SOURCE_FILE, C.SOURCE_ROW, C.ITEM_ID, C.ITEM_IDX, C.EVENT_TYPE, C.SPLIT)
    ordered = F.array_sort(F.collect_list(step))
    return events.groupBy(C.USER_ID).agg(ordered.alias("_steps")).select(
        C.USER_ID,
        *[F.col("_steps")[name].alias(name) for name in (C.ITEM_ID, C.ITEM_IDX, C.EVENT_TS, C.EVENT_TYPE, C.SPLIT)],
    )


def left_pad(items: Column, length: int) -> Column:
    """The last ``length`` entries of an int array, left-padded with PAD_IDX to exactly ``length``."""
    tail = F.when(F.size(items) > length, F.slice(items, -length, length)).otherwise(items)
    return F.concat(F.array_repeat(F.lit(C.PAD_IDX), F.lit(length) - F.size(tail)), tail)


def _indices_where(sequences_split: str, splits: tuple[str, ...]) -> Column:
    """Item indices of the steps whose split is one of ``splits``, in order."""
    zipped = F.arrays_zip(F.col(C.ITEM_IDX).alias("i"), F.col(C.SPLIT).alias("s"))
    kept = F.filter(zipped, lambda step: step["s"].isin(*splits))
    return F.transform(kept, lambda step: step["i"])


def _item_ids_where(splits: tuple[str, ...]) -> Column:
    zipped = F.arrays_zip(F.col(C.ITEM_ID).alias("i"), F.col(C.SPLIT).alias("s"))
    return F.array_distinct(F.transform(F.filter(zipped, lambda step: step["s"].isin(*splits)), lambda step: step["i"]))


def train_examples(sequences: DataFrame, config: FeaturesConfig) -> DataFrame:
    """Next-item examples from the training period: each target with the items before it.

    Examples whose target is outside the vocabulary are dropped (nothing to learn to predict), as
    are examples with an empty history; only each user's latest ``max_examples_per_user`` stay.
    """
    length = config.max_seq_len
    train_items = _indices_where(C.SPLIT, (TRAIN,))
    exploded = sequences.select(C.USER_ID, train_items.alias("_items")).select(
        C.USER_ID, "_items", F.posexplode("_items").alias("_pos", C.TARGET)
    )
    history = F.slice("_items", F.greatest(F.lit(1), F.col("_pos") - length + 1), F.least(F.col("_pos"), F.lit(length)))
    return (
        exploded.filter((F.col("_pos") >= 1) & (F.col(C.TARGET) != C.OOV_IDX))
        .filter(F.col("_pos") >= F.size("_items") - config.max_examples_per_user)
        .select(C.USER_ID, left_pad(history, length).alias(C.HISTORY), F.col(C.TARGET).cast("int"))
    )


def eval_queries(sequences: DataFrame, config: FeaturesConfig) -> DataFrame:
    """One row per (user, held-out split): the history before it, the held-out items (relevant)
    and every item index seen before it (for models that must not recommend seen items)."""
    queries = []
    for split, before in ((C.VALIDATION, (TRAIN,)), (C.TEST, (TRAIN, C.VALIDATION))):
        queries.append(sequences.select(
            C.USER_ID,
            F.lit(split).alias(C.SPLIT),
            left_pad(_indices_where(C.SPLIT, before), config.max_seq_len).alias(C.HISTORY),
            _item_ids_where((split,)).alias(C.RELEVANT),
            _item_ids_where(before).alias(C.SEEN),
            F.array_distinct(_indices_where(C.SPLIT, before)).alias(SEEN_IDX),
        ).filter(F.size(C.RELEVANT) > 0))
    return queries[0].unionByName(queries[1])


def serving_histories(sequences: DataFrame, config: FeaturesConfig) -> DataFrame:
    """Each user's latest items over all periods: the input for scoring everyone now."""
    every = (TRAIN, C.VALIDATION, C.TEST)
    return sequences.select(
        C.USER_ID,
        left_pad(_indices_where(C.SPLIT, every), config.max_seq_len).alias(C.HISTORY),
        F.array_distinct(_indices_where(C.SPLIT, every)).alias(SEEN_IDX),
    )


def build_features(spark: SparkSession, config: Config) -> dict:
    """Writes the gold tables: item_vocab, sequences, train_examples, eval_queries, serving_histories,
    user_features and item_features."""
    from recspark.pipeline.item_features import ITEM_FEATURES, build_item_features  # they import TRAIN from here
    from recspark.pipeline.user_features import USER_FEATURES, build_user_features

    events = read_table(spark, config.table_path(C.SILVER, C.EVENTS))
    split = with_split(events, config.features.n_test_sessions, config.features.n_validation_sessions)
    split = split.persist()  # read by the vocabulary and by the sequences
    vocab = fit_item_vocab(split.filter(F.col(C.SPLIT) == TRAIN), config.features.min_item_count)
    overwrite_table(vocab, config.table_path(C.GOLD, C.ITEM_VOCAB))
    vocab = read_table(spark, config.table_path(C.GOLD, C.ITEM_VOCAB))
    overwrite_table(build_sequences(with_item_idx(split, vocab)), config.table_path(C.GOLD, SEQUENCES))
    items = read_table(spark, config.table_path(C.SILVER, C.ITEMS))
    users_path = config.table_path(C.SILVER, C.USERS)
    users = read_table(spark, users_path) if table_exists(spark, users_path) else None
    entity_features = {
        USER_FEATURES: build_user_features(split, users, items, config.features.interest_top_n,
                                           config.features.interest_half_life_days),
        ITEM_FEATURES: build_item_features(split, items, vocab, config.features.price_buckets),
    }
    for table, df in entity_features.items():
        overwrite_table(df, config.table_path(C.GOLD, table))
    split.unpersist()
    sequences = read_table(spark, config.table_path(C.GOLD, SEQUENCES))
    outputs = {
        C.TRAIN_EXAMPLES: train_examples(sequences, config.features),
        C.EVAL_QUERIES: eval_queries(sequences, config.features),
        C.SERVING_HISTORIES: serving_histories(sequences, config.features),
    }
    for table, df in outputs.items():
        overwrite_table(df, config.table_path(C.GOLD, table))
    return {table: config.table_path(C.GOLD, table) for table in (C.ITEM_VOCAB, SEQUENCES, *outputs, *entity_features)}
