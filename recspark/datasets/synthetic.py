"""SYNTHETIC data: a generated shop, not real behaviour. Every id starts with ``syn-`` and every row's
``source_file`` is ``synthetic://seed=<seed>``, so generated rows can never pass for real ones.

Why: to exercise the pipeline at any size (10 thousand to 100 million events) with known structure.
Everything is built by Spark from ``spark.range`` and built-in functions, nothing is collected to the
driver, and every random draw is a hash of (seed, purpose, row keys) rather than ``F.rand``: the
output then depends only on ``seed`` and ``n_events``, never on partitioning or cluster size, so the
same seed and size give identical DataFrames anywhere.

Generative model (defaults in :class:`ShopParams`):

- Sizes: ``n_users = max(200, n_events // 50)``, ``n_items = max(200, n_events // 200)``,
  ``n_categories = clip(n_items // 20, 8, 400)`` grouped 5 to a department (``"dept-01/cat-007"``).
- Items: item ``i`` belongs to category ``i mod n_categories`` and is that category's ``i div
  n_categories``-th most popular item. Brand: Zipf-distributed over ``max(10, n_items // 25)`` brands.
  Price: log-normal, ``exp(mu_category + 0.5 z)`` with the category's median price log-uniform in
  2-100. Stock: exponential, mean 50 (so some items are out of stock).
- Users: age bracket, gender and region drawn from fixed weights; 1-3 preferred categories (Zipf over
  categories, so some categories are popular) and 1-2 "staple" items in the first preferred category,
  which the user buys again and again (repeat purchases).
- Sessions: ``n_sessions`` is chosen so that the expected number of events is ``n_events``. Each
  session belongs to a user drawn Zipf-like over users (a few very active users), starts at a uniform
  time in the ``period_days`` ending at ``end`` (a fixed date, so output is deterministic) and has a
  geometric number of views (mean 4).
- Views: with probability 0.15 a view is of one of the user's staples; otherwise its category is one
  of the user's preferred categories with probability 0.85 (category affinity), else any category,
  and the item within the category is Zipf-distributed (popularity skew). Views are ~45 s apart.
- Funnel: each view leads to a cart event with probability 0.065 (0.30 for staples) a few seconds
  later, and each cart to a purchase with probability 0.135 (0.50 for staples) at checkout, after the
  session's last view: overall ~10% of views are carted and ~30% of carts bought. Carts and
  purchases have a quantity (1 + geometric, mostly 1); views have none. Every event carries the
  item's catalogue price.

``source_row`` is a dense 1-based row number: events are numbered by session, then by time within
the session (so it breaks timestamp ties in the order the events happened).
"""
from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timezone

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from recspark.constants import (
    AGE, BRAND, CATEGORY, EVENT_ID, EVENT_TS, EVENT_TYPE, GENDER, ITEM_ID, PRICE, QUANTITY, REGION,
    SESSION_ID, SOURCE_FILE, SOURCE_ROW, STOCK, USER_ID,
)
from recspark.schemas import RawSources

PREFIX = "syn-"
VIEW, CART, PURCHASE = "view", "cart", "purchase"

# Table sizes stay below this so that rank * multiplier (< n ** 2) cannot overflow a long.
_MAX_TABLE = 3_000_000_000
# Sessions are numbered in blocks of this many when computing row numbers (see _row_offsets).
_BLOCK_BITS = 16
_UNIT = float(1 << 53)


