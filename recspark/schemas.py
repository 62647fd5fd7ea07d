"""The canonical raw schema: what every reader (recspark.datasets) hands to ingest, and what ingest
enforces. In a module of its own so that readers and ingest both import it, not each other.

Canonical raw columns (optional ones may be absent; ingest adds them as nulls):

- events: ``event_id``? ``user_id`` ``item_id`` ``event_type`` ``event_ts`` (timestamp, ISO string or
  epoch seconds) ``quantity``? ``price``? ``session_id``?
- items: ``item_id`` ``category``? (a path like ``"GROCERY/FRZN ICE/ICE - CRUSHED"``) ``brand``?
  ``price``? ``stock``? ``attributes``? (map<string,string>)
- users: ``user_id`` ``age``? (a number or a range like ``"45-54"``) ``gender``? ``region``?
  ``attributes``? (map<string,string>)
"""
from __future__ import annotations

from typing import NamedTuple, Optional

from pyspark.sql import DataFrame

from recspark import constants as C


class RawSources(NamedTuple):
    """A reader's output: the three entities in the canonical column names (types may still be raw
    strings: ingest casts and quarantines), each with ``source_file`` and ``source_row``."""

    events: DataFrame
    items: Optional[DataFrame]
    users: Optional[DataFrame]


# The bronze type of each canonical column.
EVENT_SCHEMA: dict[str, str] = {
    C.EVENT_ID: "string",
    C.USER_ID: "string",
    C.ITEM_ID: "string",
    C.EVENT_TYPE: "string",
    C.EVENT_TS: "timestamp",
    C.QUANTITY: "double",
    C.PRICE: "double",
    C.SESSION_ID: "string",
}
ITEM_SCHEMA: dict[str, str] = {
    C.ITEM_ID: "string",
    C.CATEGORY: "string",
    C.BRAND: "string",
    C.PRICE: "double",
    C.STOCK: "long",
    C.ATTRIBUTES: "map<string,string>",
}
USER_SCHEMA: dict[str, str] = {
    C.USER_ID: "string",
    C.AGE: "string",
    C.GENDER: "string",
    C.REGION: "string",
    C.ATTRIBUTES: "map<string,string>",
}
# Feedback on served lists (recspark.feedback): an impression (``response`` = "impression", ``event_ts``
# = when it was shown, ``rank`` as shown) or a response to one item of one recommendations run
# (click, cart, purchase, rate, dismiss); user_id is the shop's own id, as in the recommendations.
FEEDBACK_SCHEMA: dict[str, str] = {
    C.FEEDBACK_ID: "string",
    C.USER_ID: "string",
    C.ITEM_ID: "string",
    C.RUN_ID: "string",
    C.RESPONSE: "string",
    C.EVENT_TS: "timestamp",
    C.RANK: "int",
    C.QUANTITY: "double",
    C.PRICE: "double",
    C.SESSION_ID: "string",
}
# The columns without which no row of an entity can be accepted.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    C.EVENTS: (C.USER_ID, C.ITEM_ID, C.EVENT_TYPE, C.EVENT_TS),
    C.ITEMS: (C.ITEM_ID,),
    C.USERS: (C.USER_ID,),
    C.FEEDBACK: (C.USER_ID, C.ITEM_ID, C.RUN_ID, C.RESPONSE, C.EVENT_TS),
}
LINEAGE = (C.SOURCE_FILE, C.SOURCE_ROW)
# A reader may flag rows it could not parse (wrong column count, bad encoding, unreadable file)
# in this column; such rows are quarantined with that reason before any other check.
READ_ERROR = "read_error"
