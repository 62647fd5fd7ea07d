"""The user's own data: CSV, JSON lines, Parquet or a Delta table, read into the canonical raw schema.

Each of ``dataset.events_path``, ``items_path`` and ``users_path`` may be a file, a directory (read
recursively) or a glob. The format comes from the file extensions (``.csv``, ``.json``/``.jsonl``/
``.ndjson``, optionally ``.gz``/``.bz2``-compressed; ``.parquet``), or from a ``_delta_log`` (Delta).
One path holds one format: a mix, an unknown extension or nothing at all is a ``ValueError`` naming
the path, a missing path a ``FileNotFoundError``.

Output: the canonical columns the files have (names matched case-insensitively for CSV headers,
Parquet and Delta; JSON keys exactly; ``dataset.columns`` maps a canonical name to the files' own,
e.g. ``{events: {event_ts: timestamp}}``), typed as read (CSV and JSON: strings; ingest casts), plus
``source_file`` (the file's path; local files without ``file:``) and ``source_row`` (CSV: the data-row
number, header excluded; JSON lines: the 1-based line number; Parquet: the 1-based row in the file;
Delta: the 1-based row in its data file). For items and users, every other column goes into
``attributes`` (map<string,string>, null values left out), merged with an ``attributes`` column or key
of its own if there is one (a JSON object or map); for events, other columns are ignored.

A file that lacks a required column (events: user_id, item_id, event_type, event_ts; items: item_id;
users: user_id), under its canonical or its mapped name, stops the read with a ``MissingColumnError``
naming the file, the column and the columns it has, as does a file with both a mapped column and one
of the canonical name (which one to read would be a guess): no row of such a file could be accepted,
and quarantining every row would hide a naming mismatch behind row faults. (A JSON-lines file
without one JSON object is left to its rows' ``malformed JSON``.)

Row faults never stop the read and are never dropped: the row gets ``read_error`` (which ingest uses as
the quarantine reason) and ``raw_record`` (the line as it was, bad bytes shown as U+FFFD):

- CSV row with too few or too many fields: ``expected N columns, found M``;
- a line that is not valid UTF-8: ``invalid UTF-8`` (a NUL byte: ``NUL byte in line``);
- JSON line that is not a JSON object: ``malformed JSON``; one with a repeated key: ``duplicate JSON key``;
- a whole file that cannot be read (a corrupt Parquet footer; a CSV whose header is not UTF-8 text; a
  JSON-lines file without one line of UTF-8 text, e.g. UTF-16 or binary): one row for the file, with
  ``source_row`` null and ``unreadable file: <why>``; the other files of the path still load.

Blank lines are skipped (they keep their line numbers, so rows after them are still exact). Records
spanning several lines (a newline inside a quoted CSV field) are not supported: their pieces usually
have the wrong number of fields and are quarantined. A compressed text file must be intact (a corrupt
archive fails the read) and Parquet files are checked by their footers only (a file with a good footer
but corrupt pages fails the read rather than losing rows silently).
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
import urllib.parse
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from functools import reduce
from typing import Iterable, Mapping, Optional, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from delta.tables import DeltaTable
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recspark import constants as C
from recspark.config import ConfigError, DatasetConfig
from recspark.schemas import (
    EVENT_SCHEMA, FEEDBACK_SCHEMA, ITEM_SCHEMA, READ_ERROR, REQUIRED_COLUMNS, USER_SCHEMA, RawSources,
)

log = logging.getLogger(__name__)

CSV, JSON, PARQUET, DELTA = "csv", "json", "parquet", "delta"
EXTENSIONS = {".csv": CSV, ".json": JSON, ".jsonl": JSON, ".ndjson": JSON, ".parquet": PARQUET}
# Hadoop codecs that Spark's text reader undoes by extension (both are always available).
COMPRESSION = (".gz", ".bz2")

# Canonical columns per entity, without ``attributes`` (which is built, not read as is).
COLUMNS: dict[str, tuple[str, ...]] = {
    C.EVENTS: tuple(EVENT_SCHEMA),
    C.ITEMS: tuple(c for c in ITEM_SCHEMA if c != C.ATTRIBUTES),
    C.USERS: tuple(c for c in USER_SCHEMA if c != C.ATTRIBUTES),
    # Feedback files (recspark.feedback, feedback.path) are read the same way.
    C.FEEDBACK: tuple(FEEDBACK_SCHEMA),
}
WITH_ATTRIBUTES = (C.ITEMS, C.USERS)

# Internal columns; the double underscore keeps them clear of any user column.
_LINE, _FILE, _BLOCK, _ID, _POS = "__line", "__file", "__block", "__id", "__pos"
_FIRST, _BEFORE, _NAMES, _WIDTH = "__first", "__before", "__names", "__width"
_VALUES, _CORRUPT = "__values", "__corrupt"
_MAP = "map<string,string>"
_LINEAGE_SCHEMA = f"{_FILE} string, {C.SOURCE_ROW} long, {READ_ERROR} string, {C.RAW_RECORD} string"
# RFC 4180 quoting: a quote inside a quoted field is doubled (Spark's default escape is a backslash).
CSV_OPTIONS = {"escape": '"', "mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT}
# A quoted CSV field, written without alternation inside a repetition (Java's regex engine recurses
# per repetition of such a group, which overflows its stack on long fields).
_QUOTED_FIELD = r'"[^"]*(?:""[^"]*)*"'
_GLOB = re.compile(r"[*?\[\]{}]")
_GLOB_CHARS = re.compile(r"([\\*?\[\]{}])")


class MissingColumnError(ValueError):
    """A file without a column that every row of its entity needs (or with two candidates for one)."""


def read_sources(spark: SparkSession, dataset: DatasetConfig) -> RawSources:
    """Events (required), items and users (None when their path is unset) from the user's files,
    with ``dataset.columns`` (checked first) mapping the files' column names to canonical ones."""
    columns = column_mapping(dataset.columns)
    if not dataset.events_path:
        raise ValueError("dataset.events_path: required when dataset.name is 'files'")
    return RawSources(
        events=read_path(spark, dataset.events_path, C.EVENTS, columns.get(C.EVENTS)),
        items=read_path(spark, dataset.items_path, C.ITEMS, columns.get(C.ITEMS)) if dataset.items_path else None,
        users=read_path(spark, dataset.users_path, C.USERS, columns.get(C.USERS)) if dataset.users_path else None,
    )


