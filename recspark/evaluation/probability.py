"""Classification metrics for the models that output a probability per (user, item) pair (the DNN).

Protocol (a SAMPLED classification task, not a ranking over the catalogue): for every evaluation
query (one user in the validation or the test split), the positives are the query's distinct
relevant items that are in the vocabulary (label 1); each positive gets ``negatives`` items drawn
uniformly, with replacement, from the vocabulary minus the query's relevant items (label 0). A draw
is a seeded hash of (user, split, positive position, draw number, seed): the same pairs on every
re-run, computed with Spark built-ins only. The positive:negative ratio is the training ratio
(``train.negatives``) by default, because the DNN's probability is P(positive | the pair is a
positive or one of ``negatives`` uniform negatives): the numbers depend on that ratio.

The decision threshold is chosen on the validation pairs (max F1) and the test pairs are reported
at it (:func:`recspark.evaluation.classification.classification_report`).
"""
from __future__ import annotations

import json

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import constants as C
from recspark.config import Config
from recspark.evaluation.classification import LABEL, classification_report
from recspark.scoring import SEEN_IDX, require_model_inputs

# Query columns that are not model inputs and have no place on a pair.
_QUERY_ONLY = (C.RELEVANT, C.SEEN, SEEN_IDX)
_RELEVANT_POS = "_relevant_pos"  # the query's in-vocabulary relevant items, as sorted 0-based positions


def protocol_label(negatives: int, seed: int) -> str:
    """The protocol, stated wherever the numbers appear."""
    return (f"SAMPLED classification task (not full ranking): each in-vocabulary relevant item (label 1) with "
            f"{negatives} negatives (label 0) drawn uniformly with replacement from the vocabulary minus the "
            f"user's relevant items (seed {seed}); threshold = max F1 on the validation pairs")


def _vocab_range(vocab: DataFrame) -> tuple[int, int]:
    """(first item_idx, vocabulary size); the sampler needs item_idx contiguous, as gold builds it."""
    row = vocab.agg(F.min(C.ITEM_IDX).alias("lo"), F.max(C.ITEM_IDX).alias("hi"), F.count(F.lit(1)).alias("n")).first()
    if not row["n"]:
        raise ValueError("the item vocabulary is empty")
    if row["hi"] - row["lo"] + 1 != row["n"]:
        raise ValueError(f"item_idx must be contiguous: {row['n']} items span {row['lo']}..{row['hi']}")
    return int(row["lo"]), int(row["n"])


def classification_pairs(queries: DataFrame, vocab: DataFrame, negatives: int, seed: int) -> DataFrame:
    """Labelled (query, item) pairs of the module's protocol: the query's columns except
    relevant/seen, plus ``item_idx``, ``item_id`` and ``label`` (1 = relevant, 0 = sampled).

    A query row is keyed by (user_id, split). Negatives are exact uniform draws from the complement
    of the relevant positions: draw r in [0, V - R), then the r-th free position is r plus the
    number of relevant positions s_i (sorted, i from 0) with s_i - i <= r (s_i - i is the number of
    free positions below s_i).
    """
    if negatives < 1:
        raise ValueError(f"negatives must be >= 1, got {negatives}")
    first, size = _vocab_range(vocab)
    ids = F.broadcast(vocab.select(C.ITEM_ID, C.ITEM_IDX))
    keys = [C.USER_ID, C.SPLIT]
    relevant = (queries.select(*keys, F.explode(F.array_distinct(C.RELEVANT)).alias(C.ITEM_ID))
                .join(ids, C.ITEM_ID)
                .groupBy(*keys).agg(F.array_sort(F.collect_set(F.col(C.ITEM_IDX) - first)).alias(_RELEVANT_POS)))
    kept = [c for c in queries.columns if c not in _QUERY_ONLY]
    # Queries without an in-vocabulary relevant item have no positive and give no pairs.
    base = queries.select(*kept).join(relevant, keys)
    positives = base.select(*kept, _RELEVANT_POS, F.posexplode(_RELEVANT_POS).alias("_pos", "_p"))
    pairs_out = [*kept, C.ITEM_IDX, LABEL]
    positive_pairs = positives.select(*kept, (F.col("_p") + first).cast("int").alias(C.ITEM_IDX),
                                      F.lit(1).alias(LABEL))
    free = F.lit(size) - F.size(_RELEVANT_POS)
    draws = (positives.filter(free > 0)  # a query whose relevant items fill the vocabulary has no negatives
             .select(*kept, _RELEVANT_POS, "_pos", F.explode(F.sequence(F.lit(0), F.lit(negatives - 1))).alias("_draw"))
             .withColumn("_r", F.pmod(F.xxhash64(C.USER_ID, C.SPLIT, "_pos", "_draw", F.lit(seed)), free)))
    below = F.transform(_RELEVANT_POS, lambda s, i: s - i)
    position = F.col("_r") + F.size(F.filter(below, lambda d: d <= F.col("_r")))
    negative_pairs = draws.select(*kept, (position + first).cast("int").alias(C.ITEM_IDX), F.lit(0).alias(LABEL))
    return (positive_pairs.unionByName(negative_pairs).select(*pairs_out)
            .join(ids, C.ITEM_IDX).select(*kept, C.ITEM_IDX, C.ITEM_ID, LABEL))


