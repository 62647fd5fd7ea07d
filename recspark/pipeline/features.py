"""Features: silver -> gold. Train / validation / test split, vocabularies, behaviour sequences,
model inputs.

Spark built-ins over arrays (``array_sort``, ``filter``, ``transform``, ``slice``, ``posexplode``)
everywhere but in the repeat profiles (a grouped pandas function per user, for speed: see
:mod:`recspark.pipeline.repeat_profiles`); no collect of data rows (only the one-row split description).

Split (``features.split``):
- "sessions" (default, leave-last-out): each user's events are grouped in sessions (baskets; for
  data without sessions, each event is its own). The user's last ``n_test_sessions`` go to test,
  the ``n_validation_sessions`` before them to validation, the rest to train. Sessions are ordered
  by their last timestamp, ties by the position in the source file (for MovieLens-1M: the row
  order of ``ml-1m.inter``). A user with too few sessions stays entirely in train.
- "time" (one global cut): events at or after ``test_start`` are test, at or after
  ``validation_start`` validation, the rest train; a cut left null is the 80% / 90% approximate
  quantile of all event times. A user with no event before a period gets no query for it (see
  ``eval_queries``); users first seen after the training period have no user_features row.
Either way the gold table ``split_info`` records the method, the cut timestamps, where they came
from and the events per split, so a run can be audited.
"""
from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import Config, FeaturesConfig, FeedbackConfig
from recspark.pipeline.normalisation import with_user_vector
from recspark.pipeline.repeat_profiles import NO_CUT, basket_steps, item_repurchase_rates, with_repeat_profile
from recspark.pipeline.user_features import purchase_value, rfm_before, rfm_of
from recspark.utils.delta import overwrite_table, read_table, table_exists

TRAIN = C.TRAIN
SEQUENCES = "sequences"
SEEN_IDX = C.SEEN_IDX
SPLIT_INFO = "split_info"
VALIDATION_START, TEST_START, CUTS_FROM = "validation_start", "test_start", "cuts_from"
# Without configured cuts, the time split puts the latest 20% of events in validation and test.
QUANTILE_CUTS = (0.8, 0.9)


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


def time_cuts(events: DataFrame, validation_start: str | None, test_start: str | None) -> DataFrame:
    """One row: the ``validation_start`` and ``test_start`` timestamps of the global time split and
    where they came from. A cut left null in the configuration is the 80% (validation) or 90%
    (test) quantile of the event times at minute resolution (see :func:`minute_quantiles`). The
    validation cut never falls after the test cut."""
    given = lambda text: F.lit(text).cast("timestamp") if text is not None else None
    if validation_start is not None and test_start is not None:
        cuts = events.sparkSession.range(1).select(given(validation_start).alias("_v"), given(test_start).alias("_t"))
    else:
        quantiles = minute_quantiles(events, QUANTILE_CUTS)
        cut = lambda text, k: given(text) if text is not None else F.col(f"_q{k}")
        cuts = quantiles.select(cut(validation_start, 0).alias("_v"), cut(test_start, 1).alias("_t"))
    origin = {(True, True): "config", (False, False): "quantiles 0.8, 0.9 of event_ts",
              (True, False): "validation_start from config, test_start quantile 0.9 of event_ts",
              (False, True): "validation_start quantile 0.8 of event_ts, test_start from config"}
    return cuts.select(F.least("_v", "_t").alias(VALIDATION_START), F.col("_t").alias(TEST_START),
                       F.lit(origin[(validation_start is not None, test_start is not None)]).alias(CUTS_FROM))


def minute_quantiles(events: DataFrame, quantiles: Sequence[float]) -> DataFrame:
    """One row, columns ``_q0``, ``_q1``, ...: for each quantile q the start of the first minute by
    which at least q of all events have happened.

    Exact and independent of how the events are partitioned, so re-running ingest and prepare
    (which may lay the same rows out in other files) gives the same cut; ``percentile_approx``
    does not (its partial sketches merge in partition order, moving the cut by seconds). Events are
    counted per minute first: the cumulative sum runs over one row per minute with events (at most
    525,600 a year) in a single partition, not over the events.
    """
    minute = F.date_trunc("minute", C.EVENT_TS)
    per_minute = events.groupBy(minute.alias("_minute")).agg(F.count(F.lit(1)).alias("_n"))
    so_far = F.sum("_n").over(Window.orderBy("_minute").rowsBetween(Window.unboundedPreceding, Window.currentRow))
    total = F.sum("_n").over(Window.partitionBy())
    ranked = per_minute.select("_minute", so_far.alias("_so_far"), total.alias("_total"))
    return ranked.agg(*[F.min(F.when(F.col("_so_far") >= F.lit(q) * F.col("_total"), F.col("_minute"))).alias(f"_q{k}")
                        for k, q in enumerate(quantiles)])


def with_time_split(events: DataFrame, cuts: DataFrame) -> DataFrame:
    """Adds ``split`` by one global time cut: test from ``test_start``, validation from
    ``validation_start`` (before test_start), train before; ``cuts`` is the one row of ``time_cuts``."""
    return (events.crossJoin(F.broadcast(cuts.select(VALIDATION_START, TEST_START)))
            .withColumn(C.SPLIT, F.when(F.col(C.EVENT_TS) >= F.col(TEST_START), F.lit(C.TEST))
                        .when(F.col(C.EVENT_TS) >= F.col(VALIDATION_START), F.lit(C.VALIDATION))
                        .otherwise(F.lit(TRAIN)))
            .drop(VALIDATION_START, TEST_START))