def read_path(spark: SparkSession, path: str, entity: str, columns: Optional[Mapping[str, str]] = None) -> DataFrame:
    """One entity's file, directory, glob or Delta table in the canonical raw schema (see module doc);
    ``columns``: canonical name -> the files' name, for the columns named otherwise."""
    if entity not in COLUMNS:
        raise ValueError(f"unknown entity {entity!r}: expected one of {', '.join(COLUMNS)}")
    mapping = entity_mapping(entity, columns)
    fmt, files = resolve(spark, path)
    if fmt == DELTA:
        df = _read_delta(spark, path, entity, mapping)
    elif fmt == PARQUET:
        df = _read_parquet(spark, files, entity, mapping)
    else:
        df = _read_text(spark, files, fmt, entity, mapping)
    return _finish(df, entity)


# --- Column names: the configured mapping and the required columns ----------------------------------

def column_mapping(columns: object) -> dict[str, dict[str, str]]:
    """``dataset.columns`` checked: entity -> {canonical column: the files' column}. A ``ConfigError``
    names the key of an unknown entity or canonical column, a value that is no column name, or two
    canonical columns read from one column."""
    if not columns:
        return {}
    if not isinstance(columns, Mapping):
        raise ConfigError(f"dataset.columns: expected a mapping like {{events: {{event_ts: timestamp}}}}, "
                          f"got {columns!r}")
    mapping = {}
    for entity, names in columns.items():
        if entity not in COLUMNS:
            raise ConfigError(f"dataset.columns.{entity}: unknown entity (known: {', '.join(COLUMNS)})")
        mapping[entity] = entity_mapping(entity, names)
    return mapping


def entity_mapping(entity: str, names: object) -> dict[str, str]:
    """One entity's part of ``dataset.columns`` checked (see ``column_mapping``)."""
    where = f"dataset.columns.{entity}"
    if not names:
        return {}
    canonical = COLUMNS[entity]
    if not isinstance(names, Mapping):
        raise ConfigError(f"{where}: expected a mapping of canonical column -> your column, e.g. "
                          f"{{{canonical[-1]}: my_name}}, got {names!r}")
    mapping: dict[str, str] = {}
    for target, source in names.items():
        if target not in canonical:
            swapped = f"; did you mean {where}.{source}: {target}?" if source in canonical else ""
            raise ConfigError(f"{where}.{target}: not a canonical {entity} column (known: {', '.join(canonical)}); "
                              f"the key is the canonical name, the value your files' name{swapped}")
        if not isinstance(source, str) or not source.strip():
            raise ConfigError(f"{where}.{target}: expected the name of a column in your files, got {source!r}")
        mapping[target] = source.strip()
    readers: dict[str, str] = {}
    for target, source in mapping.items():
        if source.lower() in readers:
            raise ConfigError(f"{where}: {readers[source.lower()]} and {target} both read the column {source!r}")
        readers[source.lower()] = target
        # A column with another canonical name would then be read twice (as itself and as this one).
        other = next((c for c in canonical if c.lower() == source.lower() and c != target), None)
        if other is not None and other not in mapping:
            raise ConfigError(f"{where}.{target}: {source!r} is the canonical column {other} itself; "
                              f"map {other} to another column too, or leave {target} unmapped")
    return mapping


