"""What the stores raise: an outage, or data the database refused."""

from __future__ import annotations


class StoreUnavailable(Exception):
    """The database cannot be reached; the message says why, without secrets."""


class RowsRefused(Exception):
    """The database refused the data of a batch (a value out of range, say), not an
    outage: retrying the same batch cannot succeed, smaller ones may."""
