"""Kept so that `from pgcluster import PrivatePostgres` in tests goes on working; the class
lives in devtools/pgcluster.py (shared with bench/faults.py). New code imports it from there."""

from devtools.pgcluster import PrivatePostgres

__all__ = ["PrivatePostgres"]