def outputs_probabilities(config: Config, model: str) -> bool:
    """Whether trained ``model`` gives a pair probability (sigmoid of a pair logit): its class, from
    model_meta.json ``model`` (else the configured name), is the DNN or a subclass of it."""
    from recspark.models import get_model_class
    from recspark.models.dnn import DNNModel

    meta_path = config.model_dir(model) / "model_meta.json"
    name = json.loads(meta_path.read_text()).get("model", model) if meta_path.exists() else model
    try:
        return issubclass(get_model_class(name), DNNModel)
    except ValueError:
        return False


def probability_report(spark: SparkSession, config: Config, queries: DataFrame, vocab: DataFrame,
                       negatives: int | None = None) -> dict | None:
    """``{"protocol", "negatives", "models": {model: classification_report}}`` for every trained model
    that outputs probabilities; None if there is none. ``queries``: gold eval_queries (both splits);
    ``negatives`` defaults to ``train.negatives``, the ratio the DNN's probability is defined for."""
    from recspark.scoring import with_pair_probability

    models = [m for m in config.train.models if outputs_probabilities(config, m)]
    if not models:
        return None
    negatives = config.train.negatives if negatives is None else negatives
    seed = config.train.seed
    reports = {}
    for model in models:
        model_dir = str(config.model_dir(model))
        inputs = require_model_inputs(queries, model_dir, C.EVAL_QUERIES)
        # Scored once, read by several aggregates: cached so the model runs once per pair.
        scored = with_pair_probability(classification_pairs(inputs, vocab, negatives, seed), model_dir).persist()
        try:
            reports[model] = classification_report(scored.filter(F.col(C.SPLIT) == C.VALIDATION),
                                                   scored.filter(F.col(C.SPLIT) == C.TEST))
        finally:
            scored.unpersist()
    return {"protocol": protocol_label(negatives, seed), "negatives": negatives, "seed": seed, "models": reports}


def classification_lines(section: dict | None) -> list[str]:
    """report.md lines: one row per model and split (metrics at the validation threshold)."""
    if not section:
        return []
    lines = ["", f"Classification of pairs ({section['protocol']}):", "",
             "| model | split | pairs | AUC | logloss | accuracy | precision | recall | F1 | threshold |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for model, report in section["models"].items():
        for split in (C.VALIDATION, C.TEST):
            m = report[split]
            cells = [f"{m[name]:.4f}" for name in ("auc", "logloss", "accuracy", "precision", "recall", "f1")]
            lines.append("| " + " | ".join([model, split, f"{m['pairs']:,}", *cells, f"{report['threshold']:.4f}"]) + " |")
    return lines
