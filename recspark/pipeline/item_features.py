"""Gold ``item_features``: catalogue attributes, price buckets, popularity and funnel conversion.

Behaviour columns come from the training period only (``split = 'train'``), measured back from the
end of the training period (its latest event), so no validation or test event leaks in. Spark
built-ins only: no Python UDF, no collect, no global sort of events.

- item_idx: from item_vocab; for every other item its hashed bucket (``features.oov_buckets``, see
  the index layout in recspark.constants; OOV_IDX = 1 when there is one bucket).
- category_idx: from category_vocab (fitted on the training period: categories of training events,
  from first_vocab_index(category_oov_buckets), most frequent first); a category without training
  events (out of vocabulary) goes to its hashed bucket (1 with one bucket); 0 for a missing
  category ("unknown").
- price_bucket: 0 .. price_buckets-1, the catalogue price's quantile bucket: the number of cut
  points (exact percentiles of catalogue prices at 1/n, 2/n, ..., by nearest rank, see
  ``recspark.pipeline.quantiles``: the same for any file layout) strictly below the price; null
  without a price.
- events_7d, events_30d, events_all: training events of the item in (end - 7 days, end],
  (end - 30 days, end] and ever.
- n_views, n_carts, n_purchases; view_to_cart = n_carts / n_views, cart_to_purchase =
  n_purchases / n_carts (event counts, so above 1 is possible); null when the denominator is 0.
- item_vector (added in ``build_features``, see ``recspark.pipeline.normalisation``): array<float>
  of price, events_7d, events_30d, events_all, view_to_cart, cart_to_purchase, each
  log1p-standardised with statistics fitted on items with training events, stored in gold
  ``feature_stats``.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import FeaturesConfig
from recspark.pipeline.prepare import UNKNOWN
from recspark.pipeline.quantiles import PERCENTILES, exact_percentiles
from recspark.pipeline.user_features import age_days, filter_train, with_training_end

ITEM_FEATURES = "item_features"
POPULARITY_WINDOWS_DAYS = (7, 30)


def fit_category_vocab(train_events: DataFrame, items: DataFrame,
                       buckets: int = FeaturesConfig.category_oov_buckets) -> DataFrame:
    """category -> contiguous ``category_idx`` (from first_vocab_index(buckets), most frequent
    first, ties by name) for the categories of the training period's events; "unknown" (missing) is
    left out and maps to PAD_IDX = 0, every other category to its hashed bucket (see
    ``with_category_idx``)."""
    first = C.ItemLayout(buckets).first_item
    counts = (train_events.join(items.select(C.ITEM_ID, C.CATEGORY), C.ITEM_ID, "left")
              .filter(F.col(C.CATEGORY).isNotNull() & (F.col(C.CATEGORY) != UNKNOWN))
              .groupBy(C.CATEGORY).agg(F.count(F.lit(1)).alias(C.TRAIN_COUNT)))
    # A global order needs one partition: one row per category, small next to events.
    order = Window.orderBy(F.col(C.TRAIN_COUNT).desc(), F.col(C.CATEGORY))
    return counts.withColumn(C.CATEGORY_IDX, (F.row_number().over(order) + (first - 1)).cast("int"))


def with_category_idx(df: DataFrame, category_vocab: DataFrame,
                      buckets: int = FeaturesConfig.category_oov_buckets) -> DataFrame:
    """Adds ``category_idx``: the vocabulary's index, the hashed bucket of a category outside it
    (``buckets`` as the vocabulary was fitted with), PAD_IDX for a missing one (null or "unknown")."""
    missing = F.col(C.CATEGORY).isNull() | (F.col(C.CATEGORY) == UNKNOWN)
    return (df.join(F.broadcast(category_vocab.select(C.CATEGORY, F.col(C.CATEGORY_IDX).alias("_cidx"))),
                    C.CATEGORY, "left")
            .withColumn(C.CATEGORY_IDX, F.when(missing, F.lit(C.PAD_IDX))
                        .otherwise(F.coalesce(F.col("_cidx"), C.ItemLayout(buckets).unknown_index(F.col(C.CATEGORY)))).cast("int"))
            .drop("_cidx"))


def with_price_bucket(items: DataFrame, n_buckets: int) -> DataFrame:
    """Adds ``price_bucket`` from exact quantiles of the catalogue's prices (one row, broadcast)."""
    if n_buckets <= 1:
        return items.withColumn("price_bucket", F.when(F.col(C.PRICE).isNotNull(), F.lit(0)))
    fractions = [k / n_buckets for k in range(1, n_buckets)]
    cuts = exact_percentiles(items, C.PRICE, fractions).select(F.col(PERCENTILES).alias("_cuts"))
    below = F.size(F.filter("_cuts", lambda cut: cut < F.col(C.PRICE)))
    return (items.crossJoin(F.broadcast(cuts))
            .withColumn("price_bucket", F.when(F.col(C.PRICE).isNotNull(), below.cast("int")))
            .drop("_cuts"))


