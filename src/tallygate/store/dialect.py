"""What differs between the Postgres and the SQLite ledger in the SQL we write.

Postgres takes `%s` parameters, timestamps and numerics as they are and sums
numerics exactly. SQLite takes `?`, stores times as ISO 8601 text in UTC (so they
sort and compare as text) and costs as decimal text, summed exactly by `dsum`
(store/sqlite.py). Queries are built from these parts and take values as
parameters only, never formatted into the SQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal


class Dialect:
    def __init__(self, name: str, placeholder: str) -> None:
        self.name = name
        self.placeholder = placeholder

    def placeholders(self, count: int) -> str:
        """`%s, %s, ...` for a VALUES list of `count` parameters."""
        return ", ".join([self.placeholder] * count)

    def time_param(self, value: datetime | None):
        """A timestamp as this database takes it."""
        return value

    def time_value(self, value) -> datetime | None:
        """A timestamp as this database returns it (a datetime, or ISO 8601 text), as a datetime."""
        if value is None or isinstance(value, datetime):
            return value
        return datetime.fromisoformat(value.replace("Z", "+00:00"))

    def decimal_param(self, value: Decimal | None):
        return value

    def decimal_sum(self, expr: str) -> str:
        """An exact sum of a numeric (cost) column."""
        return f"sum({expr})"

    def day_expr(self, column: str) -> str:
        """The UTC day of a timestamp column as YYYY-MM-DD text."""
        return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


class SqliteDialect(Dialect):
    def time_param(self, value: datetime | None):
        if value is None:
            return None
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def decimal_param(self, value: Decimal | None):
        return None if value is None else str(value)

    def decimal_sum(self, expr: str) -> str:
        return f"dsum({expr})"

    def day_expr(self, column: str) -> str:
        return f"substr({column}, 1, 10)"


POSTGRES = Dialect("postgres", "%s")
SQLITE = SqliteDialect("sqlite", "?")
_BY_NAME = {d.name: d for d in (POSTGRES, SQLITE)}


def dialect_of(store) -> Dialect:
    """The SQL dialect of a store (`store.dialect` names it)."""
    return _BY_NAME[store.dialect]
