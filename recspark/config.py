"""One typed configuration for every job: YAML files merged in order, then ``--set`` overrides.

Every key is declared in a dataclass below; an unknown key or a value of the wrong type fails here,
naming the key, before any Spark session starts.
"""
from __future__ import annotations

import argparse
import datetime as dt
import dataclasses
import json
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Optional

import yaml

from recspark.constants import BASELINES, MODEL_EXAMPLES, TRAIN_BASKETS, ItemLayout

DATASETS = ("completejourney", "ml-1m", "synthetic", "files")
# The models train.models may name (recspark.models registers exactly these; checked there).
# The refits of a validation-tuned model (train.refit), under its model directory: on train +
# validation (tested), and on every period with the serving vocabulary (served).
REFIT_DIR = "refit"
SERVE_DIR = "serve"
PYFUNC_DIR = "pyfunc"  # the export as an MLflow pyfunc (recspark.serving), inside the folder it serves
MODEL_NAMES = ("mean_pool", "sasrec", "towers", "dnn", "repeatnet", "repeatnet_explore", "repeatnet_next_item")


# paths.catalog / paths.schema: names that need no quoting in Spark SQL.
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ConfigError(ValueError):
    """A configuration key is unknown or its value is invalid."""


@dataclasses.dataclass
class DatasetConfig:
    name: str = "completejourney"
    # A protocol on the same data (e.g. "nbr": the next-basket protocol of
    # conf/datasets/completejourney-nbr.yaml): bronze and silver are shared with the plain data set,
    # gold, models, reports and outputs live under "<name>-<variant>".
    variant: Optional[str] = None
    # Only for name=files: the user's own events / items / users (CSV, JSON lines, Parquet or Delta).
    events_path: Optional[str] = None
    items_path: Optional[str] = None
    users_path: Optional[str] = None
    # Only for name=files: the user's own column names per entity, canonical name -> the file's
    # name, e.g. {events: {event_ts: timestamp}}.
    columns: dict = dataclasses.field(default_factory=dict)
    # Only for name=synthetic.
    synthetic_events: int = 100_000
    synthetic_seed: int = 7


@dataclasses.dataclass
class PathsConfig:
    lakehouse: str = "lakehouse"
    reports: str = "reports"
    checkpoints: str = "checkpoints"
    # Petastorm's materialisation cache (a file:// URL every executor reads: on a cluster, shared
    # storage such as file:///Volumes/... or file:///dbfs/...). Default: under lakehouse.
    petastorm_cache: Optional[str] = None
    # Unity Catalog (or any Spark catalog): with both set, every table is the managed table
    # `<catalog>.<schema>.<layer>_<table>` (Config.table_path), written with saveAsTable and read with
    # spark.table, and lakehouse then holds only files (Petastorm's cache). Both null (the default):
    # Delta tables by path under lakehouse. One schema holds one data set; a variant's gold tables and
    # outputs carry its name (gold_<variant>_<table>, recommendations_<variant>).
    catalog: Optional[str] = None
    schema: Optional[str] = None


@dataclasses.dataclass
class SparkConfig:
    # local[n]: one JVM; local-cluster[workers,cores,MB]: separate executor JVMs and Python workers on
    # this machine (make run MASTER=...); spark://host:7077 and the like: a cluster. Ignored under
    # spark-submit and on Databricks, where the session exists already.
    master: str = "local[2]"
    app_name: str = "recspark"
    shuffle_partitions: int = 8
    driver_memory: str = "6g"
    # Each executor's memory off local mode; null: Spark's default (1g), on local-cluster[n,c,MB] MB.
    executor_memory: Optional[str] = None
    extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class IngestConfig:
    event_types: list = dataclasses.field(default_factory=lambda: ["view", "cart", "purchase"])
    # Events before this date are quarantined (clock errors, epoch zero); after "now" too.
    min_event_ts: str = "1990-01-01"
    # An event whose item is in no catalogue (this input's items plus bronze items): "keep" it (a
    # catalogue is often incomplete) or "quarantine" it. Without any items at all, every event is kept.
    unknown_items: str = "keep"


@dataclasses.dataclass
class PrivacyConfig:
    # On Databricks: the secret scope holding the pseudonymisation key (secret "pseudonym-key").
    # Elsewhere the key comes from RECSPARK_PSEUDONYM_KEY; never from a file in the repository.
    secret_scope: Optional[str] = None
    # jobs/forget.py: VACUUM retention after an erasure. 0 removes the erased rows' old files and
    # truncates the log now (time travel to older versions is lost); more keeps a window of history
    # in which the erased rows can still be read.
    erasure_retention_hours: float = 0.0


@dataclasses.dataclass
class PrepareConfig:
    # Events without a source session_id get one per user from inactivity gaps longer than this;
    # 0 turns it off (then each session-less event is its own unit in the split).
    session_gap_minutes: int = 30
    # Bots: users whose events per active day exceed bot_rate_multiple x the bot_percentile of all
    # users' rates, or exceed bot_max_events_per_day; None turns that rule off.
    bot_rate_multiple: Optional[float] = 10.0
    bot_percentile: float = 0.99
    bot_max_events_per_day: Optional[float] = None


