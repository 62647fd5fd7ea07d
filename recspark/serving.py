"""Real time: the exported model as an MLflow pyfunc that ranks from one user's recent events.

Input: a DataFrame of events, one row per event (``user_id``, ``item_id``, ``event_type``,
``event_ts`` as a timestamp, ISO string or epoch seconds, and optionally ``session_id``, the basket;
without it each event is its own basket, as in gold), for one user or several. Output: one row per
(user, rank): ``user_id``, ``rank``, ``item_id``, ``score``, ``confidence``, ``reason``, the same
top-K the bulk score stage writes for a user with exactly these events (its serving row is built
from all of a user's events: pass the history you have, not only the last minutes).

Under ``mlflow.pyfunc.spark_udf`` a UDF must answer one value per row, so there each input row is a
user and each event column holds that user's events as a list (``F.struct`` of the array columns,
e.g. gold ``sequences``); the answer is one row per user of lists (:data:`UDF_RESULT_TYPE`).

The model's inputs are rebuilt in pandas exactly as recspark.pipeline.features builds gold
``serving_histories``: the last ``max_seq_len`` items (vocabulary index, else the item's hashed
out-of-vocabulary bucket, the same xxhash64 as Spark's), event types and time-gap buckets, the
items seen, and the repeat profile (items bought in the most baskets and their seven numbers, the
items' repurchase rates and cycles shipped with the model). Then the bulk scorer's own arithmetic
(:func:`recspark.scoring.score_rows`): the same plan, exclusions, calibration and threshold.
Reasons: the re-buy reason and "popular in <category>" as in bulk; "often bought with" needs the
basket pair aggregates, which are not shipped, so a discovery that gets it in bulk gets one of the
others here. Models that read ``user_vector`` (towers, dnn) need the user features the features stage
computes from the whole history with gold feature_stats, and are not exported this way.

What ships with the model (MLflow artifacts): the export (model.keras, model_meta.json,
vocabularies), its calibration, the items' repurchase rates, the "popular in" table, the items never
recommended when it was trained (out of stock, category rules; stock as of then), and the settings.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import PYFUNC_DIR

SETTINGS_FILE = "settings.json"
ARTIFACTS = ("export", "rates", "popular")  # artifact keys; the export holds the calibration too
OUTPUT_COLUMNS = (C.USER_ID, C.RANK, C.ITEM_ID, C.SCORE, C.CONFIDENCE, C.REASON)
UDF_RESULT_TYPE = "struct<item_ids: array<string>, scores: array<float>, confidences: array<float>, reasons: array<string>>"
# Models whose inputs the serving row holds (the feature models also read user_vector).
SERVABLE_INPUTS = {C.HISTORY, C.HISTORY_TYPES, C.HISTORY_GAPS, C.REPEAT_ITEMS, C.REPEAT_FEATURES}
XXHASH_SEED = 42  # Spark's xxhash64 seed

_M = 2**64 - 1
_P1, _P2, _P3, _P4, _P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x85EBCA77C2B2AE63,
                           0x27D4EB2F165667C5)


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M


def _round(acc: int, lane: int) -> int:
    return (_rotl((acc + lane * _P2) & _M, 31) * _P1) & _M


def xxhash64(data: bytes, seed: int = XXHASH_SEED) -> int:
    """XXH64 of ``data`` as a signed long: Spark's ``xxhash64`` of a string (its UTF-8 bytes, seed 42),
    so an unknown item gets the same hashed bucket here as in gold (checked against Spark in the tests)."""
    n, i = len(data), 0
    word = lambda at, size: int.from_bytes(data[at:at + size], "little")
    if n >= 32:
        v = [(seed + _P1 + _P2) & _M, (seed + _P2) & _M, seed & _M, (seed - _P1) & _M]
        while i + 32 <= n:
            v = [_round(v[j], word(i + 8 * j, 8)) for j in range(4)]
            i += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _M
        for lane in v:
            h = (((h ^ _round(0, lane)) * _P1) + _P4) & _M
    else:
        h = (seed + _P5) & _M
    h = (h + n) & _M
    while i + 8 <= n:
        h = (_rotl(h ^ _round(0, word(i, 8)), 27) * _P1 + _P4) & _M
        i += 8
    if i + 4 <= n:
        h = (_rotl(h ^ ((word(i, 4) * _P1) & _M), 23) * _P2 + _P3) & _M
        i += 4
    while i < n:
        h = (_rotl(h ^ ((data[i] * _P5) & _M), 11) * _P1) & _M
        i += 1
    h = ((h ^ (h >> 33)) * _P2) & _M
    h = ((h ^ (h >> 29)) * _P3) & _M
    h ^= h >> 32
    return h - 2**64 if h >= 2**63 else h


def left_pad(values: Sequence[int], length: int) -> list[int]:
    tail = list(values)[-length:]
    return [C.PAD_IDX] * (length - len(tail)) + tail


def _half_up(value: float) -> int:
    """Spark's round() of a non-negative double (half up, where Python's round is half even)."""
    return int(math.floor(value + 0.5))


def repeat_reason_text(times: int, days: int) -> str:
    """The re-buy reason, worded as recspark.recommendations.repeat_reason words it in Spark."""
    times_text = "once" if times == 1 else f"{times} times"
    when = ("on your latest visit" if days == 0 else "1 day before your latest visit" if days == 1
            else f"{days} days before your latest visit")
    return f"bought {times_text}, {when}" if times == 1 else f"bought {times_text}, last {when}"


class ServingRows:
    """Builds gold ``serving_histories`` rows from raw events, in pandas (see the module docstring)."""

    def __init__(self, item_index: dict[str, int], rates: dict[int, float], settings: dict[str, Any],
                 gaps: Optional[dict[int, float]] = None) -> None:
        """``rates`` and ``gaps``: each item's repurchase rate and cycle (repeat_profiles.item_repurchase_rates)."""
        self.item_index, self.rates, self.settings, self.gaps = item_index, rates, settings, gaps or {}
        self.event_types = {name: k + 1 for k, name in enumerate(settings["event_types"])}

    def item_idx(self, item_id: str) -> int:
        """The vocabulary index, else the hashed bucket (recspark.constants.ItemLayout.unknown_index)."""
        found = self.item_index.get(item_id)
        if found is not None:
            return found
        buckets = self.settings["oov_buckets"]
        if buckets == 1:
            return C.OOV_IDX
        return C.FIRST_BUCKET_IDX + xxhash64(item_id.encode("utf-8")) % buckets

    def row(self, items: Sequence[str], types: Sequence[str], micros: Sequence[int],
            baskets: Sequence[Optional[str]]) -> dict[str, Any]:
        """One user's serving row from their events in time order."""
        s = self.settings
        idx = [self.item_idx(str(item)) for item in items]
        type_ids = [self.event_types.get(t, len(self.event_types) + 1) for t in types]
        latest = max(micros) if len(micros) else 0
        # 1 + min(buckets - 1, floor(log2(1 + whole minutes))), as features.gap_bucket_ids (exact integers).
        gaps = [1 + min(s["gap_buckets"] - 1, (math.floor((latest - us) / 60_000_000) + 1).bit_length() - 1)
                for us in micros]
        length = s["max_seq_len"]
        repeat_items, repeat_features = self.repeat_profile(idx, micros, baskets)
        return {C.HISTORY: left_pad(idx, length), C.HISTORY_TYPES: left_pad(type_ids, length),
                C.HISTORY_GAPS: left_pad(gaps, length), C.SEEN_IDX: list(dict.fromkeys(idx)),
                C.REPEAT_ITEMS: repeat_items, C.REPEAT_FEATURES: repeat_features}

    def repeat_profile(self, idx: Sequence[int], micros: Sequence[int], baskets: Sequence[Optional[str]]
                       ) -> tuple[list[int], list[float]]:
        """repeat_profiles.with_repeat_profile over all of the user's steps (a serving row has no cut-off)."""
        size, first = self.settings["repeat_candidates"], self.settings["first_item"]
        # Basket ordinals: a new basket wherever the basket differs from the step before (repeat_profiles.basket_steps).
        per_pair: dict[tuple[int, int], int] = {}
        ordinal, previous = 0, object()
        for item, us, basket in zip(idx, micros, baskets):
            if ordinal == 0 or basket != previous:
                ordinal += 1
            previous = basket
            per_pair[(ordinal, item)] = max(per_pair.get((ordinal, item), us), us)
        ref = max(per_pair.values()) if per_pair else 0
        max_bo = ordinal
        distinct_baskets = len({bo for bo, _ in per_pair})
        stats: dict[int, list] = {}  # item -> [baskets with it, latest ordinal, latest time, earliest basket time]
        for (bo, item), us in per_pair.items():
            if item < first:
                continue
            entry = stats.setdefault(item, [0, 0, us, us])
            entry[0] += 1
            entry[1] = max(entry[1], bo)
            entry[2], entry[3] = max(entry[2], us), min(entry[3], us)
        best = sorted(stats.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))[:size]
        items, values = [], []
        for item, (nb, lb, lu, fu) in best:
            interval = math.log1p((lu - fu) / C.DAY_MICROS / (nb - 1)) if nb > 1 else 0.0
            values += [math.log1p(nb), nb / distinct_baskets, math.log1p(max_bo + 1 - lb),
                       math.log1p((ref - lu) / C.DAY_MICROS), interval, self.rates.get(item, 0.5),
                       self.gaps.get(item, 0.0)]
            items.append(item)
        pad = size - len(items)
        return (items + [C.PAD_IDX] * pad,
                np.asarray(values + [0.0] * pad * C.REPEAT_FEATURE_COUNT, dtype=np.float32).tolist())