@dataclasses.dataclass(frozen=True)
class ShopParams:
    """The generator's knobs; the defaults give a plausible small shop."""

    period_days: int = 180
    end: datetime = datetime(2024, 7, 1, tzinfo=timezone.utc)
    events_per_user: int = 50
    events_per_item: int = 200
    min_users: int = 200
    min_items: int = 200
    items_per_category: int = 20
    min_categories: int = 8
    max_categories: int = 400
    categories_per_department: int = 5
    items_per_brand: int = 25
    mean_views_per_session: float = 4.0
    max_views_per_session: int = 200
    seconds_between_views: int = 45
    item_zipf: float = 1.1  # popularity of items within a category
    user_zipf: float = 0.8  # activity of users
    category_zipf: float = 0.6  # how often a category is someone's preferred one
    brand_zipf: float = 0.9
    region_zipf: float = 0.7
    n_regions: int = 12
    affinity: float = 0.85  # share of (non-staple) views in the user's preferred categories
    staple_share: float = 0.15  # share of views that are of one of the user's staples
    cart_rate: float = 0.065
    purchase_rate: float = 0.135
    staple_cart_rate: float = 0.30
    staple_purchase_rate: float = 0.50
    price_sigma: float = 0.5
    mean_stock: float = 50.0
    ages: tuple = (("18-24", 0.14), ("25-34", 0.24), ("35-44", 0.22), ("45-54", 0.18),
                   ("55-64", 0.13), ("65+", 0.09))
    genders: tuple = (("F", 0.51), ("M", 0.49))
    preferred_counts: tuple = ((1, 0.40), (2, 0.35), (3, 0.25))

    @property
    def carts_per_view(self) -> float:
        return (1 - self.staple_share) * self.cart_rate + self.staple_share * self.staple_cart_rate

    @property
    def purchases_per_view(self) -> float:
        return ((1 - self.staple_share) * self.cart_rate * self.purchase_rate
                + self.staple_share * self.staple_cart_rate * self.staple_purchase_rate)