@dataclasses.dataclass
class FeaturesConfig:
    max_seq_len: int = 50
    # Items seen fewer times than this in the training period share the out-of-vocabulary index.
    min_item_count: int = 5
    # Published protocols filter the data before splitting it: items with fewer than min_item_events
    # events in all the data are dropped, then users with fewer than min_user_sessions sessions
    # (baskets). 0 keeps everything (the default).
    min_item_events: int = 0
    min_user_sessions: int = 0
    # Each user's last held-out sessions (baskets; for data without sessions, single events).
    n_test_sessions: int = 1
    n_validation_sessions: int = 1
    # train_examples (towers, dnn, mean_pool: one prediction per row) has one row per training step;
    # only each user's latest max_examples_per_user are kept, which bounds very active users.
    max_examples_per_user: int = 200
    # train_windows (sasrec: every step of a row predicts the next) cuts each user's training steps
    # into non-overlapping max_seq_len windows, back from the latest; the latest max_windows_per_user
    # are kept. Overlapping windows would only repeat the same predictions.
    max_windows_per_user: int = 20
    # train_baskets (repeatnet: every item of the next basket is a target): each user's latest
    # max_baskets_per_user baskets, each with at most max_basket_items distinct target items.
    max_baskets_per_user: int = 50
    max_basket_items: int = 32
    # The target of a train_baskets row: null, the next basket's items; a number of days, every
    # distinct item the user buys from that basket on for that many days (still within the training
    # period). A shop that recommends for the next weeks, and a time split that evaluates weeks,
    # reward predicting the horizon, not the very next basket.
    target_horizon_days: Optional[float] = None
    # Repeat profiles (repeatnet's repeat head): the repeat_candidates items a user bought in the most
    # baskets before each example, query or serving row, with their counts and recency.
    repeat_candidates: int = 64
    # user_features: the top interest_top_n categories, event weights halving every half-life.
    interest_top_n: int = 5
    interest_half_life_days: float = 30.0
    # item_features: quantile buckets of the catalogue price.
    price_buckets: int = 5
    # "sessions": each user's last sessions are held out (leave-last-out); "time": one global cut,
    # events from validation_start go to validation and from test_start to test (ISO timestamps;
    # when null, the cuts are the 80% and 90% quantiles of the event times).
    split: str = "sessions"
    validation_start: Optional[str] = None
    test_start: Optional[str] = None
    # Time gaps in behaviour sequences are bucketed on a log2 scale into this many buckets.
    gap_buckets: int = 16
    # Items / categories outside the vocabulary go to one of this many hashed buckets (indices
    # 2 .. 1 + buckets, before the vocabulary; see recspark.constants), so unknown ids in a history
    # stay apart instead of all sharing one index; 1 keeps that single shared index (no buckets).
    # 64 item buckets: with min_item_count the long tail is thousands of items (Complete Journey),
    # 64 rows keep ~1/64 of it per bucket for the price of 64 embedding rows, small next to the
    # vocabulary. 8 category buckets: categories outside the vocabulary are few (only catalogue items
    # without training events have them), so a few buckets separate them without idle rows.
    oov_buckets: int = 64
    category_oov_buckets: int = 8

    @property
    def item_layout(self) -> ItemLayout:
        """Where PAD, the unknown, the hashed buckets and the items sit in item_idx."""
        return ItemLayout(self.oov_buckets)

    @property
    def category_layout(self) -> ItemLayout:
        """The same layout for category_idx, with ``category_oov_buckets``."""
        return ItemLayout(self.category_oov_buckets)

    @property
    def first_item_idx(self) -> int:
        """The first vocabulary item_idx (``item_layout.first_item``): below it PAD, unknown and the
        hashed buckets (never a target, never recommended)."""
        return self.item_layout.first_item