def _source_names(entity: str, mapping: Mapping[str, str]) -> dict[str, str]:
    """Canonical column -> the name to read it from."""
    return {column: mapping.get(column, column) for column in COLUMNS[entity]}


def _display(uri: str) -> str:
    """A listed file's URI as the path a user knows (as ``_display_path`` does for the column)."""
    return re.sub(r"^file:(//)?(?=/)", "", urllib.parse.unquote(uri))


def _column_problems(entity: str, file: str, present: Iterable[str], mapping: Mapping[str, str], *,
                     exact: bool, shown: Optional[Sequence[str]] = None) -> list[str]:
    """Why no row of ``file`` could be read right: a required column missing under the name it is read
    by, or a mapped column present beside one of the canonical name. ``present``: the file's column
    names (``exact``: compared case-sensitively, as JSON keys are); ``shown``: the names to list as
    found (default: ``present``). An optional mapped column that is absent is only logged."""
    norm = (lambda name: name) if exact else str.lower
    present = list(present)
    have = {norm(name) for name in present}
    found = ", ".join(shown if shown is not None else present) or "no columns"
    where, path = f"dataset.columns.{entity}", _display(file)
    problems = []
    for column in REQUIRED_COLUMNS[entity]:
        source = mapping.get(column, column)
        if norm(source) in have:
            continue
        if column in mapping:
            problems.append(f"{entity} file {path} has no column {source!r}, which {where}.{column} names as its "
                            f"{column} (found: {found})")
        else:
            problems.append(f"{entity} file {path} has no column {column!r} (found: {found}); "
                            f"map it with {where}.{column}")
    for column, source in mapping.items():
        if norm(source) in have and norm(column) in have and norm(column) != norm(source):
            problems.append(f"{entity} file {path} has both {source!r}, which {where}.{column} reads as {column}, "
                            f"and a column {column!r} itself: drop or rename one")
        elif norm(source) not in have and column not in REQUIRED_COLUMNS[entity]:
            log.warning("%s file %s has no column %r (%s.%s): its %s is left empty", entity, path, source, where,
                        column, column)
    return problems


def _raise_column_problems(problems: Sequence[str]) -> None:
    if problems:
        more = f"\n... and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise MissingColumnError("\n".join(problems[:5]) + more)


# --- Finding the files and their format -----------------------------------------------------------

def format_of(file: str) -> Optional[str]:
    """The format a file name announces (``csv``, ``json`` or ``parquet``), or None."""
    name = urllib.parse.unquote(file.rstrip("/").rsplit("/", 1)[-1]).lower()
    stem, ext = os.path.splitext(name)
    if ext in COMPRESSION:
        # Only text is decompressed by the reader; Parquet compresses inside the file.
        fmt = EXTENSIONS.get(os.path.splitext(stem)[1])
        return fmt if fmt in (CSV, JSON) else None
    return EXTENSIONS.get(ext)


def resolve(spark: SparkSession, path: str) -> tuple[str, list[str]]:
    """The format of ``path`` and, unless it is a Delta table, the files it stands for (URIs)."""
    is_glob = bool(_GLOB.search(path))
    # isDeltaTable looks for a _delta_log here (or in a parent: a partition folder of a table).
    if not is_glob and DeltaTable.isDeltaTable(spark, path):
        return DELTA, []
    try:
        # Spark lists the files (any file system, its glob syntax, hidden and _-files skipped) without
        # reading them: the binary-file source reads content only when the column is used.
        files = sorted(spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(path).inputFiles())
    except AnalysisException as error:
        if error.getCondition() != "PATH_NOT_FOUND":
            raise
        if is_glob:
            raise ValueError(f"{path}: no file matches this pattern") from None
        raise FileNotFoundError(f"{path}: no such file or directory") from None
    if not files:
        raise ValueError(f"{path}: no data files in it (an empty directory?)")
    formats = {file: format_of(file) for file in files}
    unknown = [urllib.parse.unquote(f) for f, fmt in formats.items() if fmt is None]
    if unknown:
        shown = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        raise ValueError(f"{path}: cannot tell the format of {shown}: expected .csv, .json, .jsonl, .ndjson "
                         f"(optionally .gz or .bz2) or .parquet files, or a Delta table")
    kinds = sorted(set(formats.values()))
    if len(kinds) > 1:
        raise ValueError(f"{path}: mixes formats ({', '.join(kinds)}); give each format its own path")
    return kinds[0], files


