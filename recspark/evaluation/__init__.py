"""Ranking metrics: a plain-Python reference (``metrics``) and a distributed Spark evaluator (``ranking``)."""
