"""Ordered, idempotent schema migrations shipped inside the package.

`db/schema.sql` in the repository is the concatenation of the Postgres files, so
`psql -f db/schema.sql` (the guide's way) and `tallygate db init` agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(dialect: str) -> list[Migration]:
    folder = resources.files("tallygate.migrations").joinpath(dialect)
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest[:-4], entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def schema_sql(dialect: str = "postgres") -> str:
    header = (
        "-- tallygate ledger schema (generated from src/tallygate/migrations/"
        f'{dialect}; safe to run twice)\n-- psql "postgres://USER:PASSWORD@HOST:PORT/DB" -f db/schema.sql\n\n'
    )
    return header + "\n".join(m.sql for m in migrations(dialect))