def _literal_path(uri: str) -> str:
    """A listed file's URI as a path Spark reads as exactly that file: Hadoop's Path takes %-escapes
    literally, so they are decoded, and glob characters are escaped so that ``a[1].csv`` is no pattern."""
    return _GLOB_CHARS.sub(r"\\\1", urllib.parse.unquote(uri))


# --- Row numbers ------------------------------------------------------------------------------------

def _tag(df: DataFrame, *columns: Column) -> DataFrame:
    """Selects ``columns`` plus each row's file, input split and scan order; frozen by a local checkpoint.

    Why this numbering: ``_metadata.row_index`` exists for Parquet only; ``zipWithIndex`` numbers rows
    in partition order, which follows file order only by accident (splits are packed largest first)
    and is unavailable under Spark Connect; ``monotonically_increasing_id`` alone encodes partition
    and position, not line numbers. But it is exact *within* an input split, which one task reads in
    order: a row's index in its file is (rows in the file's earlier splits, by byte offset) + (its id -
    the split's smallest id). Only one small row per split (~128 MB) goes to the driver, and nothing
    depends on how splits are packed into partitions, so this scales to any file size or count.

    The ids must come from one scan: two scans of the same files can split and pack them differently
    (the split size follows the cluster's parallelism, which autoscaling changes), and ids from one
    would then be matched against counts from the other. The lazy local checkpoint fixes the scan's
    partitions when this is called and keeps the first computation, which the survey job makes; the
    later read uses the same rows and ids, and the files are read once in all.
    """
    tagged = df.select(
        *columns,
        # The hidden file-metadata column (unlike input_file_name()) also works on Unity Catalog.
        F.col("_metadata.file_path").alias(_FILE),
        F.col("_metadata.file_block_start").alias(_BLOCK),
        F.monotonically_increasing_id().alias(_ID),
    )
    return tagged.localCheckpoint(eager=False)


def _split_offsets(splits: Iterable[Row]) -> dict[tuple[str, int], tuple[int, int]]:
    """(file, split start) -> (the split's smallest id, rows of the file before the split)."""
    by_file: dict[str, list[Row]] = defaultdict(list)
    for split in splits:
        by_file[split[_FILE]].append(split)
    offsets = {}
    for file, parts in by_file.items():
        before = 0
        for split in sorted(parts, key=lambda s: s[_BLOCK]):
            offsets[(file, split[_BLOCK])] = (split[_FIRST], before)
            before += split["n"]
    return offsets


def _numbered(spark: SparkSession, tagged: DataFrame, offsets: dict[tuple[str, int], tuple[int, int]],
              per_file: Optional[dict[str, tuple]] = None, per_file_schema: str = "") -> DataFrame:
    """``tagged`` with ``_POS``, each row's 0-based index in its file, and the ``per_file`` columns.

    Files missing from ``per_file`` (when given) are left out: the caller reports them as unreadable.
    """
    rows = [(file, block, first, before, *(per_file[file] if per_file is not None else ()))
            for (file, block), (first, before) in offsets.items() if per_file is None or file in per_file]
    schema = f"{_FILE} string, {_BLOCK} long, {_FIRST} long, {_BEFORE} long" + per_file_schema
    table = spark.createDataFrame(rows, schema)
    return (
        tagged.join(F.broadcast(table), [_FILE, _BLOCK])
        .withColumn(_POS, F.col(_BEFORE) + F.col(_ID) - F.col(_FIRST))
        .drop(_BLOCK, _ID, _FIRST, _BEFORE)
    )


# --- CSV and JSON lines -----------------------------------------------------------------------------

def _is_text(line: Column) -> Column:
    # Spark's text reader keeps a line's bytes as they are, so invalid UTF-8 is still detectable.
    return F.is_valid_utf8(line) & ~line.contains("\u0000")


def _text_error(line: Column) -> Column:
    return F.when(~F.is_valid_utf8(line), F.lit("invalid UTF-8")).when(
        line.contains("\u0000"), F.lit("NUL byte in line"))