def filter_protocol(events: DataFrame, config: FeaturesConfig) -> DataFrame:
    """The events a published protocol keeps: items with at least ``min_item_events`` events in all
    the data, then users with at least ``min_user_sessions`` sessions (baskets) among those events.
    Both 0 (the default): every event."""
    if config.min_item_events > 0:
        items = (events.groupBy(C.ITEM_ID).agg(F.count(F.lit(1)).alias("_n"))
                 .filter(F.col("_n") >= config.min_item_events).select(C.ITEM_ID))
        events = events.join(items, C.ITEM_ID, "left_semi")
    if config.min_user_sessions > 0:
        unit = F.coalesce(F.col(C.SESSION_ID), F.col(C.EVENT_ID))
        users = (events.groupBy(C.USER_ID).agg(F.count_distinct(unit).alias("_n"))
                 .filter(F.col("_n") >= config.min_user_sessions).select(C.USER_ID))
        events = events.join(users, C.USER_ID, "left_semi")
    return events


def split_events(events: DataFrame, config: FeaturesConfig) -> tuple[DataFrame, DataFrame]:
    """The events with ``split`` by ``features.split``, and the one-row description of the split
    (method, cut timestamps, where they came from, events per split) for the gold table split_info."""
    if config.split == "time":
        cuts = time_cuts(events, config.validation_start, config.test_start)
        split = with_time_split(events, cuts)
    else:
        split = with_split(events, config.n_test_sessions, config.n_validation_sessions)
        cuts = events.sparkSession.range(1).select(
            F.lit(None).cast("timestamp").alias(VALIDATION_START), F.lit(None).cast("timestamp").alias(TEST_START),
            F.lit(f"last {config.n_test_sessions} session(s) test, {config.n_validation_sessions} before "
                  "validation, per user").alias(CUTS_FROM))
    counts = split.agg(*[F.count(F.when(F.col(C.SPLIT) == name, F.lit(1))).alias(f"{name}_events")
                         for name in (TRAIN, C.VALIDATION, C.TEST)])
    info = cuts.crossJoin(counts).select(F.lit(config.split).alias("split_method"), "*")
    return split, info


def fit_item_vocab(train_events: DataFrame, min_count: int,
                   buckets: int = FeaturesConfig.oov_buckets) -> DataFrame:
    """item_id -> contiguous item_idx (from first_vocab_index(buckets), most frequent first) for
    items seen at least ``min_count`` times in the training period; every other item maps to a
    hashed bucket (see ``with_item_idx``)."""
    first = C.ItemLayout(buckets).first_item
    counts = train_events.groupBy(C.ITEM_ID).agg(F.count(F.lit(1)).alias(C.TRAIN_COUNT))
    # A global order needs one partition; the vocabulary is one row per item, small next to events.
    order = Window.orderBy(F.col(C.TRAIN_COUNT).desc(), F.col(C.ITEM_ID))
    return (counts.filter(F.col(C.TRAIN_COUNT) >= min_count)
            .withColumn(C.ITEM_IDX, (F.row_number().over(order) + (first - 1)).cast("int")))


def extend_item_vocab(vocab: DataFrame, events: DataFrame, min_count: int) -> DataFrame:
    """``vocab`` (fitted on the training period) plus every item of ``events`` (all periods) seen at
    least ``min_count`` times there and not in it, appended after its last index, most frequent
    first: the serving vocabulary. Appended, not refitted, so that an index means the same item on
    both sides (the tested refit's rows and the served fit's); ``train_count`` stays the training
    period's count (0 for an appended item: the popularity baselines never see them)."""
    counts = events.groupBy(C.ITEM_ID).agg(F.count(F.lit(1)).alias("_count"))
    last = vocab.agg(F.max(C.ITEM_IDX).alias("_last"))
    order = Window.orderBy(F.col("_count").desc(), F.col(C.ITEM_ID))  # one partition: one row per new item
    new = (counts.filter(F.col("_count") >= min_count).join(vocab.select(C.ITEM_ID), C.ITEM_ID, "left_anti")
           .crossJoin(F.broadcast(last))
           .select(C.ITEM_ID, F.lit(0).cast("long").alias(C.TRAIN_COUNT),
                   (F.row_number().over(order) + F.col("_last")).cast("int").alias(C.ITEM_IDX)))
    return vocab.select(C.ITEM_ID, C.TRAIN_COUNT, C.ITEM_IDX).unionByName(new)


def with_item_idx(events: DataFrame, vocab: DataFrame, buckets: int = FeaturesConfig.oov_buckets) -> DataFrame:
    """Adds ``item_idx``: the vocabulary's index, or for an item outside the vocabulary its hashed
    bucket (``buckets`` must be the one ``vocab`` was fitted with)."""
    return (events.join(F.broadcast(vocab.select(C.ITEM_ID, C.ITEM_IDX)), C.ITEM_ID, "left")
            .withColumn(C.ITEM_IDX, F.coalesce(F.col(C.ITEM_IDX), C.ItemLayout(buckets).unknown_index(F.col(C.ITEM_ID)))
                        .cast("int")))