def _micros(values: pd.Series) -> np.ndarray:
    """Event times (timestamps, ISO strings or epoch seconds) -> microseconds since the epoch, UTC."""
    if pd.api.types.is_numeric_dtype(values):
        return (values.to_numpy(dtype=np.float64) * 1_000_000).round().astype(np.int64)
    times = pd.to_datetime(values, utc=True)
    return ((times - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)).to_numpy(dtype=np.int64)


class RecsparkModel:
    """The pyfunc's body (also usable without MLflow): loads what ships with the model, answers events."""

    def __init__(self, export_dir: str, rates_dir: Optional[str], popular_dir: Optional[str]) -> None:
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        from recspark.calibration import Calibration
        from recspark.models.training import load_model
        from recspark.scoring import build_plan, model_input_columns

        export = Path(export_dir)
        self.settings = json.loads((export / SETTINGS_FILE).read_text())
        self.columns = model_input_columns(export_dir)
        self.plan = build_plan(load_model(export)[0], self.settings["item_block"])
        self.calibration = Calibration.load(export)
        vocab = pd.read_parquet(export / "vocab" / "item_vocab.parquet")
        self.item_ids = dict(zip(vocab[C.ITEM_IDX].astype(int), vocab[C.ITEM_ID].astype(str)))
        rates = pd.read_parquet(rates_dir) if rates_dir else pd.DataFrame({C.ITEM_IDX: [], "rate": [], "gap": []})
        known_gap = rates["gap"].notna()
        self.rows = ServingRows({v: k for k, v in self.item_ids.items()},
                                dict(zip(rates[C.ITEM_IDX].astype(int), rates["rate"].astype(float))), self.settings,
                                dict(zip(rates[C.ITEM_IDX][known_gap].astype(int), rates["gap"][known_gap].astype(float))))
        popular = pd.read_parquet(popular_dir) if popular_dir else pd.DataFrame({C.ITEM_IDX: [], C.CATEGORY: []})
        self.popular = dict(zip(popular[C.ITEM_IDX].astype(int), popular[C.CATEGORY].astype(str)))
        self.blocked = None
        if self.settings["never"]:
            self.blocked = np.zeros(self.plan.num_items, dtype=bool)
            self.blocked[np.asarray(self.settings["never"], dtype=np.int64)] = True

    def _serving_rows(self, users: list[tuple[str, list, list, np.ndarray, list]]) -> pd.DataFrame:
        rows = []
        for user, items, types, micros, baskets in users:
            order = np.argsort(micros, kind="stable")  # time order; the input's order breaks ties
            rows.append({C.USER_ID: user, **self.rows.row([items[i] for i in order], [types[i] for i in order],
                                                          [int(micros[i]) for i in order],
                                                          [baskets[i] for i in order])})
        return pd.DataFrame(rows)

    def _reason(self, item: int, repeat_items: list[int], repeat_features: list[float]) -> str:
        from recspark.recommendations import _BASKETS, _DAYS_BEFORE_LATEST, PLAIN_REASON

        if item in repeat_items:
            at = repeat_items.index(item) * C.REPEAT_FEATURE_COUNT
            times = _half_up(math.expm1(float(np.float32(repeat_features[at + _BASKETS]))))
            days = _half_up(math.expm1(float(np.float32(repeat_features[at + _DAYS_BEFORE_LATEST]))))
            return repeat_reason_text(times, days)
        if item in self.popular:
            return f"popular in {self.popular[item]}"
        return PLAIN_REASON

    def rank(self, users: list[tuple[str, list, list, np.ndarray, list]]) -> list[dict[str, list]]:
        """Per user (id, item ids, event types, microseconds, baskets): item_ids, scores, confidences, reasons."""
        from recspark.scoring import score_rows

        if not users:
            return []
        rows = self._serving_rows(users)
        s = self.settings
        items, scores, confidences = score_rows(
            self.plan, self.columns, [rows[c] for c in self.columns],
            rows[C.SEEN_IDX] if s["exclude_seen"] else None, s["k"], batch_size=s["batch_size"],
            blocked=self.blocked, calibration=self.calibration, min_confidence=s["min_confidence"])
        out = []
        for row, top, top_scores, top_confidences in zip(rows.itertuples(index=False), items, scores, confidences):
            profile, features = list(getattr(row, C.REPEAT_ITEMS)), list(getattr(row, C.REPEAT_FEATURES))
            out.append({"item_ids": [self.item_ids[int(i)] for i in top], "scores": [float(v) for v in top_scores],
                        "confidences": [float(v) for v in top_confidences],
                        "reasons": [self._reason(int(i), profile, features) for i in top]})
        return out

    def predict_events(self, events: pd.DataFrame) -> pd.DataFrame:
        """Events, a row each -> a row per (user, rank) (:data:`OUTPUT_COLUMNS`)."""
        missing = [c for c in (C.USER_ID, C.ITEM_ID, C.EVENT_TYPE, C.EVENT_TS) if c not in events.columns]
        if missing:
            raise ValueError(f"events need columns {missing}; got {list(events.columns)}")
        events = events.reset_index(drop=True)
        micros = _micros(events[C.EVENT_TS])
        baskets = (events[C.SESSION_ID].astype(object).where(events[C.SESSION_ID].notna(), None)
                   if C.SESSION_ID in events.columns else pd.Series([None] * len(events)))
        # An event without a basket is its own basket (as gold's sequences make it).
        baskets = [b if b is not None else f"\0event{i}" for i, b in enumerate(baskets)]
        users = []
        for user, positions in events.groupby(C.USER_ID, sort=False).indices.items():
            users.append((str(user), [str(events[C.ITEM_ID].iat[p]) for p in positions],
                          [str(events[C.EVENT_TYPE].iat[p]) for p in positions], micros[positions],
                          [baskets[p] for p in positions]))
        answers = self.rank(users)
        rows = [(user[0], rank + 1, item, score, confidence, reason)
                for user, answer in zip(users, answers)
                for rank, (item, score, confidence, reason) in enumerate(zip(
                    answer["item_ids"], answer["scores"], answer["confidences"], answer["reasons"]))]
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS)).astype({C.RANK: "int32", C.SCORE: "float32",
                                                                         C.CONFIDENCE: "float32"})

    def predict_users(self, users: pd.DataFrame) -> pd.DataFrame:
        """A row per user, each event column a list (spark_udf) -> a row per user of lists."""
        baskets = users[C.SESSION_ID] if C.SESSION_ID in users.columns else pd.Series([None] * len(users))
        rows = []
        for n, (user, items, types, times, basket) in enumerate(zip(
                users[C.USER_ID], users[C.ITEM_ID], users[C.EVENT_TYPE], users[C.EVENT_TS], baskets)):
            count = len(items)
            basket = list(basket) if basket is not None else [None] * count
            rows.append((str(user), [str(i) for i in items], [str(t) for t in types],
                         np.asarray(_micros(pd.Series(list(times))), dtype=np.int64),
                         [b if b is not None else f"\0event{n}.{i}" for i, b in enumerate(basket)]))
        return pd.DataFrame(self.rank(rows), columns=["item_ids", "scores", "confidences", "reasons"])

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        lists = len(frame) and isinstance(frame[C.ITEM_ID].iloc[0], (list, tuple, np.ndarray))
        return self.predict_users(frame) if lists else self.predict_events(frame)