def _read_text(spark: SparkSession, files: Sequence[str], fmt: str, entity: str,
               mapping: Mapping[str, str]) -> DataFrame:
    """CSV with a header, or JSON lines, read as lines so that every line keeps its number and every
    fault its text (Spark's CSV and JSON readers report neither)."""
    tagged = _tag(spark.read.text([_literal_path(f) for f in files]), F.col("value").alias(_LINE))
    line = F.col(_LINE)
    # The keys looked for: the names columns are read by, and the canonical names (to spot a clash).
    known = tuple(dict.fromkeys([*_source_names(entity, mapping).values(), *COLUMNS[entity], C.ATTRIBUTES]))
    survey = [
        F.min(_ID).alias(_FIRST),
        F.count(F.lit(1)).alias("n"),
        F.sum(_is_text(line).cast("long")).alias("n_text"),
        # The first line of the split at offset 0 is the file's first line (a CSV header).
        # (Bad bytes become U+FFFD on the way to the driver.)
        F.min_by(F.struct(line.alias("text"), _is_text(line).alias("ok")), F.col(_ID)).alias("head"),
    ]
    if fmt == JSON:
        # Which canonical keys occur, so that only the columns the files have are returned
        # (json_object_keys lists the top-level keys without building the values).
        keys = F.array_sort(F.array_intersect(F.json_object_keys(line), F.array(*map(F.lit, known))))
        survey.append(F.array_distinct(F.flatten(F.collect_set(keys))).alias("keys"))
        survey.append(F.count(F.json_object_keys(line)).alias("objects"))  # lines that are JSON objects
    # The one survey job: one row per input split, and it computes the local checkpoint.
    splits = tagged.groupBy(_FILE, _BLOCK).agg(*survey).collect()
    offsets = _split_offsets(splits)
    by_file: dict[str, list[Row]] = defaultdict(list)
    for split in splits:
        by_file[split[_FILE]].append(split)
    if fmt == CSV:
        return _parse_csv(spark, tagged, offsets, by_file, entity, mapping)
    return _parse_json(spark, tagged, offsets, by_file, entity, mapping)


def _parse_csv(spark: SparkSession, tagged: DataFrame, offsets: dict, by_file: dict[str, list[Row]],
               entity: str, mapping: Mapping[str, str]) -> DataFrame:
    headers: dict[str, tuple] = {}
    problems: dict[str, str] = {}
    column_problems: list[str] = []
    # Header names matching these case-insensitively are spelt like them (the names values are read by).
    spelling = (*_source_names(entity, mapping).values(), C.ATTRIBUTES)
    for file, splits in sorted(by_file.items()):
        head = min(splits, key=lambda s: s[_BLOCK])["head"]
        names, problem = _csv_header(head["text"], head["ok"], spelling)
        if problem:
            problems[file] = problem
        else:
            headers[file] = (names, len(names))
            column_problems += _column_problems(entity, file, names, mapping, exact=False)
    _raise_column_problems(column_problems)
    if not headers:
        return _union(_unreadable(spark, problems), _no_rows(spark))
    lines = _numbered(spark, tagged, offsets, headers, f", {_NAMES} array<string>, {_WIDTH} int")
    line = F.col(_LINE)
    # Line 0 is the header, so the 0-based line index is the 1-based data-row number.
    lines = lines.where((F.col(_POS) > 0) & (F.trim(line) != ""))
    widths = sorted({width for _, width in headers.values()})
    # One parser per header width (usually one): from_csv needs a fixed schema, and its corrupt-record
    # column flags exactly the rows whose field count differs from it.
    parsed = {w: F.when(F.col(_WIDTH) == w, F.from_csv(line, _csv_schema(w), CSV_OPTIONS)) for w in widths}
    lines = lines.select("*", *[p.alias(f"__p{w}") for w, p in parsed.items()])
    width = F.col(_WIDTH)
    fields = F.coalesce(*[F.when(width == w, F.array(*[F.col(f"__p{w}._c{i}") for i in range(w)])) for w in widths])
    corrupt = F.coalesce(*[F.col(f"__p{w}.{_CORRUPT}") for w in widths])
    # The count for the message: commas outside quoted fields, plus one.
    found = F.size(F.split(F.regexp_replace(line, _QUOTED_FIELD, ""), ",", -1))
    expected = F.concat(F.lit("expected "), width.cast("string"), F.lit(" columns"))
    read_error = _text_error(line).when(
        corrupt.isNotNull(),
        F.when(found != width, F.concat(expected, F.lit(", found "), found.cast("string")))
        .otherwise(F.concat(F.lit("malformed CSV row ("), expected, F.lit(")"))),
    )
    present = {name for names, _ in headers.values() for name in names}
    rows = lines.select(
        F.map_from_arrays(F.col(_NAMES), fields).alias(_VALUES),
        _FILE,
        F.col(_POS).alias(C.SOURCE_ROW),
        read_error.alias(READ_ERROR),
        F.when(read_error.isNotNull(), F.make_valid_utf8(line)).alias(C.RAW_RECORD),
    )
    return _union(_from_values(rows, entity, present, mapping), _unreadable(spark, problems))


