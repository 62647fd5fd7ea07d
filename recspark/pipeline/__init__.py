"""The data stages: ingest (raw -> bronze), prepare (bronze -> silver), features (silver -> gold)."""
