"""Silver sessionisation by inactivity gap and bot filtering, on tiny hand-made events."""
from __future__ import annotations

import datetime as dt

from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from recspark.pipeline.sessions import filter_bots, find_bots, with_gap_sessions

EVENTS = "event_id string, user_id string, item_id string, event_type string, event_ts timestamp, quantity double, price double, session_id string, source_file string, source_row long"


def ts(day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(2024, 1, day, hour, minute)


def test_gap_sessions_fill_only_missing_ids(spark: SparkSession) -> None:
    # u1 without sessions: 10:00, 10:20 (gap 20 <= 30) -> g1; 11:00 (gap 40 > 30) -> g2;
    # 11:30 (gap exactly 30, not more) -> g2. The source basket b1 at 10:50 keeps its id and
    # does not interrupt the gap count. u2: one event -> g1.
    rows = [
        ("e1", "u1", "a", "view", ts(1, 10, 0), 1.0, None, None, "f", 1),
        ("e2", "u1", "a", "view", ts(1, 10, 20), 1.0, None, None, "f", 2),
        ("e3", "u1", "b", "purchase", ts(1, 10, 50), 1.0, None, "b1", "f", 3),
        ("e4", "u1", "c", "view", ts(1, 11, 0), 1.0, None, None, "f", 4),
        ("e5", "u1", "c", "cart", ts(1, 11, 30), 1.0, None, None, "f", 5),
        ("e6", "u2", "a", "view", ts(2, 9, 0), 1.0, None, None, "f", 6),
    ]
    got = with_gap_sessions(spark.createDataFrame(rows, EVENTS), gap_minutes=30).select("event_id", "session_id")
    expected = spark.createDataFrame(
        [("e1", "u1#g1"), ("e2", "u1#g1"), ("e3", "b1"), ("e4", "u1#g2"), ("e5", "u1#g2"), ("e6", "u2#g1")],
        "event_id string, session_id string")
    assertDataFrameEqual(got, expected)


def test_bots_are_found_by_relative_rate_and_absolute_cap(spark: SparkSession) -> None:
    # Events per active day: h1 = 2/2 = 1, h2 = 2/1 = 2, h3 = 3/1 = 3, bot = 20/1 = 20.
    # Median (percentile 0.5, approx over 4 users) = 2; 3 x 2 = 6 < 20: only "bot" is flagged.
    # The absolute cap 2.5 also flags h3 (3 > 2.5), never h2 (2 <= 2.5).
    rows = [("h1", 1), ("h1", 2), ("h2", 1), ("h2", 1), *[("h3", 1)] * 3, *[("bot", 1)] * 20]
    events = spark.createDataFrame(
        [(f"e{n}", user, "i", "view", ts(day, 0, n % 60), 1.0, None, None, "f", n) for n, (user, day) in enumerate(rows)],
        EVENTS)
    relative = find_bots(events, rate_multiple=3.0, percentile=0.5, max_events_per_day=None)
    assertDataFrameEqual(relative, spark.createDataFrame([("bot", 20, 1, 20.0)],
                                                         "user_id string, n_events long, active_days long, events_per_day double"))
    capped = find_bots(events, rate_multiple=None, percentile=0.99, max_events_per_day=2.5)
    assert sorted(r.user_id for r in capped.collect()) == ["bot", "h3"]
    kept = filter_bots(events, relative).groupBy("user_id").count()
    assertDataFrameEqual(kept, spark.createDataFrame([("h1", 2), ("h2", 2), ("h3", 3)], "user_id string, count long"))


def test_prepare_sessionises_and_removes_bots(spark: SparkSession, tmp_path, monkeypatch, capsys) -> None:
    # End to end through prepare: two session-less users (one event per day, 1/day) and a bot
    # (30 events in one day) over the absolute cap of 10 per day: the bot's events leave silver,
    # silver/bots lists it, prepare prints the count; the others get gap sessions.
    from recspark import constants as C
    from recspark.config import load_config
    from recspark.pipeline.prepare import BOTS, prepare
    from recspark.utils.delta import overwrite_table, read_table

    monkeypatch.setenv("RECSPARK_PSEUDONYM_KEY", "test-key")
    config = load_config(None, [f"paths.lakehouse={tmp_path}", "dataset.name=synthetic",
                                "prepare.bot_max_events_per_day=10"])
    rows = [(f"{u}{n}", u, "a", "view", ts(n + 1), None, None, None, "f", k)
            for k, (u, n) in enumerate((u, n) for u in ("h1", "h2") for n in range(3))]
    rows += [(f"b{n}", "bot", "a", "view", ts(1, 0, n), None, None, None, "f", 100 + n) for n in range(30)]
    overwrite_table(spark.createDataFrame(rows, EVENTS), config.table_path(C.BRONZE, C.EVENTS))
    overwrite_table(spark.createDataFrame([("a", "c", "b", 1.0, 1, "f", 1)],
                                          "item_id string, category string, brand string, price double, stock long, source_file string, source_row long"),
                    config.table_path(C.BRONZE, C.ITEMS))
    written = prepare(spark, config)
    assert "removed 1 bot users (30 events)" in capsys.readouterr().out
    assert read_table(spark, written["silver bots (removed users)"]).count() == 1
    sessions = {(r[C.USER_ID], r[C.SESSION_ID]) for r in read_table(spark, config.table_path(C.SILVER, C.EVENTS)).collect()}
    # One event per day per user: each starts its own gap session, g1..g3, named by the pseudonym.
    assert sorted(session.split("#")[1] for _, session in sessions) == ["g1", "g1", "g2", "g2", "g3", "g3"]
    assert all(session.startswith(user + "#") and user.startswith("u_") for user, session in sessions)
    assert config.table_path(C.SILVER, BOTS) == written["silver bots (removed users)"]
