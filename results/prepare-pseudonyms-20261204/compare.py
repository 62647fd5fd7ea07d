"""Silver tables of two prepare runs, row for row: `compare.py LAKEHOUSE_A LAKEHOUSE_B` (the
Complete Journey silver events, items and users; each table's rows must be equal as multisets)."""
import sys

from pyspark.sql import functions as F

from recspark.session import get_spark

spark = get_spark()
a, b = sys.argv[1:3]
for table in ("events", "items", "users", "bots"):
    left = spark.read.format("delta").load(f"{a}/completejourney/silver/{table}")
    right = spark.read.format("delta").load(f"{b}/completejourney/silver/{table}")
    assert left.columns == right.columns, (table, left.columns, right.columns)
    # Set operations refuse map columns (items' and users' attributes): compared as JSON.
    as_rows = lambda df: df.select(*[F.to_json(c).alias(c) if t.startswith("map") else F.col(c) for c, t in df.dtypes])
    left, right = as_rows(left), as_rows(right)
    extra, missing = left.exceptAll(right).count(), right.exceptAll(left).count()
    print(f"silver {table}: {left.count():,} rows vs {right.count():,}; only in A {extra}, only in B {missing}")