def build_sequences(events: DataFrame) -> DataFrame:
    """One row per user: the chronological sequence of (item, index, time, event type, split,
    session, purchase value). The session is the basket (``session_id``; an event without one is
    its own); the purchase value is what user_features' ``monetary`` sums (null for a view, a cart
    or an unknown price), so the user features can be taken at any step."""
    own = F.col(C.EVENT_ID)  # events without a session column: each event is its own basket
    basket = (F.coalesce(F.col(C.SESSION_ID), own) if C.SESSION_ID in events.columns else own).alias(C.SESSION_ID)
    value = (purchase_value() if {C.PRICE, C.QUANTITY} <= set(events.columns)
             else F.lit(None).cast("double")).alias(C.PURCHASE_VALUE)
    step = F.struct(C.EVENT_TS, C.SOURCE_FILE, C.SOURCE_ROW, C.ITEM_ID, C.ITEM_IDX, C.EVENT_TYPE, C.SPLIT, basket, value)
    ordered = F.array_sort(F.collect_list(step))
    return events.groupBy(C.USER_ID).agg(ordered.alias("_steps")).select(
        C.USER_ID,
        *[F.col("_steps")[name].alias(name)
          for name in (C.ITEM_ID, C.ITEM_IDX, C.EVENT_TS, C.EVENT_TYPE, C.SPLIT, C.SESSION_ID, C.PURCHASE_VALUE)],
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


def event_type_table_size(config: Config) -> int:
    """Rows of an embedding table for ``history_types``: 0 pads, 1..n are ``ingest.event_types``,
    n + 1 takes any other type."""
    return len(config.ingest.event_types) + 2


def gap_table_size(config: Config) -> int:
    """Rows of an embedding table for ``history_gaps``: 0 pads, 1..gap_buckets are the buckets."""
    return config.features.gap_buckets + 1


def event_type_ids(types: Column, event_types: Sequence[str]) -> Column:
    """array<string> of event types -> array<int> of ids: 1 + the type's position in
    ``event_types``, len(event_types) + 1 for any other type (0 stays free for padding)."""
    other = F.lit(len(event_types) + 1)
    if not event_types:
        return F.transform(types, lambda _: other)
    lookup = F.create_map(*[c for k, name in enumerate(event_types) for c in (F.lit(name), F.lit(k + 1))])
    return F.transform(types, lambda name: F.coalesce(lookup[name], other))


def gap_bucket_ids(micros: Column, n_buckets: int) -> Column:
    """array<long> of event times (microseconds, chronological) -> array<int> of time-gap buckets
    from each step to the latest step: 1 + min(n_buckets - 1, floor(log2(1 + gap_minutes))).

    The latest step is the last element (chronological order): ``array_max`` would be evaluated inside
    the lambda, once per element (Spark inlines it), quadratic in the array.

    floor(log2(1 + g)) equals floor(log2(1 + floor(g))) because powers of two are whole numbers,
    and for a whole number n >= 1 it is the length of n's binary digits minus one: exact integer
    arithmetic, where a floating-point log2 can land just below a power of two.
    """
    latest = F.element_at(micros, -1)  # only evaluated for an element, so never on an empty array

    def bucket(step: Column) -> Column:
        whole_minutes = F.floor((latest - step) / F.lit(60_000_000))
        return (F.lit(1) + F.least(F.lit(n_buckets - 1), F.length(F.bin(whole_minutes + 1)) - 1)).cast("int")

    return F.transform(micros, bucket)


def _steps_where(splits: tuple[str, ...], event_types: Sequence[str]) -> Column:
    """The steps whose split is one of ``splits``, in order: struct<i: item_idx, t: event type id,
    us: event time in microseconds, s: split, b: basket (session), v: purchase value>."""
    zipped = F.arrays_zip(
        F.col(C.ITEM_IDX).alias("i"),
        event_type_ids(F.col(C.EVENT_TYPE), event_types).alias("t"),
        F.transform(C.EVENT_TS, F.unix_micros).alias("us"),
        F.col(C.SPLIT).alias("s"),
        F.col(C.SESSION_ID).alias("b"),
        F.col(C.PURCHASE_VALUE).alias("v"),
    )
    return F.filter(zipped, lambda step: step["s"].isin(*splits))


def with_user_vector_as_of(df: DataFrame, steps: Column, at_us: Column, stats: DataFrame) -> DataFrame:
    """Adds ``user_vector``: the user features of gold user_features (recency, events, sessions,
    money; normalised with the same gold ``feature_stats``) computed from ``steps`` (the user's
    steps before a moment, see :func:`_steps_where`) as of ``at_us``. Point in time: a training
    example sees only its user's past, and the model is trained on the same features it is later
    given (at the end of the periods a query conditions on, at the end of the data when serving)."""
    return _with_raw_user_vector(df, rfm_before(steps, at_us), stats)


def _with_raw_user_vector(df: DataFrame, raw: dict[str, Column], stats: DataFrame) -> DataFrame:
    """``df`` plus ``user_vector`` from the raw user features ``raw`` (rfm_of's columns), normalised
    with gold ``feature_stats``; the raw columns do not stay."""
    return with_user_vector(df.withColumns(raw), stats).drop(*raw)


def periods_end(sequences: DataFrame, splits: tuple[str, ...]) -> DataFrame:
    """One row, ``_at_us``: the latest event time (microseconds) of ``splits`` over every user; the
    "now" of a query or a serving row (user_features measure recency from the same moment)."""
    times = F.transform(F.filter(F.arrays_zip(F.col(C.EVENT_TS).alias("ts"), F.col(C.SPLIT).alias("s")),
                                 lambda step: step["s"].isin(*splits)), lambda step: F.unix_micros(step["ts"]))
    return sequences.agg(F.max(F.array_max(times)).alias("_at_us"))


def with_history_columns(df: DataFrame, steps: str, config: FeaturesConfig) -> DataFrame:
    """Replaces the chronological array of steps in column ``steps`` by ``history``,
    ``history_types`` and ``history_gaps``: the last ``max_seq_len`` steps, aligned and left-padded
    with 0. Gaps are measured to the latest of these same steps (the one just before the target or
    the held-out period).

    The steps are cut to the last ``max_seq_len`` first: a query or serving row holds a user's whole
    history (hundreds of steps on Complete Journey), and every later expression is linear in the
    array. Separate projections, not one expression: each array is referenced several times (size,
    slice, padding), and Spark does not inline a costly expression into a projection that repeats
    it, so every array is computed once per row.
    """
    length = config.max_seq_len
    field = lambda name: F.transform("_tail", lambda step: step[name])
    tail = F.when(F.size(steps) > length, F.slice(steps, -length, length)).otherwise(F.col(steps))
    return (df.withColumn("_tail", tail).drop(steps)
            .withColumns({"_i": field("i"), "_t": field("t"), "_us": field("us")}).drop("_tail")
            .withColumn("_g", gap_bucket_ids(F.col("_us"), config.gap_buckets))
            .withColumns({C.HISTORY: left_pad(F.col("_i"), length), C.HISTORY_TYPES: left_pad(F.col("_t"), length),
                          C.HISTORY_GAPS: left_pad(F.col("_g"), length)})
            .drop("_i", "_t", "_us", "_g"))


def train_examples(sequences: DataFrame, config: FeaturesConfig,
                   event_types: Sequence[str] = C.EVENT_TYPES_DEFAULT, stats: DataFrame | None = None) -> DataFrame:
    """Next-item examples from the training period, one per step: each target with the items before
    it, their event types and time gaps; each user's latest ``max_examples_per_user``. What a model
    that makes one prediction per row learns from (towers, dnn, mean_pool).

    With ``stats`` (gold feature_stats), also ``user_vector`` as of the start of the target's basket
    (:func:`with_user_vector_as_of`): the user's earlier baskets only, recency measured to the
    target. The earlier items of the target's own basket stay in the history, as a query's would."""
    return _next_item_rows(sequences, config, event_types, stride=1, per_user=config.max_examples_per_user,
                           stats=stats)


def train_windows(sequences: DataFrame, config: FeaturesConfig,
                  event_types: Sequence[str] = C.EVENT_TYPES_DEFAULT) -> DataFrame:
    """The training period cut into non-overlapping ``max_seq_len`` windows back from each user's
    latest step (the row's target), each user's latest ``max_windows_per_user``. A model that
    predicts the next item at every step of a row (sasrec) sees each step once per epoch; the
    overlapping rows of :func:`train_examples` would repeat each prediction up to ``max_seq_len`` times."""
    return _next_item_rows(sequences, config, event_types, stride=config.max_seq_len,
                           per_user=config.max_windows_per_user)


def _next_item_rows(sequences: DataFrame, config: FeaturesConfig, event_types: Sequence[str],
                    stride: int, per_user: int, stats: DataFrame | None = None) -> DataFrame:
    """Rows whose targets are every ``stride``-th training step back from each user's latest, the
    latest ``per_user`` of them, with the ``max_seq_len`` steps before each target.

    Targets outside the vocabulary (a reserved index: PAD, OOV or a hashed bucket, below
    first_vocab_index(oov_buckets)) are no row: a bucket mixes unrelated items, nothing to learn to
    predict. Neither is a target with an empty history.
    """
    length = config.max_seq_len
    exploded = sequences.select(C.USER_ID, _steps_where((TRAIN,), event_types).alias("_steps")).select(
        C.USER_ID, "_steps", F.posexplode("_steps").alias("_pos", "_target")
    )
    history = F.slice("_steps", F.greatest(F.lit(1), F.col("_pos") - length + 1), F.least(F.col("_pos"), F.lit(length)))
    rows = (
        exploded.filter((F.col("_pos") >= 1) & (F.col("_target")["i"] >= config.first_item_idx))
        .withColumn("_back", F.size("_steps") - 1 - F.col("_pos"))  # steps before the latest
        .filter((F.col("_back") % stride == 0) & (F.col("_back") < per_user * stride))
    )
    columns = [C.USER_ID, C.HISTORY, C.HISTORY_TYPES, C.HISTORY_GAPS, C.TARGET]
    rows = rows.select(C.USER_ID, "_pos", history.alias("_history"), F.col("_target")["i"].cast("int").alias(C.TARGET),
                       F.col("_target")["us"].alias("_target_us"))  # the whole _steps array stays behind
    if stats is not None:
        before = _before_each_basket(sequences, event_types)
        rows = (rows.join(before, [C.USER_ID, "_pos"])
                .transform(lambda df: _with_raw_user_vector(df, rfm_of(
                    F.col("_before.latest_us"), F.col("_before.n_events"), F.col("_before.n_sessions"),
                    F.col("_before.monetary"), at_us=F.col("_target_us")), stats)))
        columns.append(C.USER_VECTOR)
    return rows.transform(lambda df: with_history_columns(df, "_history", config)).select(*columns)


def _before_each_basket(sequences: DataFrame, event_types: Sequence[str]) -> DataFrame:
    """Per user and training step (``_pos``, 0-based in the steps of :func:`_steps_where`):
    ``_before``, the aggregates :func:`~recspark.pipeline.user_features.rfm_of` reads (latest_us,
    n_events, n_sessions, monetary) over the user's steps before that step's basket.

    Running sums over the user's steps in order: linear in a user's steps, where filtering each
    example's prefix of the steps array was quadratic (on Complete Journey it cost the features
    stage 74 s, ``results/point-in-time-20261203/``). A basket's steps are contiguous (time order,
    ties by source position, as :func:`train_baskets` relies on), so the baskets before a step are
    the basket starts before its own basket's start.
    """
    order = Window.partitionBy(C.USER_ID).orderBy("_pos")
    before_row = order.rowsBetween(Window.unboundedPreceding, -1)
    steps = (sequences.select(C.USER_ID, F.posexplode(_steps_where((TRAIN,), event_types)).alias("_pos", "_s"))
             .select(C.USER_ID, "_pos", F.col("_s.us").alias("_us"), F.col("_s.b").alias("_b"),
                     F.coalesce(F.col("_s.v"), F.lit(0.0)).alias("_v"))
             .withColumn("_starts", F.coalesce(F.lag("_b").over(order) != F.col("_b"), F.lit(True))))
    # Spark cannot nest window functions: the values at each basket's start first, then carried on.
    at_start = steps.withColumn("_at_start", F.when(F.col("_starts"), F.struct(
        F.lag("_us").over(order).alias("latest_us"),
        F.col("_pos").alias("n_events"),
        F.coalesce(F.sum(F.col("_starts").cast("long")).over(before_row), F.lit(0)).alias("n_sessions"),
        F.coalesce(F.sum("_v").over(before_row), F.lit(0.0)).alias("monetary"))))
    carried = F.last("_at_start", ignorenulls=True).over(order.rowsBetween(Window.unboundedPreceding, 0))
    return at_start.select(C.USER_ID, "_pos", carried.alias("_before"))


def with_ignored(rows: DataFrame, ignored: DataFrame | None, feedback: FeedbackConfig) -> DataFrame:
    """Adds ``ignored`` (int[feedback.k], PAD-padded) to basket rows (user_id, ``_us`` the basket's
    start, ``_items`` its items): the shown-and-ignored items of the latest list shown to the user at
    or before the basket's start and at most ``feedback.ignored_days`` before it
    (:func:`recspark.feedback.ignored_lists`), less the basket's own items (a shop's feedback file
    need not agree with its events); all PAD without such a list or without feedback."""
    from recspark.feedback import SHOWN_US

    k = feedback.k
    pads = F.array_repeat(F.lit(C.PAD_IDX), F.lit(k))
    if ignored is None:
        return rows.withColumn(C.IGNORED, pads)
    window = F.lit(int(feedback.ignored_days * C.DAY_MICROS))
    lists = ignored.select(F.col(C.USER_ID).alias("_list_user"), SHOWN_US, F.col(C.IGNORED).alias("_list"))
    # A left join keeps every basket (each matching list a copy of it), the window the latest list
    # (null last): one pass over the rows, where joining matches back would compute them twice.
    latest = Window.partitionBy(C.USER_ID, "_pos").orderBy(F.col(SHOWN_US).desc_nulls_last())
    left = F.filter(F.coalesce("_list", F.array().cast("array<int>")), lambda i: ~F.array_contains("_items", i))
    return (rows.join(lists, (F.col("_list_user") == F.col(C.USER_ID)) & (F.col(SHOWN_US) <= F.col("_us"))
                      & (F.col("_us") < F.col(SHOWN_US) + window), "left")
            .withColumn("_latest", F.row_number().over(latest)).filter(F.col("_latest") == 1)
            .withColumn(C.IGNORED, F.slice(F.concat(left, pads), 1, k))
            .drop("_list_user", SHOWN_US, "_list", "_latest"))


def train_baskets(sequences: DataFrame, config: FeaturesConfig,
                  event_types: Sequence[str] = C.EVENT_TYPES_DEFAULT, splits: tuple[str, ...] = (TRAIN,),
                  ignored: DataFrame | None = None, feedback: FeedbackConfig = FeedbackConfig()) -> DataFrame:
    """Next-basket examples from the training period, one per basket: the ``max_seq_len`` steps
    before the basket (history, types, gaps), the user's repeat profile before it (see
    :func:`with_repeat_profile`) and every vocabulary item of the basket as ``target`` (distinct, in
    basket order, the first ``max_basket_items``, right-padded with PAD to exactly that length), or
    with ``target_horizon_days`` every item bought from the basket's start for that many days; each
    user's latest ``max_baskets_per_user`` baskets that have a history and a vocabulary item. What a
    next-basket model learns from (repeatnet): grocery baskets are bought together, so every item of
    the next basket is a right answer, not only the first one. ``ignored``: the basket's
    shown-and-ignored items (:func:`with_ignored`, from ``ignored`` =
    :func:`recspark.feedback.ignored_lists`), negatives of a loss term (``train.ignored_weight``).

    ``splits``: the periods the baskets, their targets and their profiles come from: the training
    period (``train_baskets``), or training and validation (``refit_baskets``: the refit of a
    validation-tuned model before it is tested; a target never reaches a later period), or every
    period on gold ``serving_sequences`` (``serve_baskets``: the fit of the model that serves).

    A basket starts at a step whose basket differs from the step before (steps are in time order,
    ties by source position, so a basket's lines are contiguous); its items are the steps from its
    start to the next start (a slice: filtering the rest of the history for the basket was quadratic
    in a household's steps).
    """
    first = config.first_item_idx
    per_basket = config.max_basket_items
    # The 0-based positions where a basket after the first starts, found in the array (element_at is
    # 1-based: element p is the step before position p), then one row per start: exploding every
    # step would copy the whole array into each of them (a household's ~600 steps, ~600 times).
    steps = F.col("_steps")
    boundaries = F.filter(
        F.when(F.size(steps) >= 2, F.sequence(F.lit(1), F.size(steps) - 1)).otherwise(F.array().cast("array<int>")),
        lambda p: F.element_at(steps, p)["b"] != F.element_at(steps, p + 1)["b"])
    # Each start with the next one (the array's end after the last): the basket is the steps between.
    ends = F.when(F.size(boundaries) > 0, F.concat(F.slice(boundaries, 2, F.greatest(F.size(boundaries) - 1, F.lit(0))),
                                                    F.array(F.size(steps)))).otherwise(F.array().cast("array<int>"))
    starts = (sequences.select(C.USER_ID, _steps_where(splits, event_types).alias("_steps"))
              .select(C.USER_ID, "_steps", F.posexplode(F.arrays_zip(boundaries.alias("p"), ends.alias("e")))
                      .alias("_k", "_b"))
              .select(C.USER_ID, "_steps", "_k", F.col("_b.p").alias("_pos"), F.col("_b.e").alias("_end")))
    if config.target_horizon_days is None:  # the next basket: its steps, from the start to the next start
        target = F.slice("_steps", F.col("_pos") + 1, F.col("_end") - F.col("_pos"))
    else:  # every step from the start for the horizon (steps of ``splits`` only: never a later period)
        horizon = F.lit(int(config.target_horizon_days * C.DAY_MICROS))
        target = F.filter(F.slice("_steps", F.col("_pos") + 1, F.size("_steps") - F.col("_pos")),
                          lambda step: step["us"] < F.element_at(steps, F.col("_pos") + 1)["us"] + horizon)
    items = F.transform(target, lambda step: step["i"])
    history = F.slice("_steps", F.greatest(F.lit(1), F.col("_pos") - config.max_seq_len + 1),
                      F.least(F.col("_pos"), F.lit(config.max_seq_len)))
    # The basket's ordinal among the user's baskets, counted as basket_steps counts them (the first
    # basket is 1, each start adds one): its repeat profile looks at the ones before it.
    ordinal = F.col("_k") + 2
    latest_first = Window.partitionBy(C.USER_ID).orderBy(F.col("_pos").desc())
    rows = (
        starts.select(C.USER_ID, "_pos", history.alias("_history"), ordinal.alias("_cut"),
                      F.element_at(steps, F.col("_pos") + 1)["us"].alias("_us"),
                      F.slice(F.array_distinct(F.filter(items, lambda i: i >= first)), 1, per_basket).alias("_items"))
        .filter(F.size("_items") > 0)
        .withColumn("_rank", F.row_number().over(latest_first))
        .filter(F.col("_rank") <= config.max_baskets_per_user)
        .withColumn("_splits", F.array(*map(F.lit, splits)))
        .transform(lambda df: with_ignored(df, ignored, feedback))
    )
    return (
        rows.withColumn(C.TARGET, F.concat("_items", F.array_repeat(F.lit(C.PAD_IDX),
                                                                    F.lit(per_basket) - F.size("_items"))))
        .transform(lambda df: with_history_columns(df, "_history", config))
        # Only the table's own columns (and the profile's inputs) pass through the profile's pandas function.
        .select(C.USER_ID, C.HISTORY, C.HISTORY_TYPES, C.HISTORY_GAPS, C.TARGET, C.IGNORED, "_cut", "_splits")
        .transform(lambda df: with_repeat_profile(df, basket_steps(sequences), config))
        .select(C.USER_ID, C.HISTORY, C.HISTORY_TYPES, C.HISTORY_GAPS, C.REPEAT_ITEMS, C.REPEAT_FEATURES, C.TARGET,
                C.IGNORED)
    )


def eval_queries(sequences: DataFrame, config: FeaturesConfig,
                 event_types: Sequence[str] = C.EVENT_TYPES_DEFAULT, stats: DataFrame | None = None) -> DataFrame:
    """One row per (user, held-out split): the history before it (with event types and gaps), the
    held-out items (relevant) and every item index seen before it (for models that must not
    recommend seen items); with ``stats`` (gold feature_stats), ``user_vector`` as of the end of the
    periods before it (:func:`with_user_vector_as_of`: a test query's user has lived through
    validation too).

    A query needs at least one step before its period: with the global time split a user whose
    first event falls in validation gets no validation query (nothing to condition on) but a test
    query if they have test events; a user first seen in test gets none (and still gets serving
    histories). With the session split a held-out user always has training sessions."""
    queries = []
    for split, before in ((C.VALIDATION, (TRAIN,)), (C.TEST, (TRAIN, C.VALIDATION))):
        rows = sequences.select(
            C.USER_ID,
            _steps_where(before, event_types).alias("_steps"),
            _item_ids_where((split,)).alias(C.RELEVANT),
            _item_ids_where(before).alias(C.SEEN),
            F.array_distinct(_indices_where(C.SPLIT, before)).alias(SEEN_IDX),
        ).filter((F.size(C.RELEVANT) > 0) & (F.size(SEEN_IDX) > 0))
        queries.append(
            rows.transform(lambda df: _with_user_vector_at_end(df, sequences, before, stats))
            .transform(lambda df: with_history_columns(df, "_steps", config))
            .select(C.USER_ID, F.lit(split).alias(C.SPLIT), C.HISTORY, C.HISTORY_TYPES, C.HISTORY_GAPS,
                    C.RELEVANT, C.SEEN, SEEN_IDX, *([C.USER_VECTOR] if stats is not None else []),
                    F.lit(NO_CUT).alias("_cut"), F.array(*map(F.lit, before)).alias("_splits")))
    both = queries[0].unionByName(queries[1])
    return with_repeat_profile(both, basket_steps(sequences), config)


def serving_histories(sequences: DataFrame, config: FeaturesConfig,
                      event_types: Sequence[str] = C.EVENT_TYPES_DEFAULT, stats: DataFrame | None = None) -> DataFrame:
    """Each user's latest items over all periods (with event types and gaps) and repeat profile: the
    input for scoring everyone now (from gold ``serving_sequences``: the serving vocabulary's indices);
    with ``stats``, ``user_vector`` as of the end of the data."""
    every = (TRAIN, C.VALIDATION, C.TEST)
    return (sequences.select(C.USER_ID, _steps_where(every, event_types).alias("_steps"),
                             F.array_distinct(_indices_where(C.SPLIT, every)).alias(SEEN_IDX))
            .transform(lambda df: _with_user_vector_at_end(df, sequences, every, stats))
            .transform(lambda df: with_history_columns(df, "_steps", config))
            .select(C.USER_ID, C.HISTORY, C.HISTORY_TYPES, C.HISTORY_GAPS, SEEN_IDX,
                    *([C.USER_VECTOR] if stats is not None else []), F.lit(NO_CUT).alias("_cut"),
                    F.array(*map(F.lit, every)).alias("_splits"))
            .transform(lambda df: with_repeat_profile(df, basket_steps(sequences), config)))


def _with_user_vector_at_end(rows: DataFrame, sequences: DataFrame, splits: tuple[str, ...],
                             stats: DataFrame | None) -> DataFrame:
    """``rows`` (with ``_steps`` of ``splits``) plus ``user_vector`` as of the end of ``splits``; as
    they are without ``stats``."""
    if stats is None:
        return rows
    return (rows.crossJoin(F.broadcast(periods_end(sequences, splits)))
            .transform(lambda df: with_user_vector_as_of(df, F.col("_steps"), F.col("_at_us"), stats))
            .drop("_at_us"))


def build_features(spark: SparkSession, config: Config) -> dict:
    """Writes the gold tables: split_info, item_vocab, category_vocab, sequences, user_features,
    item_features, feature_stats, the example tables the models train on, eval_queries; and the
    serving side over every period, indexed by the serving vocabulary (serving_item_vocab,
    serving_sequences, serving_histories and, with a refitted next-basket model, serve_baskets)."""
    # They import TRAIN from here.
    from recspark.feedback import ignored_lists
    from recspark.pipeline.item_features import ITEM_FEATURES, build_item_features, fit_category_vocab
    from recspark.pipeline.normalisation import fit_item_stats, fit_user_stats, with_item_vector
    from recspark.pipeline.user_features import USER_FEATURES, build_user_features

    gold = lambda table: config.table_path(C.GOLD, table)
    events = read_table(spark, config.table_path(C.SILVER, C.EVENTS)).transform(
        lambda df: filter_protocol(df, config.features))
    split, info = split_events(events, config.features)
    split = split.persist()  # read by the split's description, the vocabularies, the features and the sequences
    overwrite_table(info, gold(SPLIT_INFO))
    cut = read_table(spark, gold(SPLIT_INFO)).first()  # the one row just written
    print(f"features: split={cut['split_method']} validation_start={cut[VALIDATION_START]} "
          f"test_start={cut[TEST_START]} ({cut[CUTS_FROM]}); events train/validation/test = "
          f"{cut['train_events']:,}/{cut['validation_events']:,}/{cut['test_events']:,}")
    train = split.filter(F.col(C.SPLIT) == TRAIN)
    items = read_table(spark, config.table_path(C.SILVER, C.ITEMS))
    item_buckets, category_buckets = config.features.oov_buckets, config.features.category_oov_buckets
    overwrite_table(fit_item_vocab(train, config.features.min_item_count, item_buckets), gold(C.ITEM_VOCAB))
    vocab = read_table(spark, gold(C.ITEM_VOCAB))
    overwrite_table(fit_category_vocab(train, items, category_buckets), gold(C.CATEGORY_VOCAB))
    category_vocab = read_table(spark, gold(C.CATEGORY_VOCAB))
    overwrite_table(build_sequences(with_item_idx(split, vocab, item_buckets)), gold(SEQUENCES))
    # The serving side: the same sequences indexed by the vocabulary extended with the later periods'
    # items (a second pass over the events: a lookup of the new items in the sequences' arrays would
    # scan a Spark map per step, linear in the new items).
    overwrite_table(extend_item_vocab(vocab, split, config.features.min_item_count), gold(C.SERVING_ITEM_VOCAB))
    serving_vocab = read_table(spark, gold(C.SERVING_ITEM_VOCAB))
    overwrite_table(build_sequences(with_item_idx(split, serving_vocab, item_buckets)), gold(C.SERVING_SEQUENCES))

    users_path = config.table_path(C.SILVER, C.USERS)
    users = read_table(spark, users_path) if table_exists(spark, users_path) else None
    # One row per user / item, persisted: read by the statistics and by the normalised write.
    user_features = build_user_features(split, users, items, config.features.interest_top_n,
                                        config.features.interest_half_life_days).persist()
    item_features = build_item_features(split, items, vocab, config.features.price_buckets, category_vocab,
                                        item_buckets=item_buckets, category_buckets=category_buckets).persist()
    overwrite_table(fit_user_stats(user_features).unionByName(fit_item_stats(item_features)), gold(C.FEATURE_STATS))
    stats = read_table(spark, gold(C.FEATURE_STATS))  # applied from the stored table: stored = applied
    overwrite_table(with_user_vector(user_features, stats), gold(USER_FEATURES))
    overwrite_table(with_item_vector(item_features, stats), gold(ITEM_FEATURES))
    user_features.unpersist()
    item_features.unpersist()
    split.unpersist()

    sequences = read_table(spark, gold(SEQUENCES))
    serving = read_table(spark, gold(C.SERVING_SEQUENCES))
    event_types = config.ingest.event_types
    # Only the example tables the configured models train on (each is a full pass over the sequences).
    needed = {C.MODEL_EXAMPLES[model] for model in config.train.models}
    # Shown-and-ignored items of the lists served so far (silver feedback), per vocabulary.
    feedback_path = config.table_path(C.SILVER, C.FEEDBACK)
    feedback = read_table(spark, feedback_path) if table_exists(spark, feedback_path) else None
    ignored = lambda indexed_by: None if feedback is None else ignored_lists(feedback, indexed_by, config.feedback.k)
    baskets = lambda side, indexed_by, splits: train_baskets(side, config.features, event_types, splits=splits,
                                                             ignored=ignored(indexed_by), feedback=config.feedback)
    examples = {
        C.TRAIN_EXAMPLES: lambda: train_examples(sequences, config.features, event_types, stats),
        C.TRAIN_WINDOWS: lambda: train_windows(sequences, config.features, event_types),
        C.TRAIN_BASKETS: lambda: baskets(sequences, vocab, (TRAIN,)),
    }
    outputs = {table: build() for table, build in examples.items() if table in needed}
    outputs[C.EVAL_QUERIES] = eval_queries(sequences, config.features, event_types, stats)
    if C.TRAIN_BASKETS in needed and config.train.refit:  # what train refits a next-basket model on
        outputs[C.REFIT_BASKETS] = baskets(sequences, vocab, (TRAIN, C.VALIDATION))
    every = (TRAIN, C.VALIDATION, C.TEST)
    served = {C.SERVING_HISTORIES: serving_histories(serving, config.features, event_types, stats)}
    if C.TRAIN_BASKETS in needed and config.train.refit:  # and fits the model that serves on last
        served[C.SERVE_BASKETS] = baskets(serving, serving_vocab, every)
    # Every repeat profile of one side (baskets, refit, queries; serving) reads the same basket steps
    # and item rates: computed once per side. Spark's cache matches a plan, so the builders' own
    # identical plans hit it.
    for side, tables in ((sequences, outputs), (serving, served)):
        steps = basket_steps(side).persist()
        rates = item_repurchase_rates(steps, config.features).persist()
        try:
            for table, df in tables.items():
                overwrite_table(df, gold(table))
        finally:
            rates.unpersist()
            steps.unpersist()
    return {table: gold(table) for table in (SPLIT_INFO, C.ITEM_VOCAB, C.CATEGORY_VOCAB, SEQUENCES, USER_FEATURES,
                                             ITEM_FEATURES, C.FEATURE_STATS, *outputs, C.SERVING_ITEM_VOCAB,
                                             C.SERVING_SEQUENCES, *served)}