class RecsparkPyfunc(mlflow.pyfunc.PythonModel):
    """The MLflow face of :class:`RecsparkModel`: events in, top-K with score, confidence and reason out."""

    def load_context(self, context) -> None:
        self.model = RecsparkModel(context.artifacts["export"], context.artifacts.get("rates"),
                                   context.artifacts.get("popular"))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.model.predict(model_input)


def servable(model_dir: str | Path) -> bool:
    """Whether the export's inputs are all in a serving row built from events (not towers / dnn)."""
    meta = json.loads((Path(model_dir) / "model_meta.json").read_text())
    return set(meta.get("inputs", ())) <= SERVABLE_INPUTS


def save_pyfunc(path: str | Path, export_dir: str | Path, settings: dict, *, calibration_dir: str | Path | None = None,
                rates_dir: str | Path | None = None, popular_dir: str | Path | None = None) -> Path:
    """Saves the pyfunc to ``path`` (replaced): the export's model, meta and vocabularies, the
    calibration of ``calibration_dir`` (the validation-chosen model's), ``settings`` (k,
    exclude_seen, min_confidence, never, event_types, gap_buckets, max_seq_len, repeat_candidates,
    first_item, oov_buckets, batch_size, item_block) and the rates / popular Parquet folders.
    The recspark package goes along (``code_paths``), so the model runs the code it was saved with."""
    import recspark

    path, export = Path(path), Path(export_dir)
    staging = path.parent / f".{path.name}.export"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in ("model.keras", "model_meta.json"):
        shutil.copy2(export / name, staging / name)
    shutil.copytree(export / "vocab", staging / "vocab")
    calibration = Path(calibration_dir or export) / "calibration.json"
    if calibration.exists():
        shutil.copy2(calibration, staging / "calibration.json")
    (staging / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    artifacts = {"export": str(staging)}
    for key, folder in (("rates", rates_dir), ("popular", popular_dir)):
        if folder is not None:
            artifacts[key] = str(folder)
    shutil.rmtree(path, ignore_errors=True)
    # MLflow warns that a DataFrame type hint gives no signature: the two input forms are checked by RecsparkModel.
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.ERROR)
    try:
        mlflow.pyfunc.save_model(
            str(path), python_model=RecsparkPyfunc(), artifacts=artifacts,
            code_paths=[str(Path(recspark.__file__).parent)],
            # Stated, not inferred: inference would load the model in a subprocess (TensorFlow: slow).
            pip_requirements=[f"mlflow=={mlflow.__version__}"])
    finally:
        pyfunc_log.setLevel(level)
        shutil.rmtree(staging, ignore_errors=True)
    return path