def _csv_schema(width: int) -> str:
    return ", ".join([f"_c{i} string" for i in range(width)] + [f"{_CORRUPT} string"])


def _csv_header(text: Optional[str], is_text: bool, canonical: Sequence[str]) -> tuple[list[str], Optional[str]]:
    """A header's column names (those matching one of ``canonical`` case-insensitively spelt like it),
    or the reason the file cannot be read."""
    if text is None or not is_text:
        return [], "the header is not UTF-8 text (another encoding, or not a text file)"
    text = text.removeprefix("\ufeff")  # the byte-order mark that Excel writes
    if not text.strip():
        return [], "the header line is blank"
    try:
        raw = next(csv.reader([text]))
    except csv.Error as error:
        return [], f"the header is not CSV: {error}"
    lower = {c.lower(): c for c in canonical}
    # Named like Spark's CSV reader names unnamed columns.
    names = [lower.get(n.strip().lower(), n.strip()) or f"_c{i}" for i, n in enumerate(raw)]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        return [], f"the header repeats {', '.join(repeated)}"
    return names, None


def _parse_json(spark: SparkSession, tagged: DataFrame, offsets: dict, by_file: dict[str, list[Row]],
                entity: str, mapping: Mapping[str, str]) -> DataFrame:
    readable = {file: () for file, splits in by_file.items() if sum(s["n_text"] for s in splits) > 0}
    # A file without one line of UTF-8 text (UTF-16, binary) is one fault, not one per line.
    problems = {file: "no line is UTF-8 text (another encoding, or not a text file)"
                for file in by_file if file not in readable}
    column_problems: list[str] = []
    for file in sorted(readable):
        splits = by_file[file]
        if sum(s["objects"] for s in splits) == 0:
            continue  # not one JSON object: every line is quarantined as malformed JSON
        keys = {key for split in splits for key in split["keys"]}
        head = min(splits, key=lambda s: s[_BLOCK])["head"]
        column_problems += _column_problems(entity, file, keys, mapping, exact=True,
                                            shown=_first_keys(head["text"], keys))
    _raise_column_problems(column_problems)
    if not readable:
        return _union(_unreadable(spark, problems), _no_rows(spark))
    lines = _numbered(spark, tagged, offsets, readable)
    line = F.col(_LINE)
    lines = lines.where(F.trim(line) != "")
    # A byte-order mark before the first object is no part of the JSON.
    body = F.when((F.col(_POS) == 0) & line.startswith("\ufeff"), F.expr(f"substr({_LINE}, 2)")).otherwise(line)
    # A map keeps every key, extra attributes included; non-string values arrive as their JSON text.
    lines = lines.withColumn(_VALUES, F.from_json(body, _MAP))
    keys = F.map_keys(F.col(_VALUES))
    read_error = (
        _text_error(line)
        .when(F.col(_VALUES).isNull(), F.lit("malformed JSON"))
        .when(F.size(keys) != F.size(F.array_distinct(keys)), F.lit("duplicate JSON key"))
    )
    rows = lines.select(
        _VALUES,
        _FILE,
        (F.col(_POS) + 1).alias(C.SOURCE_ROW),
        read_error.alias(READ_ERROR),
        F.when(read_error.isNotNull(), F.make_valid_utf8(line)).alias(C.RAW_RECORD),
    )
    present = {key for splits in by_file.values() for split in splits for key in split["keys"]}
    return _union(_from_values(rows, entity, present, mapping), _unreadable(spark, problems))


def _first_keys(text: Optional[str], keys: set[str]) -> list[str]:
    """The keys of a JSON-lines file's first line, to show what the file has (else the known ones found)."""
    try:
        record = json.loads((text or "").removeprefix("\ufeff"))
    except ValueError:
        record = None
    return list(record) if isinstance(record, dict) else sorted(keys)