def _ratio(numerator: str, denominator: str) -> Column:
    return F.when(F.col(denominator) > 0, F.col(numerator) / F.col(denominator))


def item_activity(train: DataFrame) -> DataFrame:
    """Per item: popularity over windows ending at the training cut, funnel counts and rates."""
    def count_where(condition: Column) -> Column:
        return F.count(F.when(condition, F.lit(1)))

    windows = [count_where(age_days() < days).alias(f"events_{days}d") for days in POPULARITY_WINDOWS_DAYS]
    funnel = [count_where(F.col(C.EVENT_TYPE) == kind).alias(f"n_{kind}s") for kind in ("view", "cart", "purchase")]
    return (train.transform(with_training_end)
            .groupBy(C.ITEM_ID)
            .agg(*windows, F.count(F.lit(1)).alias("events_all"), *funnel))


def build_item_features(split_events: DataFrame, items: DataFrame, vocab: DataFrame, price_buckets: int,
                        category_vocab: DataFrame, *, item_buckets: int = FeaturesConfig.oov_buckets,
                        category_buckets: int = FeaturesConfig.category_oov_buckets) -> DataFrame:
    """One row per catalogue item and per item with training events; see the module docstring.
    ``item_buckets`` / ``category_buckets`` must be those the two vocabularies were fitted with."""
    activity = split_events.transform(filter_train).transform(item_activity)
    counts = ["events_7d", "events_30d", "events_all", "n_views", "n_carts", "n_purchases"]
    catalogue = items.select(C.ITEM_ID, C.CATEGORY, C.BRAND, C.PRICE, C.STOCK).transform(
        lambda df: with_price_bucket(df, price_buckets))
    return (catalogue.join(activity, C.ITEM_ID, "full")
            .join(F.broadcast(vocab.select(C.ITEM_ID, C.ITEM_IDX)), C.ITEM_ID, "left")
            .fillna(0, subset=counts)
            .withColumn(C.CATEGORY, F.coalesce(F.col(C.CATEGORY), F.lit(UNKNOWN)))
            .transform(lambda df: with_category_idx(df, category_vocab, category_buckets))
            .select(C.ITEM_ID,
                    F.coalesce(F.col(C.ITEM_IDX), C.ItemLayout(item_buckets).unknown_index(F.col(C.ITEM_ID))).cast("int")
                    .alias(C.ITEM_IDX),
                    C.CATEGORY, C.CATEGORY_IDX,
                    F.coalesce(F.col(C.BRAND), F.lit(UNKNOWN)).alias(C.BRAND),
                    C.PRICE, "price_bucket", C.STOCK, *counts,
                    _ratio("n_carts", "n_views").alias("view_to_cart"),
                    _ratio("n_purchases", "n_carts").alias("cart_to_purchase")))