def serving_settings(config, model_dir: str | Path, never: Sequence[int]) -> dict:
    """The settings a pyfunc of ``model_dir`` ranks with, from the configuration (as the score stage)."""
    meta = json.loads((Path(model_dir) / "model_meta.json").read_text())
    f, score = config.features, config.score
    return {"k": score.k, "exclude_seen": config.evaluate.exclude_seen, "min_confidence": score.min_confidence,
            "never": [int(i) for i in never], "event_types": list(config.ingest.event_types),
            "gap_buckets": f.gap_buckets, "max_seq_len": int(meta["max_seq_len"]),
            "repeat_candidates": f.repeat_candidates, "first_item": f.first_item_idx, "oov_buckets": f.oov_buckets,
            "batch_size": score.batch_size, "item_block": score.item_block}


def export_pyfunc(spark, config, model: str, model_dir: str | Path, run_id: str) -> Optional[Path]:
    """The pyfunc of the export in ``model_dir`` saved to ``model_dir/pyfunc`` (the train stage logs
    and registers it), or None for a model that is not servable from events. The calibration is
    fitted here if it is not yet (on validation, with the validation-chosen model, as score does);
    the rates and "popular in" tables are written by Spark into the pyfunc's artifacts. The rates come
    from gold serving_sequences, indexed by the serving vocabulary, which keeps every training index:
    right for the serving fit, and for an export of the training vocabulary the appended items are
    indices it never looks up."""
    from recspark.calibration import ensure_calibration
    from recspark.pipeline.repeat_profiles import basket_steps, item_repurchase_rates
    from recspark.pipeline.item_features import ITEM_FEATURES
    from recspark.recommendations import blocked_items, popular_items
    from recspark.utils.delta import read_table, table_exists

    if not servable(model_dir):
        return None
    if config.score.calibrate:  # keyed by the training run: the score stage finds it fitted
        ensure_calibration(spark, config, model, run_id)
    first = config.features.first_item_idx
    tables = Path(model_dir) / f".{PYFUNC_DIR}.tables"
    shutil.rmtree(tables, ignore_errors=True)
    folders, never = {}, []
    sequences_path = config.table_path(C.GOLD, C.SERVING_SEQUENCES)
    if table_exists(spark, sequences_path):
        rates = item_repurchase_rates(basket_steps(read_table(spark, sequences_path)), config.features)
        folders["rates"] = tables / "rates"
        rates.select(F.col("_i").alias(C.ITEM_IDX), F.col("_rate").alias("rate"), F.col("_gap").alias("gap")).coalesce(1).write.parquet(
            str(folders["rates"]))
    features_path = config.table_path(C.GOLD, ITEM_FEATURES)
    if table_exists(spark, features_path):
        item_features = read_table(spark, features_path)
        folders["popular"] = tables / "popular"
        (popular_items(item_features, first).select(C.ITEM_IDX, F.col("_popular_in").alias(C.CATEGORY))
         .coalesce(1).write.parquet(str(folders["popular"])))
        blocked = blocked_items(item_features, first, config.score.exclude_categories, config.score.include_categories)
        never = sorted(set().union(*blocked.values())) if blocked else []
    try:
        return save_pyfunc(Path(model_dir) / PYFUNC_DIR, model_dir, serving_settings(config, model_dir, never),
                           calibration_dir=config.model_dir(model), rates_dir=folders.get("rates"),
                           popular_dir=folders.get("popular"))
    finally:
        shutil.rmtree(tables, ignore_errors=True)