def _from_values(rows: DataFrame, entity: str, present: set[str], mapping: Mapping[str, str]) -> DataFrame:
    """Canonical columns and attributes from each row's name -> text map (``_VALUES``)."""
    values = F.col(_VALUES)
    sources = _source_names(entity, mapping)
    columns = [values[source].alias(name) for name, source in sources.items() if source in present]
    if entity in WITH_ATTRIBUTES:
        known = [*sources.values(), C.ATTRIBUTES]
        extras = F.map_filter(values, lambda k, v: ~k.isin(*known))
        nested = values[C.ATTRIBUTES] if C.ATTRIBUTES in present else None
        # A faulty row's map may repeat keys, which map_concat refuses: its fields mean nothing anyway.
        columns.append(F.when(F.col(READ_ERROR).isNull(), _attributes(extras, nested)).alias(C.ATTRIBUTES))
    return rows.select(*columns, _FILE, C.SOURCE_ROW, READ_ERROR, C.RAW_RECORD)


# --- Parquet and Delta -------------------------------------------------------------------------------

def _read_parquet(spark: SparkSession, files: Sequence[str], entity: str, mapping: Mapping[str, str]) -> DataFrame:
    """Parquet files; a file whose footer cannot be read becomes one unreadable-file row.

    Footers are read on the driver (a few KB each) before Spark plans the read, because one bad file
    fails Spark's whole scan and ``ignoreCorruptFiles`` would drop it silently. Files are grouped by
    schema and each group read on its own, so that files disagreeing on a column's type still load.
    """
    groups: dict[tuple, list[str]] = defaultdict(list)
    problems: dict[str, str] = {}
    for file, schema_or_problem in _parquet_footers(files).items():
        if isinstance(schema_or_problem, str):
            problems[file] = schema_or_problem
        else:
            groups[schema_or_problem].append(file)
    frames, column_problems = [], []
    for group in groups.values():
        df = spark.read.parquet(*[_literal_path(f) for f in group])
        column_problems += [problem for file in sorted(group)
                            for problem in _column_problems(entity, file, df.columns, mapping, exact=False)]
        lineage = [F.col("_metadata.file_path").alias(_FILE), (F.col("_metadata.row_index") + 1).alias(C.SOURCE_ROW)]
        frames.append(_from_columns(df.select("*", *lineage), df.columns, entity, mapping))
    _raise_column_problems(column_problems)
    return _union(*_align_types(frames), _unreadable(spark, problems))


def _parquet_footers(files: Sequence[str]) -> dict[str, object]:
    """Each file's schema (as a hashable key) or the reason its footer cannot be read."""
    try:
        filesystem, _ = pafs.FileSystem.from_uri(files[0])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as error:
        # A file system pyarrow cannot open (e.g. dbfs:): Spark reads everything unchecked.
        log.warning("cannot check Parquet footers on %s (%s); reading without the check", files[0], error)
        return {file: () for file in files}

    def footer(file: str) -> object:
        try:
            schema = pq.read_schema(pafs.FileSystem.from_uri(file)[1], filesystem=filesystem)
            return tuple((field.name, str(field.type)) for field in schema)
        except (pa.ArrowException, OSError) as error:
            return _short(error)

    # Threads, because on an object store each footer is a round trip (pyarrow releases the GIL).
    with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
        return dict(zip(files, pool.map(footer, files)))


def _read_delta(spark: SparkSession, path: str, entity: str, mapping: Mapping[str, str]) -> DataFrame:
    """A Delta table's current version; ``source_row`` is the row's 1-based index in its data file
    (Delta exposes no ``_metadata.row_index``, so rows are numbered like text lines)."""
    df = spark.read.format("delta").load(path)
    names = df.columns
    _raise_column_problems(_column_problems(entity, path, names, mapping, exact=False))
    tagged = _tag(df, *[_column(name) for name in names])
    splits = tagged.groupBy(_FILE, _BLOCK).agg(F.min(_ID).alias(_FIRST), F.count(F.lit(1)).alias("n")).collect()
    rows = _numbered(spark, tagged, _split_offsets(splits)).withColumn(C.SOURCE_ROW, F.col(_POS) + 1)
    return _from_columns(rows, names, entity, mapping)


def _from_columns(df: DataFrame, names: Sequence[str], entity: str, mapping: Mapping[str, str]) -> DataFrame:
    """Canonical columns (matched case-insensitively, types kept) and attributes from typed columns."""
    canonical = {source.lower(): column for column, source in _source_names(entity, mapping).items()}
    chosen: dict[str, str] = {}
    for name in names:
        target = canonical.get(name.strip().lower())
        if target and target not in chosen:
            chosen[target] = name
    columns = [_column(name).alias(target) for target, name in chosen.items()]
    if entity in WITH_ATTRIBUTES:
        rest = [n for n in names if n not in chosen.values() and n.strip().lower() != C.ATTRIBUTES]
        nested_name = next((n for n in names if n.strip().lower() == C.ATTRIBUTES), None)
        types = {f.name: f.dataType for f in df.schema}
        extras = F.create_map(*[x for n in rest for x in (F.lit(n), _as_text(_column(n), types[n]))]) if rest \
            else F.create_map().cast(_MAP)
        nested = _as_text(_column(nested_name), types[nested_name]) if nested_name else None
        columns.append(_attributes(extras, nested).alias(C.ATTRIBUTES))
    return df.select(
        *columns, _FILE, C.SOURCE_ROW,
        F.lit(None).cast("string").alias(READ_ERROR), F.lit(None).cast("string").alias(C.RAW_RECORD),
    )