@dataclasses.dataclass(frozen=True)
class ShopSizes:
    """Table sizes derived from the requested number of events (plain Python: nothing is collected)."""

    n_users: int
    n_items: int
    n_categories: int
    n_brands: int
    n_sessions: int

    @classmethod
    def for_events(cls, n_events: int, params: ShopParams) -> "ShopSizes":
        if n_events <= 0:
            raise ValueError(f"n_events must be > 0, got {n_events}")
        n_items = max(params.min_items, n_events // params.events_per_item)
        n_categories = min(max(n_items // params.items_per_category, params.min_categories),
                           params.max_categories, n_items)
        events_per_view = 1 + params.carts_per_view + params.purchases_per_view
        sizes = cls(
            n_users=max(params.min_users, n_events // params.events_per_user),
            n_items=n_items,
            n_categories=n_categories,
            n_brands=max(10, n_items // params.items_per_brand),
            n_sessions=max(1, round(n_events / events_per_view / params.mean_views_per_session)),
        )
        if max(sizes.n_users, sizes.n_items, sizes.n_sessions) >= _MAX_TABLE:
            raise ValueError(f"n_events={n_events} is too large for this generator")
        return sizes


# ---------------------------------------------------------------------------------------------
# Random draws: pure functions of (seed, purpose, keys), so any row can be recomputed anywhere.


def _uniform(seed: int, salt: str, *keys: Column) -> Column:
    """A uniform draw in [0, 1): 53 bits of xxhash64(seed, salt, keys)."""
    bits = F.xxhash64(F.lit(seed), F.lit(salt), *keys).bitwiseAND(F.lit((1 << 53) - 1))
    return bits.cast("double") / F.lit(_UNIT)


def _normal(seed: int, salt: str, *keys: Column) -> Column:
    """A standard normal draw (Box-Muller on two uniforms)."""
    u1 = _uniform(seed, salt + ".1", *keys)
    u2 = _uniform(seed, salt + ".2", *keys)
    return F.sqrt(F.lit(-2.0) * F.log1p(-u1)) * F.cos(F.lit(2 * math.pi) * u2)


def _geometric(u: Column, mean_extra: float) -> Column:
    """A draw in {0, 1, 2, ...} with mean ``mean_extra`` (inverse CDF of the geometric law)."""
    stop = 1.0 / (1.0 + mean_extra)
    return F.floor(F.log1p(-u) / F.lit(math.log(1.0 - stop))).cast("long")


def _zipf_rank(u: Column, n: Column | int, s: float) -> Column:
    """A rank in [0, n) with P(rank = r) roughly proportional to (r + 1) ** -s.

    Inverse CDF of the continuous power law on [1, n + 1), floored: exact enough for skew, and one
    expression per row (no table of probabilities to join).
    """
    n = F.lit(n) if isinstance(n, int) else n
    top = n.cast("double") + F.lit(1.0)
    if abs(s - 1.0) < 1e-9:
        x = F.pow(top, u)
    else:
        a = 1.0 - s
        x = F.pow(F.lit(1.0) + u * (F.pow(top, F.lit(a)) - F.lit(1.0)), F.lit(1.0 / a))
    return F.least(F.greatest(F.floor(x).cast("long") - F.lit(1), F.lit(0).cast("long")), n - F.lit(1))


def _scramble(rank: Column, n: int, seed: int) -> Column:
    """A seed-dependent bijection of [0, n), ``(rank * m + seed) mod n`` with m coprime to n.

    Why: popular ranks then land on scattered ids instead of the smallest ones. m is near n times
    the golden ratio's fraction, which spreads consecutive ranks far apart.
    """
    m = max(1, int(n * 0.6180339887498949))
    while math.gcd(m, n) != 1:
        m += 1
    return F.pmod(rank * F.lit(m % n) + F.lit(seed % n), F.lit(n)).cast("long")


def _choice(u: Column, weighted: tuple) -> Column:
    """The value whose cumulative-weight interval holds ``u``."""
    total = sum(weight for _, weight in weighted)
    expr, cumulative = None, 0.0
    for value, weight in weighted[:-1]:
        cumulative += weight / total
        expr = (F.when(u < cumulative, F.lit(value)) if expr is None
                else expr.when(u < cumulative, F.lit(value)))
    last = F.lit(weighted[-1][0])
    return last if expr is None else expr.otherwise(last)


def _id(kind: str, idx: Column, n: int) -> Column:
    """``syn-<kind><zero-padded idx>``: zero padding keeps string order equal to numeric order."""
    width = len(str(max(n - 1, 0)))
    return F.format_string(f"{PREFIX}{kind}%0{width}d", idx)


# ---------------------------------------------------------------------------------------------
# The catalogue and the users as functions of their index, shared by the tables and the events.


class _Shop:
    def __init__(self, n_events: int, seed: int, params: ShopParams):
        self.seed, self.params = seed, params
        self.sizes = ShopSizes.for_events(n_events, params)
        self.source_file = f"synthetic://seed={seed}"
        self.end_ts = int(params.end.timestamp())
        self.period_s = params.period_days * 86_400

    # Items.
    def category_of(self, item: Column) -> Column:
        return F.pmod(item, F.lit(self.sizes.n_categories))

    def items_in(self, category: Column) -> Column:
        n_cat = self.sizes.n_categories
        return F.floor((F.lit(self.sizes.n_items - 1) - category) / F.lit(n_cat)).cast("long") + F.lit(1)

    def popular_item_in(self, category: Column, u: Column) -> Column:
        """An item of ``category``, Zipf-distributed over the category's popularity ranks."""
        rank = _zipf_rank(u, self.items_in(category), self.params.item_zipf)
        return category + F.lit(self.sizes.n_categories) * rank

    def category_path(self, category: Column) -> Column:
        department = F.floor(category / F.lit(self.params.categories_per_department)).cast("long")
        return F.format_string("dept-%02d/cat-%03d", department, category)

    def price_of(self, item: Column) -> Column:
        category = self.category_of(item)
        median = F.lit(math.log(2.0)) + _uniform(self.seed, "category.price", category) * F.lit(math.log(50.0))
        log_price = median + F.lit(self.params.price_sigma) * _normal(self.seed, "item.price", item)
        return F.greatest(F.round(F.exp(log_price), 2), F.lit(0.5))

    # Users.
    def preferred_categories(self, user: Column) -> Column:
        """Always three categories; only the first ``preferred_count`` are used."""
        n_cat = self.sizes.n_categories
        return F.array(*[
            _scramble(_zipf_rank(_uniform(self.seed, "user.pref", user, F.lit(j)), n_cat,
                                 self.params.category_zipf), n_cat, self.seed)
            for j in range(3)
        ])

    def preferred_count(self, user: Column) -> Column:
        return _choice(_uniform(self.seed, "user.n_pref", user), self.params.preferred_counts).cast("int")

    def staples(self, user: Column, preferred: Column) -> Column:
        """Two staple items in the first preferred category; ``staple_count`` says how many are used."""
        first = F.element_at(preferred, 1)
        return F.array(*[self.popular_item_in(first, _uniform(self.seed, "user.staple", user, F.lit(k)))
                         for k in range(2)])

    def staple_count(self, user: Column) -> Column:
        return F.when(_uniform(self.seed, "user.n_staple", user) < 0.5, 1).otherwise(2)

    # Sessions.
    def session_user(self, session: Column) -> Column:
        n = self.sizes.n_users
        rank = _zipf_rank(_uniform(self.seed, "session.user", session), n, self.params.user_zipf)
        return _scramble(rank, n, self.seed)

    def with_session_plan(self, sessions: DataFrame) -> DataFrame:
        """Adds each session's user, start, views and funnel outcomes to rows with a ``session_idx``.

        ``_views`` is array<struct<step, staple, carted, bought, carts_before, buys_before>>: only the
        few cheap draws that decide the funnel, so that a session's number of events
        (``_n_events``) is known without exploding it (needed for dense row numbers). Which item
        each view shows is drawn later, per exploded row, in compiled projections.
        """
        p, seed = self.params, self.seed
        session = F.col("session_idx")
        # Sessions start at least a day before the end, so that every event falls inside the period.
        offset = F.floor(_uniform(seed, "session.start", session) * F.lit(self.period_s - 86_400))
        start = F.lit(self.end_ts - self.period_s) + offset.cast("long")
        n_views = F.least(F.lit(1) + _geometric(_uniform(seed, "session.views", session),
                                                p.mean_views_per_session - 1.0),
                          F.lit(p.max_views_per_session))

        def draw(step: Column) -> Column:
            def u(salt: str) -> Column:
                return _uniform(seed, salt, session, step)

            staple = u("view.staple") < p.staple_share
            carted = u("view.cart") < F.when(staple, p.staple_cart_rate).otherwise(p.cart_rate)
            buy_rate = F.when(staple, p.staple_purchase_rate).otherwise(p.purchase_rate)
            bought = carted & (u("view.buy") < buy_rate)
            return F.struct(step.alias("step"), staple.alias("staple"), carted.alias("carted"),
                            bought.alias("bought"))

        steps = F.sequence(F.lit(0).cast("long"), F.col("_n_views") - 1)
        planned = sessions.select(
            "*", self.session_user(session).alias("user_idx"), start.alias("_start"),
            n_views.alias("_n_views"),
        ).select("*", F.transform(steps, draw).alias("_draws"))
        draws = F.col("_draws")

        def before(i: Column, field: str) -> Column:
            return F.size(F.filter(F.slice(draws, 1, i), lambda d: d[field])).cast("long")

        views = F.transform(draws, lambda d, i: F.struct(
            d["step"].alias("step"), d["staple"].alias("staple"), d["carted"].alias("carted"),
            d["bought"].alias("bought"), before(i, "carted").alias("carts_before"),
            before(i, "bought").alias("buys_before")))
        n_carts = F.size(F.filter(draws, lambda d: d["carted"])).cast("long")
        n_buys = F.size(F.filter(draws, lambda d: d["bought"])).cast("long")
        return planned.select(
            *sessions.columns, "user_idx", "_start", "_n_views", views.alias("_views"),
            n_carts.alias("_n_carts"), (F.col("_n_views") + n_carts + n_buys).alias("_n_events"))

    def session_events(self, planned: DataFrame) -> DataFrame:
        """One row per event of sessions from :meth:`with_session_plan`, with ``pos``: its 0-based
        place in the session's time order (views and carts interleaved, purchases at checkout)."""
        p, seed, sizes = self.params, self.seed, self.sizes
        session, user = F.col("session_idx"), F.col("user_idx")
        gap = p.seconds_between_views
        # Per-user values once per session, before the views are exploded.
        planned = planned.select("*", self.preferred_categories(user).alias("_preferred"),
                                 self.preferred_count(user).alias("_n_preferred"),
                                 self.staple_count(user).alias("_n_staples"))
        planned = planned.select("*", self.staples(user, F.col("_preferred")).alias("_staples"))
        # explode_outer, though no session is empty: for explode, Spark infers a filter
        # size(_views) > 0 and pushes it down, recomputing every session's draws a second time.
        views = planned.select("*", F.explode_outer("_views").alias("_v")).drop("_views")
        step = F.col("_v.step")

        def u(salt: str) -> Column:
            return _uniform(seed, salt, session, step)

        staple = F.element_at(F.col("_staples"),
                              (F.floor(u("view.which_staple") * F.col("_n_staples")) + 1).cast("int"))
        category = F.when(
            u("view.affinity") < p.affinity,
            F.element_at(F.col("_preferred"),
                         (F.floor(u("view.which_pref") * F.col("_n_preferred")) + 1).cast("int")),
        ).otherwise(F.floor(u("view.category") * F.lit(sizes.n_categories)).cast("long"))
        views = views.select("*", category.alias("_category"))
        item = F.when(F.col("_v.staple"), staple).otherwise(
            self.popular_item_in(F.col("_category"), u("view.item")))
        # Views are gap seconds apart with < 30 s jitter; a cart comes 5-14 s after its view (so
        # before the next view); purchases come at checkout, after the last view, in view order.
        view_ts = F.col("_start") + step * F.lit(gap) + F.floor(u("view.jitter") * 30).cast("long")
        views = views.select(
            "*", item.alias("item_idx"), view_ts.alias("_view_ts"),
            (view_ts + F.lit(5) + F.floor(u("view.cart_delay") * 10).cast("long")).alias("_cart_ts"),
            (F.lit(1) + _geometric(u("view.quantity"), 0.4)).alias("_quantity"),
        )
        # bought implies carted, so the kinds are [0], [0, 1] or [0, 1, 2] (view, cart, purchase).
        n_kinds = F.lit(1) + F.col("_v.carted").cast("int") + F.col("_v.bought").cast("int")
        kinds = F.slice(F.array(F.lit(0), F.lit(1), F.lit(2)), 1, n_kinds)
        events = views.select("*", F.explode_outer(kinds).alias("kind"))
        kind = F.col("kind")
        view_pos = step + F.col("_v.carts_before")
        return events.select(
            *[c for c in planned.columns if not c.startswith("_")], "item_idx", "kind",
            F.when(kind == 0, F.col("_view_ts")).when(kind == 1, F.col("_cart_ts"))
             .otherwise(F.col("_start") + F.col("_n_views") * F.lit(gap) + F.lit(30) + step).alias("ts"),
            F.when(kind == 0, F.lit(None).cast("long")).otherwise(F.col("_quantity")).alias("quantity"),
            F.when(kind == 0, view_pos).when(kind == 1, view_pos + 1)
             .otherwise(F.col("_n_views") + F.col("_n_carts") + F.col("_v.buys_before")).alias("pos"),
        )


def _row_offsets(spark: SparkSession, shop: _Shop) -> DataFrame:
    """(session_idx, offset): the number of events in all earlier sessions, for dense row numbers.

    A running sum over sessions, computed scalably: per-block totals (one row per 65,536 sessions)
    are summed over earlier blocks, and positions inside a block come from a window partitioned by
    block.
    Only (session, count) pairs are shuffled, never events.
    """
    sessions = spark.range(shop.sizes.n_sessions).select(F.col("id").alias("session_idx"))
    counts = (
        shop.with_session_plan(sessions)
        .select("session_idx", F.col("_n_events").alias("n"))
        # A shift, not a division: the block is then known non-null and no filter is inferred on it.
        .withColumn("block", F.shiftright(F.col("session_idx"), _BLOCK_BITS))
    )
    in_block = counts.withColumn(
        "before", F.sum("n").over(Window.partitionBy("block").orderBy("session_idx")) - F.col("n"))
    blocks = counts.groupBy("block").agg(F.sum("n").alias("block_n"))
    # Events before each block: a self-join of the tiny block table (at most a few hundred rows even
    # for 100 million events) rather than an unpartitioned window, which Spark warns about.
    earlier = blocks.select(F.col("block").alias("earlier"), F.col("block_n").alias("earlier_n"))
    blocks = (
        blocks.join(F.broadcast(earlier), F.col("earlier") < F.col("block"), "left")
        .groupBy("block").agg(F.coalesce(F.sum("earlier_n"), F.lit(0)).cast("long").alias("block_start"))
    )
    return in_block.join(F.broadcast(blocks), "block").select(
        "session_idx", (F.col("block_start") + F.col("before")).alias("offset"))


def _events(spark: SparkSession, shop: _Shop) -> DataFrame:
    sizes = shop.sizes
    # The sessions are generated again from their offsets (a pure function of session_idx), so no
    # event is ever joined or shuffled.
    events = shop.session_events(shop.with_session_plan(_row_offsets(spark, shop)))
    row = F.col("offset") + F.col("pos") + F.lit(1)
    item = F.col("item_idx")
    return events.select(
        F.concat(F.lit(PREFIX + "e"), row.cast("string")).alias(EVENT_ID),
        _id("u", F.col("user_idx"), sizes.n_users).alias(USER_ID),
        _id("i", item, sizes.n_items).alias(ITEM_ID),
        F.element_at(F.array(F.lit(VIEW), F.lit(CART), F.lit(PURCHASE)), F.col("kind") + 1).alias(EVENT_TYPE),
        F.timestamp_seconds(F.col("ts")).alias(EVENT_TS),
        F.col("quantity").alias(QUANTITY),
        shop.price_of(item).alias(PRICE),
        _id("s", F.col("session_idx"), sizes.n_sessions).alias(SESSION_ID),
        F.lit(shop.source_file).alias(SOURCE_FILE),
        row.cast("long").alias(SOURCE_ROW),
    )


def _items(spark: SparkSession, shop: _Shop) -> DataFrame:
    sizes, p = shop.sizes, shop.params
    item = F.col("id")
    brand = _scramble(_zipf_rank(_uniform(shop.seed, "item.brand", item), sizes.n_brands, p.brand_zipf),
                      sizes.n_brands, shop.seed)
    stock = F.floor(-F.log1p(-_uniform(shop.seed, "item.stock", item)) * F.lit(p.mean_stock)).cast("long")
    return spark.range(sizes.n_items).select(
        _id("i", item, sizes.n_items).alias(ITEM_ID),
        shop.category_path(shop.category_of(item)).alias(CATEGORY),
        _id("b", brand, sizes.n_brands).alias(BRAND),
        shop.price_of(item).alias(PRICE),
        stock.alias(STOCK),
        F.lit(shop.source_file).alias(SOURCE_FILE),
        (item + 1).alias(SOURCE_ROW),
    )


def _users(spark: SparkSession, shop: _Shop) -> DataFrame:
    sizes, p = shop.sizes, shop.params
    user = F.col("id")
    region = _zipf_rank(_uniform(shop.seed, "user.region", user), p.n_regions, p.region_zipf) + 1
    return spark.range(sizes.n_users).select(
        _id("u", user, sizes.n_users).alias(USER_ID),
        _choice(_uniform(shop.seed, "user.age", user), p.ages).alias(AGE),
        _choice(_uniform(shop.seed, "user.gender", user), p.genders).alias(GENDER),
        F.format_string("region-%02d", region).alias(REGION),
        F.lit(shop.source_file).alias(SOURCE_FILE),
        (user + 1).alias(SOURCE_ROW),
    )


def read_sources(spark: SparkSession, n_events: int, seed: int,
                 params: ShopParams | None = None) -> RawSources:
    """A synthetic shop of about ``n_events`` events; the same seed and size give the same data."""
    shop = _Shop(n_events, seed, params or ShopParams())
    return RawSources(
        events=_events(spark, shop),
        items=_items(spark, shop),
        users=_users(spark, shop),
    )