@dataclasses.dataclass
class DPConfig:
    """``train.privacy``: user-level DP-SGD (recspark.models.dp_sgd, accounted by recspark.dp_accountant).

    Off by default, and then nothing about training changes. On: each step samples users with
    probability q = batch_size x num_proc / users (Poisson), takes up to ``examples_per_user`` rows
    of each sampled user, clips each user's gradient to ``clip_norm`` and adds Gaussian noise of
    standard deviation noise_multiplier x clip_norm once per global step. Give exactly one of
    ``target_epsilon`` (the noise is derived so that the planned steps spend it) and
    ``noise_multiplier`` (epsilon is reported)."""

    enabled: bool = False
    target_epsilon: Optional[float] = None
    noise_multiplier: Optional[float] = None
    # null: 1 / number of training users.
    delta: Optional[float] = None
    clip_norm: float = 1.0
    # Rows of one sampled user in a step; their mean loss is the user's one clipped gradient.
    examples_per_user: int = 1
    # "rdp" (Renyi DP) or "pld" (privacy loss distributions, tighter and slower), both from dp-accounting.
    accountant: str = "rdp"

    def validate(self) -> None:
        """ConfigError naming the key for an inconsistent or out-of-range setting (checked even when off)."""
        given = [key for key in ("target_epsilon", "noise_multiplier") if getattr(self, key) is not None]
        if self.enabled and len(given) != 1:
            raise ConfigError("train.privacy: give exactly one of target_epsilon (the noise is derived) and "
                              f"noise_multiplier (epsilon is reported), got {given or 'neither'}")
        for key in given + ["clip_norm"]:
            if getattr(self, key) <= 0:
                raise ConfigError(f"train.privacy.{key}: must be > 0, got {getattr(self, key)!r}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ConfigError(f"train.privacy.delta: must be in (0, 1) or null, got {self.delta!r}")
        if self.examples_per_user < 1:
            raise ConfigError(f"train.privacy.examples_per_user: must be >= 1, got {self.examples_per_user!r}")
        if self.accountant not in ("rdp", "pld"):
            raise ConfigError(f"train.privacy.accountant: {self.accountant!r} is not one of rdp, pld")


@dataclasses.dataclass
class TrainConfig:
    # The models the train stage trains, in order; evaluate reports every one, score serves the first.
    models: list = dataclasses.field(default_factory=lambda: ["sasrec"])
    num_proc: int = 2
    epochs: int = 3
    batch_size: int = 256
    learning_rate: float = 0.002
    embedding_dim: int = 64
    seed: int = 42
    # Transformer (sasrec).
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.2
    # "full": softmax over the whole catalogue; "sampled": sampled softmax drawing num_sampled
    # negatives from `sampler` ("log_uniform" or "popularity"), for catalogues too large for "full".
    softmax: str = "full"
    num_sampled: int = 1000
    sampler: str = "log_uniform"
    # Feature models (towers, dnn): hidden layer sizes; the dnn trains against `negatives` sampled
    # negatives per positive.
    hidden_units: list = dataclasses.field(default_factory=lambda: [128, 64])
    negatives: int = 4
    # Stop when validation NDCG@10 (on up to validation_users users) has not improved for this many
    # epochs; 0 turns early stopping off.
    early_stopping_patience: int = 2
    validation_users: int = 2000
    # Continue an interrupted run from its last epoch checkpoint (same model, config and data).
    resume: bool = True
    # Start from the previous model version's weights (vocabulary growth: old rows kept, new ones initialised).
    warm_start: bool = False
    # Next-basket models (gold train_baskets): once early stopping has chosen the epochs on validation,
    # the model is fitted again from scratch on the training and validation periods (gold
    # refit_baskets) for that many epochs, into <model_dir>/refit: evaluate's test lists and score use
    # the refit (metrics.json "fit_on"), as ALS and TIFU-KNN use train + validation. false: the
    # validation-chosen model itself is tested and served.
    refit: bool = True
    # Next-basket models (repeatnet and its ablations): the weight of the shown-and-ignored items'
    # loss term (gold train_baskets' ``ignored``, from silver feedback), -log(1 - p(item)) per item;
    # 0: feedback impressions are not used as negatives. See RepeatNet.compute_training_loss.
    ignored_weight: float = 0.0
    # Values above that differ per model, e.g. {sasrec: {batch_size: 64, learning_rate: 0.001}}: a
    # SASRec row is a window with a prediction at every step, a towers or dnn row one prediction.
    per_model: dict = dataclasses.field(default_factory=dict)
    # Differentially private training (off by default): see DPConfig. One setting for every model.
    privacy: DPConfig = dataclasses.field(default_factory=DPConfig)

    def for_model(self, model: str) -> "TrainConfig":
        """The settings ``model`` trains with: ``per_model[model]``'s values in place of the shared
        ones (the one place they are resolved; the model spec, training and MLflow read this)."""
        if model not in MODEL_NAMES:
            raise ConfigError(f"train.models: unknown model {model!r} (known: {', '.join(MODEL_NAMES)})")
        return dataclasses.replace(self, **self.per_model.get(model, {}), per_model={})

    def validate(self) -> None:
        """Checks model names, the per-model keys and every model's effective values, naming the key
        as it was written (``train.x`` or ``train.per_model.<model>.x``)."""
        if not self.models:
            raise ConfigError("train.models: name at least one model")
        for model in [*self.models, *self.per_model]:
            if model not in MODEL_NAMES:
                where = "train.per_model" if model in self.per_model else "train.models"
                raise ConfigError(f"{where}: unknown model {model!r} (known: {', '.join(MODEL_NAMES)})")
        hints = typing.get_type_hints(TrainConfig)
        for model, values in self.per_model.items():
            key = f"train.per_model.{model}"
            if not isinstance(values, dict):
                raise ConfigError(f"{key}: expected a mapping of train settings, got {values!r}")
            for name, value in values.items():
                if name not in hints or name in SHARED_ONLY:
                    raise ConfigError(f"{key}.{name}: not a per-model train setting (known: "
                                      f"{', '.join(sorted(set(hints) - set(SHARED_ONLY)))})")
                values[name] = _check_type(f"{key}.{name}", value, hints[name])
        for model in dict.fromkeys([None, *self.models, *self.per_model]):
            settings = self if model is None else self.for_model(model)
            own = {} if model is None else self.per_model.get(model, {})
            name = lambda key: f"train.per_model.{model}.{key}" if key in own else f"train.{key}"
            for key in ("num_proc", "epochs", "batch_size", "embedding_dim", "learning_rate", "num_layers",
                        "num_heads", "num_sampled", "negatives", "validation_users"):
                if getattr(settings, key) <= 0:
                    raise ConfigError(f"{name(key)}: must be > 0, got {getattr(settings, key)!r}")
            if settings.ignored_weight < 0:
                raise ConfigError(f"{name('ignored_weight')}: must be >= 0 (0: off), got {settings.ignored_weight!r}")
            if settings.ignored_weight > 0 and model is not None and MODEL_EXAMPLES[model] != TRAIN_BASKETS:
                raise ConfigError(f"{name('ignored_weight')}: only next-basket models (train_baskets) read "
                                  f"shown-and-ignored items, and {model} is not one")
            if not 0 <= settings.dropout < 1:
                raise ConfigError(f"{name('dropout')}: must be in [0, 1), got {settings.dropout!r}")
            if settings.early_stopping_patience < 0:
                raise ConfigError(f"{name('early_stopping_patience')}: must be >= 0, "
                                  f"got {settings.early_stopping_patience!r}")
            for key, allowed in (("softmax", ("full", "sampled")), ("sampler", ("log_uniform", "popularity"))):
                if getattr(settings, key) not in allowed:
                    raise ConfigError(f"{name(key)}: {getattr(settings, key)!r} is not one of {', '.join(allowed)}")
            if not settings.hidden_units or any(not isinstance(u, int) or u <= 0 for u in settings.hidden_units):
                raise ConfigError(f"{name('hidden_units')}: expected a list of positive ints, got {settings.hidden_units!r}")
            if self.privacy.enabled and settings.softmax == "sampled" and settings.sampler == "popularity":
                # The popularity sampler's per-item counts come from the training data with no noise.
                raise ConfigError(f"{name('sampler')}: train.privacy is on and the popularity sampler reads "
                                  "per-item training counts, which are not private: use log_uniform")
        self.privacy.validate()

    def describe(self, model: str) -> str:
        """One line of the settings ``model`` trains with, its own (per_model) values marked with *."""
        settings, own = self.for_model(model), self.per_model.get(model, {})
        shown = ("epochs", "batch_size", "learning_rate", "embedding_dim", "softmax", "sampler", "num_sampled",
                 "early_stopping_patience", "warm_start")
        return f"{model}: " + ", ".join(f"{key}={getattr(settings, key)}{'*' if key in own else ''}" for key in shown)


# Train settings that are one for the whole run, never per model.
SHARED_ONLY = ("models", "num_proc", "per_model", "privacy")


@dataclasses.dataclass
class TrackingConfig:
    # MLflow tracking URI; null: a SQLite store under paths.checkpoints (git-ignored). On Databricks: "databricks".
    uri: Optional[str] = None
    experiment: str = "recspark"
    # Registered model name; null: recspark-<dataset>-<model>. With paths.catalog a name without dots
    # becomes <catalog>.<schema>.<name, - as _> (Unity Catalog's registry wants three-level names).
    registered_model: Optional[str] = None
    # MLflow model registry URI; null: the tracking URI's own. Databricks with Unity Catalog: databricks-uc.
    registry_uri: Optional[str] = None


@dataclasses.dataclass
class EvaluateConfig:
    k: int = 10
    # Remove items the user already interacted with from the ranking (right for films, wrong for
    # groceries, where re-buying is the norm).
    exclude_seen: bool = False
    # The baselines ranked beside the learned models (recspark.constants.BASELINES). The default run
    # keeps the cheap ones a shop compares against; make compare (conf/compare.yaml) adds the item
    # co-occurrence, recent-popularity and ALS baselines (ALS's grid is most of their cost). The re-buy
    # baselines (repeat_purchase, tifu_knn) are left out where seen items are excluded.
    baselines: list = dataclasses.field(default_factory=lambda: ["most_popular", "repeat_purchase", "tifu_knn"])
    # Spark MLlib ALS baseline (implicit feedback), run on the same split.
    als_rank: int = 32
    als_reg_param: float = 0.05
    als_max_iter: int = 10
    als_alpha: float = 10.0
    # ALS rank and regularisation are chosen on the validation split from these grids.
    als_ranks: list = dataclasses.field(default_factory=lambda: [16, 64])
    als_reg_params: list = dataclasses.field(default_factory=lambda: [0.01, 0.1])
    # The recent-window popularity baseline counts the training period's last recent_days days.
    recent_days: float = 30.0
    # Item-item co-occurrence baseline: pairs of training events at most cooc_window steps apart in a
    # user's sequence; each item keeps its cooc_neighbours strongest neighbours; a user's candidates
    # are the neighbours of the last cooc_recent_items distinct items of their history.
    cooc_window: int = 10
    cooc_neighbours: int = 50
    cooc_recent_items: int = 10
    # TIFU-KNN (re-buy baseline beside "buy again"): the grid chosen on validation. A vector setting is
    # [group_count, within-group decay, group decay]; the default is the published Complete Journey
    # setting validation chose (2026-12-01; each setting costs a pass over the baskets and a neighbour
    # join), make compare adds the other published one. Alphas: validation chose 0.8 in every Complete
    # Journey run on the time split (grids of 2 to 12 points, results/completejourney-2026120*/; 0.1:
    # NDCG@10 0.337 against 0.427 at 0.8, results/completejourney-20261201), so the default is that one
    # point, and a grid of one point skips the validation pass (about 2 of evaluate's 5 minutes);
    # make compare tunes 0.1, 0.5, 0.8 and 1.0. tifu_similarity_items: null, the whole user vector
    # enters the cosine similarity; n, each user's n heaviest items (bounds the pair join for very
    # active users).
    tifu_vector_settings: list = dataclasses.field(default_factory=lambda: [[7, 0.9, 0.9]])
    tifu_neighbours: list = dataclasses.field(default_factory=lambda: [100])
    tifu_alphas: list = dataclasses.field(default_factory=lambda: [0.8])
    tifu_similarity_items: Optional[int] = None
    # Cross-validation for hyper-parameter choice: cv_folds folds over "users" or rolling "time" windows.
    # Off by default (cv_folds x the grid's ALS fits); when on, it chooses the ALS parameters.
    cross_validate: bool = False
    cv_folds: int = 3
    cv_scheme: str = "users"
    # null: full ranking over every item (the default); n: rank each relevant item against n sampled
    # negatives instead, labelled "sampled" in every output.
    sampled_negatives: Optional[int] = None


@dataclasses.dataclass
class ScoreConfig:
    # The model that scores everyone; null: the first of train.models.
    model: Optional[str] = None
    k: int = 10
    # Users scored together on a Python worker (its memory: batch_size x item_block scores).
    batch_size: int = 512
    # Items per block of the blocked top-K (recspark.scoring.ITEM_BLOCK).
    item_block: int = 4096
    # The run the recommendations are written as (the table's partition; a re-run replaces it);
    # null: the scoring model's training run id.
    run_id: Optional[str] = None
    # Runs kept in the recommendations table (the latest by generated_at); 0 keeps every run.
    keep_runs: int = 10
    # Confidence = P(bought in the next period), an isotonic map fitted on the validation queries
    # (recspark.calibration) and stored with the model; false: the raw softmax share.
    calibrate: bool = True
    # Validation (and test, for the ECE) users the calibration is fitted (measured) on.
    calibration_users: int = 20_000
    # Recommendations whose confidence is below this are dropped (a list may then be shorter than k).
    min_confidence: float = 0.0
    # Business rules (gold item_features category): never recommend these categories; when not
    # empty, recommend only these. Items with stock = 0 are never recommended either way.
    exclude_categories: list = dataclasses.field(default_factory=list)
    include_categories: list = dataclasses.field(default_factory=list)
    # Neighbours per item in the similar_items table (cosine of the item vectors; recspark.vectors).
    similar_k: int = 20


# Responses a feedback row may carry besides "impression" (recspark.feedback).
FEEDBACK_RESPONSES = ("click", "cart", "purchase", "rate", "dismiss")
LOOP_VARIANTS = ("warm", "frozen", "full", "warm_ignored")


@dataclasses.dataclass
class FeedbackConfig:
    # The user's feedback files on served lists (CSV with header, JSON lines, Parquet or Delta; columns
    # feedback_id?, user_id, item_id, run_id, response, event_ts, rank?, quantity?, price?, session_id?;
    # dataset.columns.feedback maps other names); null: no feedback is ingested.
    path: Optional[str] = None
    # A dismissed item is kept out of that user's lists for this many days after the dismissal; 0: never.
    dismiss_days: float = 30.0
    # "Now" for the dismissal window (ISO timestamp); null: the wall clock. The replay sets it per cycle.
    as_of: Optional[str] = None
    # K of the served-list metrics (click-through and conversion among the top K of each list), and
    # of the shown-and-ignored items a training basket carries (the top K of the list before it).
    k: int = 10
    # A list's shown-and-ignored items are negatives of its user's baskets for this many days after
    # it was shown (the next list replaces them sooner): train.ignored_weight.
    ignored_days: float = 7.0


@dataclasses.dataclass
class LoopConfig:
    # jobs/loop.py (make loop): the last `cycles` x `cycle_days` days are held back and revealed one
    # cycle at a time as responses to the lists served before them.
    cycles: int = 4
    cycle_days: float = 7.0
    # Epochs of the first model (trained once, before the first cycle); null: train.epochs of the model.
    initial_epochs: Optional[int] = None
    # Epochs of each cycle's warm-started training.
    epochs: int = 1
    # Epochs of each cycle's retrain from scratch (the "full" reference); null: initial_epochs.
    full_epochs: Optional[int] = None
    # The variants compared: warm (warm start every cycle, the served one, whose lists collect the
    # feedback), frozen (the first model, never retrained), full (retrained from scratch every cycle).
    # warm_ignored (optional): warm, with the shown-and-ignored items as negatives (ignored_weight).
    variants: list = dataclasses.field(default_factory=lambda: ["warm", "frozen", "full"])
    # train.ignored_weight of the warm_ignored variant.
    ignored_weight: float = 1.0


@dataclasses.dataclass
class Config:
    dataset: DatasetConfig = dataclasses.field(default_factory=DatasetConfig)
    paths: PathsConfig = dataclasses.field(default_factory=PathsConfig)
    spark: SparkConfig = dataclasses.field(default_factory=SparkConfig)
    ingest: IngestConfig = dataclasses.field(default_factory=IngestConfig)
    privacy: PrivacyConfig = dataclasses.field(default_factory=PrivacyConfig)
    prepare: PrepareConfig = dataclasses.field(default_factory=PrepareConfig)
    features: FeaturesConfig = dataclasses.field(default_factory=FeaturesConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = dataclasses.field(default_factory=EvaluateConfig)
    score: ScoreConfig = dataclasses.field(default_factory=ScoreConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
    feedback: FeedbackConfig = dataclasses.field(default_factory=FeedbackConfig)
    loop: LoopConfig = dataclasses.field(default_factory=LoopConfig)

    def validate(self) -> "Config":
        self._validate_catalog()
        if self.dataset.name not in DATASETS:
            raise ConfigError(f"dataset.name: {self.dataset.name!r} is not one of {', '.join(DATASETS)}")
        if self.dataset.name == "files" and not self.dataset.events_path:
            raise ConfigError("dataset.events_path: required when dataset.name is 'files'")
        positive = {
            "spark.shuffle_partitions": self.spark.shuffle_partitions,
            "features.max_seq_len": self.features.max_seq_len,
            "features.min_item_count": self.features.min_item_count,
            "features.max_examples_per_user": self.features.max_examples_per_user,
            "features.max_windows_per_user": self.features.max_windows_per_user,
            "features.max_baskets_per_user": self.features.max_baskets_per_user,
            "features.max_basket_items": self.features.max_basket_items,
            "features.repeat_candidates": self.features.repeat_candidates,
            "features.interest_top_n": self.features.interest_top_n,
            "features.interest_half_life_days": self.features.interest_half_life_days,
            "features.price_buckets": self.features.price_buckets,
            "features.gap_buckets": self.features.gap_buckets,
            "evaluate.k": self.evaluate.k,
            "evaluate.als_rank": self.evaluate.als_rank,
            "evaluate.als_max_iter": self.evaluate.als_max_iter,
            "evaluate.recent_days": self.evaluate.recent_days,
            "evaluate.cooc_window": self.evaluate.cooc_window,
            "evaluate.cooc_neighbours": self.evaluate.cooc_neighbours,
            "evaluate.cooc_recent_items": self.evaluate.cooc_recent_items,
            "evaluate.cv_folds": self.evaluate.cv_folds,
            "score.k": self.score.k,
            "score.batch_size": self.score.batch_size,
            "score.item_block": self.score.item_block,
            "score.calibration_users": self.score.calibration_users,
            "score.similar_k": self.score.similar_k,
            "dataset.synthetic_events": self.dataset.synthetic_events,
        }
        if self.features.target_horizon_days is not None:
            positive["features.target_horizon_days"] = self.features.target_horizon_days
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{key}: must be > 0, got {value!r}")
        if not 0.0 <= self.score.min_confidence <= 1.0:
            raise ConfigError(f"score.min_confidence: a probability in [0, 1], got {self.score.min_confidence!r}")
        if self.score.keep_runs < 0:
            raise ConfigError(f"score.keep_runs: must be >= 0 (0 keeps every run), got {self.score.keep_runs!r}")
        try:
            dt.datetime.fromisoformat(self.ingest.min_event_ts)
        except ValueError as error:
            raise ConfigError(f"ingest.min_event_ts: not an ISO date: {self.ingest.min_event_ts!r}") from error
        if self.ingest.unknown_items not in ("keep", "quarantine"):
            raise ConfigError(f"ingest.unknown_items: {self.ingest.unknown_items!r} is not one of keep, quarantine")
        if self.prepare.session_gap_minutes < 0:
            raise ConfigError(f"prepare.session_gap_minutes: must be >= 0, got {self.prepare.session_gap_minutes!r}")
        for key in ("bot_rate_multiple", "bot_max_events_per_day"):
            value = getattr(self.prepare, key)
            if value is not None and value <= 0:
                raise ConfigError(f"prepare.{key}: must be > 0 or null, got {value!r}")
        if not 0 < self.prepare.bot_percentile <= 1:
            raise ConfigError(f"prepare.bot_percentile: must be in (0, 1], got {self.prepare.bot_percentile!r}")
        self.train.validate()
        if self.score.model is not None and self.score.model not in self.train.models:
            raise ConfigError(f"score.model: {self.score.model!r} is not one of train.models {self.train.models}")
        choices = {"features.split": (self.features.split, ("sessions", "time")),
                   "evaluate.cv_scheme": (self.evaluate.cv_scheme, ("users", "time"))}
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{key}: {value!r} is not one of {', '.join(allowed)}")
        if self.evaluate.cross_validate and self.evaluate.cv_folds < 2:
            raise ConfigError(f"evaluate.cv_folds: cross-validation needs at least 2 folds, got {self.evaluate.cv_folds}")
        ev = self.evaluate
        if not ev.tifu_vector_settings or not ev.tifu_neighbours or not ev.tifu_alphas:
            raise ConfigError("evaluate.tifu_vector_settings, evaluate.tifu_neighbours, evaluate.tifu_alphas: "
                              "give at least one value each")
        for setting in ev.tifu_vector_settings:
            if (not isinstance(setting, (list, tuple)) or len(setting) != 3 or int(setting[0]) < 1
                    or not all(0 < float(d) <= 1 for d in setting[1:])):
                raise ConfigError("evaluate.tifu_vector_settings: each must be [group_count >= 1, within decay in "
                                  f"(0, 1], group decay in (0, 1]], got {setting!r}")
        if any(int(n) < 1 for n in ev.tifu_neighbours) or any(not 0 <= float(a) <= 1 for a in ev.tifu_alphas):
            raise ConfigError(f"evaluate.tifu_neighbours must be >= 1 and evaluate.tifu_alphas in [0, 1], got "
                              f"{ev.tifu_neighbours!r} / {ev.tifu_alphas!r}")
        if ev.tifu_similarity_items is not None and ev.tifu_similarity_items < 1:
            raise ConfigError(f"evaluate.tifu_similarity_items: null or >= 1, got {ev.tifu_similarity_items!r}")
        unknown = [name for name in ev.baselines if name not in BASELINES]
        if unknown or not ev.baselines:
            raise ConfigError(f"evaluate.baselines: name at least one of {', '.join(BASELINES)}; unknown {unknown}")
        if not self.evaluate.als_ranks or not self.evaluate.als_reg_params:
            raise ConfigError("evaluate.als_ranks, evaluate.als_reg_params: give at least one value each")
        if self.evaluate.sampled_negatives is not None and self.evaluate.sampled_negatives <= 0:
            raise ConfigError(f"evaluate.sampled_negatives: must be > 0 or null, got {self.evaluate.sampled_negatives!r}")
        for key in ("n_test_sessions", "n_validation_sessions", "min_item_events", "min_user_sessions"):
            if getattr(self.features, key) < 0:
                raise ConfigError(f"features.{key}: must be >= 0")
        for key in ("oov_buckets", "category_oov_buckets"):
            if getattr(self.features, key) < 1:
                raise ConfigError(f"features.{key}: must be >= 1 (1: every unknown id shares one index), "
                                  f"got {getattr(self.features, key)!r}")
        cuts = {}
        for key in ("validation_start", "test_start"):
            value = getattr(self.features, key)
            if value is not None:
                try:
                    cuts[key] = dt.datetime.fromisoformat(value)
                except ValueError as error:
                    raise ConfigError(f"features.{key}: not an ISO timestamp: {value!r}") from error
        if len(cuts) == 2 and cuts["validation_start"] > cuts["test_start"]:
            raise ConfigError(f"features.validation_start: {self.features.validation_start!r} is after "
                              f"features.test_start {self.features.test_start!r}")
        self._validate_feedback_and_loop()
        return self

    def _validate_feedback_and_loop(self) -> None:
        """feedback.* and loop.*: windows and counts positive, the as-of time ISO, variants known."""
        fb, loop = self.feedback, self.loop
        if fb.dismiss_days < 0:
            raise ConfigError(f"feedback.dismiss_days: must be >= 0 (0: dismissals exclude nothing), got {fb.dismiss_days!r}")
        if fb.ignored_days <= 0:
            raise ConfigError(f"feedback.ignored_days: must be > 0, got {fb.ignored_days!r}")
        if loop.ignored_weight <= 0:
            raise ConfigError(f"loop.ignored_weight: must be > 0, got {loop.ignored_weight!r}")
        if fb.k <= 0:
            raise ConfigError(f"feedback.k: must be > 0, got {fb.k!r}")
        if fb.as_of is not None:
            try:
                dt.datetime.fromisoformat(fb.as_of)
            except ValueError as error:
                raise ConfigError(f"feedback.as_of: not an ISO timestamp: {fb.as_of!r}") from error
        for key in ("cycles", "cycle_days", "epochs", "initial_epochs", "full_epochs"):
            value = getattr(loop, key)
            if value is not None and value <= 0:
                raise ConfigError(f"loop.{key}: must be > 0{' or null' if key.endswith('_epochs') else ''}, got {value!r}")
        unknown = [v for v in loop.variants if v not in LOOP_VARIANTS]
        if unknown or "warm" not in loop.variants or len(set(loop.variants)) != len(loop.variants):
            raise ConfigError(f"loop.variants: distinct names from {', '.join(LOOP_VARIANTS)}, 'warm' among them "
                              f"(its lists collect the feedback), got {loop.variants!r}")

    def _validate_catalog(self) -> None:
        given = {key: getattr(self.paths, key) for key in ("catalog", "schema")}
        if (given["catalog"] is None) != (given["schema"] is None):
            missing = next(key for key, value in given.items() if value is None)
            raise ConfigError(f"paths.{missing}: set paths.catalog and paths.schema together (or neither)")
        for key, value in given.items():
            if value is not None and not IDENTIFIER.fullmatch(value):
                raise ConfigError(f"paths.{key}: {value!r} is not a plain identifier (letters, digits, _)")

    # Paths derived from the configuration, in one place.
    @property
    def run_name(self) -> str:
        """The data set and its protocol: ``name`` or ``name-variant``; names gold, models and outputs."""
        return f"{self.dataset.name}-{self.dataset.variant}" if self.dataset.variant else self.dataset.name

    @property
    def uses_catalog(self) -> bool:
        """Tables are catalog tables (``paths.catalog`` / ``paths.schema``), not Delta folders."""
        return self.paths.catalog is not None

    def _catalog_table(self, *parts: str, of_run: bool) -> str:
        """``catalog.schema.<parts joined by _>``, the variant's name after the layer for a table
        of the protocol (``of_run``); an empty last part gives the pattern ``<prefix>_*`` (display)."""
        if of_run and self.dataset.variant:
            parts = (*parts[:-1], self.dataset.variant, parts[-1]) if len(parts) > 1 else (parts[0], self.dataset.variant)
        name = "_".join(parts[:-1] + ((parts[-1],) if parts[-1] else ("*",)))
        return f"{self.paths.catalog}.{self.paths.schema}.{re.sub(r'[^A-Za-z0-9_*]', '_', name)}"

    def table_path(self, layer: str, table: str) -> str:
        """Where table ``table`` of ``layer`` lives: a Delta folder under the lakehouse, or with
        ``paths.catalog`` the catalog table ``catalog.schema.<layer>_<table>`` (recspark.utils.delta
        reads and writes either). Bronze and silver belong to the data (shared by its variants), gold
        to the protocol."""
        if self.uses_catalog:
            return self._catalog_table(layer, table, of_run=layer not in ("bronze", "silver"))
        owner = self.dataset.name if layer in ("bronze", "silver") else self.run_name
        return str(Path(self.paths.lakehouse) / owner / layer / table)

    @property
    def registry_schema(self) -> Optional[str]:
        """``catalog.schema`` the registered models go to with ``paths.catalog``, else None."""
        return f"{self.paths.catalog}.{self.paths.schema}" if self.uses_catalog else None

    @property
    def outputs_dir(self) -> Path:
        """The run's folder under the lakehouse: its Delta outputs (recommendations, evaluation
        predictions) without a catalog, and its files (Petastorm's cache) either way."""
        return Path(self.paths.lakehouse) / self.run_name

    @property
    def recommendations_path(self) -> str:
        if self.uses_catalog:
            return self._catalog_table("recommendations", of_run=True)
        return str(self.outputs_dir / "recommendations")

    @property
    def predictions_path(self) -> str:
        """The evaluation stage's per-user predictions table."""
        if self.uses_catalog:
            return self._catalog_table("evaluation", "predictions", of_run=True)
        return str(self.outputs_dir / "evaluation" / "predictions")

    @property
    def reports_dir(self) -> Path:
        return Path(self.paths.reports) / self.run_name

    def model_dir(self, model: str) -> Path:
        """Where model ``model`` of this data set is checkpointed and exported: an absolute path,
        since executors (Horovod ranks, scoring UDFs) read it from their own working directories."""
        return Path(os.path.abspath(self.paths.checkpoints)) / self.run_name / model

    def _latest_refit(self, model: str, folder: str) -> Path | None:
        """``<model_dir>/<folder>`` when the train stage wrote it for the model's latest run, else None."""
        chosen = self.model_dir(model)
        try:
            same_run = (json.loads((chosen / folder / "run.json").read_text())["run_id"]
                        == json.loads((chosen / "run.json").read_text())["run_id"])
        except (FileNotFoundError, KeyError, ValueError):
            return None
        return chosen / folder if same_run else None

    def fitted_model_dir(self, model: str) -> Path:
        """The export that is tested: the refit on train + validation (``train.refit``) when the
        train stage wrote one for the model's latest run, else the model itself."""
        return self._latest_refit(model, REFIT_DIR) or self.model_dir(model)

    def served_model_dir(self, model: str) -> Path:
        """The export that serves: the refit on every period with the serving vocabulary when the
        train stage wrote one for the model's latest run, else the tested one."""
        return self._latest_refit(model, SERVE_DIR) or self.fitted_model_dir(model)

    @property
    def scoring_model(self) -> str:
        return self.score.model or self.train.models[0]

    @property
    def petastorm_cache_url(self) -> str:
        if self.paths.petastorm_cache:
            return self.paths.petastorm_cache
        return (self.outputs_dir / "_petastorm_cache").resolve().as_uri()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Returns ``value`` converted to ``annotation`` where that is lossless, else raises ConfigError."""
    hint = typing.get_origin(annotation)
    if hint in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        annotation = next(a for a in options if a is not type(None))
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = {"list": list, "dict": dict}.get(getattr(annotation, "__name__", ""), annotation)
    if annotation is int and isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError(f"{key}: expected {getattr(expected, '__name__', expected)}, got {value!r}")
    return value


def _merge(section: Any, values: dict, prefix: str) -> None:
    """Merges ``values`` into the dataclass ``section``: sections and mapping-valued keys
    (``train.per_model``, ``spark.extra``, ``dataset.columns``) key by key, so that
    ``--set train.per_model.sasrec.epochs=1`` changes that one value and keeps the rest."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(type(section))
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"unknown configuration key {path!r} (known here: {known})")
        current = getattr(section, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, path)
        elif isinstance(current, dict) and isinstance(value, dict):
            setattr(section, key, _merge_mapping(current, value))
        else:
            setattr(section, key, _check_type(path, value, hints[key]))


def _merge_mapping(current: dict, values: dict) -> dict:
    """``current`` updated by ``values``, nested mappings merged key by key (a copy)."""
    merged = dict(current)
    for key, value in values.items():
        if isinstance(merged.get(key), dict) and isinstance(value, dict):
            merged[key] = _merge_mapping(merged[key], value)
        else:
            merged[key] = value
    return merged


def _dotted_keys(tree: dict, prefix: str = "") -> list[str]:
    """``{'train': {'epochs': 1}}`` -> ``['train.epochs']``."""
    keys = []
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        keys.extend(_dotted_keys(value, path) if isinstance(value, dict) and value else [path])
    return keys


def _command_line_wins(config: "Config", file_per_model: dict, command_line: list[str]) -> list[str]:
    """A shared train setting given on the command line (``--set train.epochs=1``) replaces the
    per-model values of the same key that came from files: the command line is the last word. A
    per-model value set on the command line itself stays. Returns one notice per replaced value."""
    notices = []
    for dotted in command_line:
        parts = dotted.split(".")
        if len(parts) != 2 or parts[0] != "train" or parts[1] in SHARED_ONLY:
            continue
        key = parts[1]
        for model, values in config.train.per_model.items():
            if key in values and key in file_per_model.get(model, {}) \
                    and f"train.per_model.{model}.{key}" not in command_line:
                notices.append(f"--set train.{key}={getattr(config.train, key)!r} replaces "
                               f"train.per_model.{model}.{key}={values[key]!r} from the configuration files")
                values.pop(key)
    return notices


def parse_override(text: str) -> dict:
    """``'train.epochs=2'`` -> ``{'train': {'epochs': 2}}``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    dotted, raw = text.split("=", 1)
    keys = [k for k in dotted.strip().split(".") if k]
    if len(keys) < 2:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    tree: dict = {}
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return tree


def load_config(conf_files: list[str] | None = None, overrides: list[str] | None = None) -> Config:
    """Builds the configuration from defaults, then each YAML file in order, then each override."""
    config = Config()
    for conf_file in conf_files or []:
        path = Path(conf_file)
        if not path.is_file():
            raise ConfigError(f"configuration file not found: {conf_file}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{conf_file}: not valid YAML: {error}") from error
        try:
            _merge(config, values, "")
        except ConfigError as error:
            raise ConfigError(f"{conf_file}: {error}") from error
    file_per_model = {model: dict(values) for model, values in config.train.per_model.items()
                      if isinstance(values, dict)}
    command_line: list[str] = []
    for override in overrides or []:
        tree = parse_override(override)
        _merge(config, tree, "")
        command_line.extend(_dotted_keys(tree))
    for notice in _command_line_wins(config, file_per_model, command_line):
        print(f"config: {notice}", file=sys.stderr)
    return config.validate()


def add_config_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--conf-file", action="append", default=[], metavar="YAML",
                        help="configuration file; repeat to layer files, later ones win")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="SECTION.KEY=VALUE",
                        help="override one configuration value (repeatable)")
    return parser


def config_from_args(argv: list[str] | None = None, description: str = "") -> Config:
    """Parses a job's command line into a validated Config; exits with the key named on error."""
    parser = add_config_arguments(argparse.ArgumentParser(description=description))
    args = parser.parse_args(argv)
    try:
        return load_config(args.conf_file, args.overrides)
    except ConfigError as error:
        parser.error(str(error))
        raise  # unreachable: parser.error exits