def _column(name: str) -> Column:
    """A column by its exact name, even one with dots, spaces or backticks in it."""
    return F.col("`" + name.replace("`", "``") + "`")


def _as_text(column: Column, data_type: T.DataType) -> Column:
    # Nested values as JSON text, so an attribute that is a list or a struct stays readable.
    if isinstance(data_type, (T.StructType, T.ArrayType, T.MapType)):
        return F.to_json(column)
    return column.cast("string")


# --- Shared -----------------------------------------------------------------------------------------

def _attributes(extras: Column, nested: Optional[Column]) -> Column:
    """The free attributes: ``extras`` (other columns) plus the entries of an ``attributes`` value
    that is a JSON object; an ``attributes`` value that is not one is kept as the key "attributes".
    Other columns win over nested entries of the same name; null values are left out."""
    extras = F.map_filter(extras, lambda k, v: v.isNotNull())
    if nested is None:
        return extras
    parsed = F.from_json(nested, _MAP)
    inner = F.map_filter(parsed, lambda k, v: v.isNotNull() & ~F.array_contains(F.map_keys(extras), k))
    return (
        F.when(nested.isNull(), extras)
        .when(parsed.isNull(), F.map_concat(extras, F.create_map(F.lit(C.ATTRIBUTES), nested)))
        .otherwise(F.map_concat(inner, extras))
    )


def _unreadable(spark: SparkSession, problems: dict[str, str]) -> Optional[DataFrame]:
    """One quarantine-bound row per unreadable file: no row number, the reason, no raw record."""
    if not problems:
        return None
    rows = [(file, None, f"unreadable file: {reason}", None) for file, reason in sorted(problems.items())]
    return spark.createDataFrame(rows, _LINEAGE_SCHEMA)


def _no_rows(spark: SparkSession) -> DataFrame:
    """No rows, with the lineage columns: the output of a path whose files are all empty."""
    return spark.createDataFrame([], _LINEAGE_SCHEMA)


def _short(error: Exception) -> str:
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= 200 else text[:197] + "..."


def _align_types(frames: list[DataFrame]) -> list[DataFrame]:
    """Casts to string every column whose type differs between ``frames`` (ingest casts it anyway)."""
    types: dict[str, set[str]] = defaultdict(set)
    for df in frames:
        for field in df.schema:
            types[field.name].add(field.dataType.simpleString())
    mixed = {name for name, kinds in types.items() if len(kinds) > 1}
    if not mixed:
        return frames
    return [df.select(*[_as_text(_column(f.name), f.dataType).alias(f.name) if f.name in mixed else _column(f.name)
                        for f in df.schema]) for df in frames]


def _union(*frames: Optional[DataFrame]) -> DataFrame:
    present = [df for df in frames if df is not None]
    return reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True), present)


def _display_path(uri: Column) -> Column:
    """``file:/data/a%20b.csv`` -> ``/data/a b.csv``; other schemes keep theirs, %-escapes decoded."""
    # url_decode also turns '+' into a space (form encoding); in a path '+' is itself.
    decoded = F.coalesce(F.try_url_decode(F.replace(uri, F.lit("+"), F.lit("%2B"))), uri)
    return F.regexp_replace(decoded, r"^file:(//)?(?=/)", "")


def _finish(df: DataFrame, entity: str) -> DataFrame:
    """The output columns in a fixed order: canonical ones present, attributes, lineage, faults."""
    present = [c for c in COLUMNS[entity] if c in df.columns]
    attributes = [C.ATTRIBUTES] if entity in WITH_ATTRIBUTES and C.ATTRIBUTES in df.columns else []
    return df.select(
        *present, *attributes,
        _display_path(F.col(_FILE)).alias(C.SOURCE_FILE),
        F.col(C.SOURCE_ROW).cast("long").alias(C.SOURCE_ROW),
        READ_ERROR,
        C.RAW_RECORD,
    )
