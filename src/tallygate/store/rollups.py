"""Hourly rollups of the ledger (`litellm_usage_hourly`) and the reads that use them.

A rollup row holds, per tenant, key ('' for none), model and UTC hour, the sums of
every ledger row the writer really added. On Postgres the writer's statement inserts the
rows and appends the sums of those it really inserted (its RETURNING rows, so a row
skipped as a duplicate of a retried batch is never counted) to `litellm_usage_rollup_delta`,
one row per group, with no index and no row shared between writers; `fold_deltas` moves
them into the hourly (and sealed daily) sums in one statement, every few seconds. On
SQLite one transaction inserts the rows and upserts the hourly sums. Readers take the
whole hours of a range from the rollups (plus the deltas not yet folded) and the partial
hours at its edges from the rows, so their totals equal summing the rows.

Postgres rollups also hold a latency histogram (LATENCY_COLUMNS): the p95 the console
shows is read from it (`latency_p95`), within a factor 2^(1/4) of the exact value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from ..metering.record import EXTRA_TOKEN_COLUMNS
from .dialect import Dialect, dialect_of

HOURLY = "litellm_usage_hourly"
# Postgres: the same sums per UTC day for the days maintenance sealed (all before
# `sealed_before`), so a month reads 30 rows a group, not 720 (seal_days below)
DAILY = "litellm_usage_daily"
SEAL_LOCK = 7301267  # advisory lock key; the same in tallygate_ledger_sealed_before() (migration 0004)
TOKEN_SUMS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    *EXTRA_TOKEN_COLUMNS,
)
# what a rollup row counts, in its column order after the key
MEASURES = ("requests", *TOKEN_SUMS, "cost_usd", "errors", "unpriced_requests", "partial_requests")
KEY = ("tenant_id", "api_key_id", "model", "hour")
DAY_KEY = ("tenant_id", "api_key_id", "model", "day")
DAY = timedelta(days=1)
# the columns a ledger row needs for its rollup (the writer's RETURNING list)
ROW_INPUTS = ("created_at", "tenant_id", "api_key_id", "model", "status", "price_source", *TOKEN_SUMS, "cost_usd")
UNPRICED_SOURCE = "unknown"  # metering/pricing.py: a model with no price
PARTIAL_SUFFIX = ":partial"  # metering/pricing.py: a part of the usage had no rate
HOUR = timedelta(hours=1)
DELTA = "litellm_usage_rollup_delta"  # Postgres: the writers' sums not yet folded (migration 0008)
FOLD_LOCK = 7301268  # pg_try_advisory_xact_lock key: one fold at a time (two would be correct, only slower)
# Latency histogram buckets (Postgres rollups): width_bucket(latency_ms, LATENCY_BOUNDS) is
# 0 below 1 ms, k in [2^((k-1)/2), 2^(k/2)) ms, 39 from 2^19 ms (8.7 minutes) up.
LATENCY_BOUNDS = tuple(2.0 ** (k / 2) for k in range(39))
LATENCY_COLUMNS = tuple(f"latency_b{k:02d}" for k in range(len(LATENCY_BOUNDS) + 1))
LATENCY_BUCKET_SQL = (
    "width_bucket(latency_ms, '{" + ",".join(repr(b) for b in LATENCY_BOUNDS) + "}'::double precision[])"
)


def sums(dialect: Dialect) -> tuple[str, ...]:
    """The columns a rollup row sums after its key: MEASURES, and on Postgres the histogram."""
    return MEASURES + LATENCY_COLUMNS if dialect.name == "postgres" else MEASURES


def hour_expr(dialect: Dialect, column: str = "created_at") -> str:
    """The UTC hour a timestamp column falls in, as the rollups store it."""
    if dialect.name == "sqlite":  # ISO 8601 text in UTC (store/dialect.py)
        return f"substr({column}, 1, 13) || ':00:00.000000Z'"
    return f"date_trunc('hour', {column}, 'UTC')"


def hour_label_expr(dialect: Dialect, column: str) -> str:
    """The UTC hour of a timestamp column as YYYY-MM-DDTHH:00 text."""
    if dialect.name == "sqlite":  # ISO 8601 text in UTC: the first 13 characters are the hour
        return f"substr({column}, 1, 13) || ':00'"
    return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:00')"


def _partial_test(dialect: Dialect) -> str:
    # `%` is doubled for psycopg, whose statements here always carry parameters
    pattern = "%%" if dialect.name == "postgres" else "%"
    return f"price_source LIKE '{pattern}{PARTIAL_SUFFIX}'"


def row_measures(dialect: Dialect) -> list[str]:
    """MEASURES of one ledger row (to be summed), as SQL over its columns."""
    return [
        "1",
        *TOKEN_SUMS,
        "cost_usd",
        "CASE WHEN status <> 'ok' THEN 1 ELSE 0 END",
        f"CASE WHEN price_source = '{UNPRICED_SOURCE}' THEN 1 ELSE 0 END",
        f"CASE WHEN {_partial_test(dialect)} THEN 1 ELSE 0 END",
    ]


def aggregate_rows_sql(dialect: Dialect, source: str, where: str = "true", period: str | None = None) -> str:
    """SELECT KEY + sums(dialect) from ledger rows in `source`, grouped by hour (or `period`)
    and ordered by the key: concurrent upserts then lock the rollup rows in one order, so two
    touching the same hours wait for each other instead of deadlocking. Postgres: each row's
    latency bucket is computed once (OFFSET 0 keeps the subquery from being folded into the
    40 histogram counts that read it)."""
    key = f"tenant_id, coalesce(api_key_id, ''), model, {period or hour_expr(dialect)}"
    totals = [
        dialect.decimal_sum(m) if name == "cost_usd" else f"sum({m})"
        for name, m in zip(MEASURES, row_measures(dialect), strict=True)
    ]
    if dialect.name != "postgres":
        return f"SELECT {key}, {', '.join(totals)} FROM {source} WHERE {where} GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
    counts = [f"count(*) FILTER (WHERE lb = {k})" for k in range(len(LATENCY_COLUMNS))]
    return (
        f"SELECT {key}, {', '.join(totals + counts)} FROM (SELECT {', '.join(ROW_INPUTS)}, {LATENCY_BUCKET_SQL} AS lb "
        f"FROM {source} WHERE {where} OFFSET 0) AS r GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
    )


def upsert_sql(dialect: Dialect, select: str, table: str = "") -> str:
    """Add the sums `select` yields (KEY + MEASURES) to the rollups (hourly, or `table`)."""
    table = table or HOURLY
    key = KEY if table == HOURLY else DAY_KEY

    def add(c: str) -> str:
        if c == "cost_usd" and dialect.name == "sqlite":
            return f"{c} = dadd(h.{c}, excluded.{c})"  # exact decimal text (store/sqlite.py)
        return f"{c} = h.{c} + excluded.{c}"

    columns = sums(dialect)
    return (
        f"INSERT INTO {table} AS h ({', '.join(key + columns)}) {select} "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {', '.join(add(c) for c in columns)}"
    )


def delta_insert_sql(source: str) -> str:
    """Postgres: append the sums of the rows in `source` (the writer's RETURNING rows, each
    with its `latency_bucket`) to the deltas, one row per group; nothing is locked but the
    new rows, so writers of the same tenant, key, model and hour never wait for each other."""
    from .dialect import POSTGRES

    totals = [f"sum({m})" for m in row_measures(POSTGRES)]
    return (
        f"INSERT INTO {DELTA} ({', '.join(KEY + MEASURES)}, latency_buckets) "
        f"SELECT tenant_id, coalesce(api_key_id, ''), model, {hour_expr(POSTGRES)}, {', '.join(totals)}, "
        f"array_agg(latency_bucket::smallint) FROM {source} GROUP BY 1, 2, 3, 4"
    )


def _fold_sql() -> str:
    """Postgres: move every delta into the hourly sums, and those of sealed days into the
    daily ones too, in one statement (DELETE ... RETURNING: each delta is moved once, even
    by two folds at a time). Run after taking the seal lock shared, so the seal bound it
    reads is the one in force (seal_days)."""
    from .dialect import POSTGRES

    keys = ", ".join(KEY)
    spread = ", ".join(f"coalesce(sum(n) FILTER (WHERE lb = {k}), 0) AS {c}" for k, c in enumerate(LATENCY_COLUMNS))
    cols = ", ".join(KEY + sums(POSTGRES))
    measures = ", ".join(f"sum({c}) AS {c}" for c in MEASURES)
    to_hourly = upsert_sql(POSTGRES, f"SELECT {cols} FROM agg ORDER BY 1, 2, 3, 4")
    day_sums = ", ".join(f"sum({c})" for c in sums(POSTGRES))
    to_daily = upsert_sql(
        POSTGRES,
        f"SELECT tenant_id, api_key_id, model, date_trunc('day', hour, 'UTC'), {day_sums} FROM agg, sealed "
        "WHERE hour < sealed.t GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
        DAILY,
    )
    return (
        # one fold at a time: another instance's under way, this one moves nothing
        f"WITH go AS (SELECT pg_try_advisory_xact_lock({FOLD_LOCK}) AS ok), "
        f"moved AS (DELETE FROM {DELTA} WHERE (SELECT ok FROM go) RETURNING *), "
        f"m AS (SELECT {keys}, {measures} FROM moved GROUP BY 1, 2, 3, 4), "
        f"b AS (SELECT {keys}, lb, count(*) AS n FROM moved, unnest(latency_buckets) AS lb GROUP BY 1, 2, 3, 4, 5), "
        f"h AS (SELECT {keys}, {spread} FROM b GROUP BY 1, 2, 3, 4), "
        f"agg AS (SELECT {cols} FROM m LEFT JOIN h USING ({keys})), "
        f"up AS ({to_hourly} RETURNING 1), "
        "sealed AS (SELECT value AS t FROM tallygate_ledger_state WHERE name = 'sealed_before'), "
        f"dy AS ({to_daily} RETURNING 1) "
        "SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM up)"
    )


async def fold_deltas(store) -> int:
    """Postgres: fold the writers' deltas into the rollups; how many deltas were moved."""
    if store.dialect != "postgres":
        return 0
    _, rows = await store.transaction([(f"SELECT pg_advisory_xact_lock_shared({SEAL_LOCK})", ()), (_fold_sql(), ())])
    return int(rows[0][0])


def floor_hour(t: datetime) -> datetime:
    t = t.astimezone(UTC)
    return t.replace(minute=0, second=0, microsecond=0)


def ceil_hour(t: datetime) -> datetime:
    f = floor_hour(t)
    return f if f == t else f + HOUR


@dataclass(frozen=True)
class Split:
    """A time range [start, end) cut into the whole hours the rollups answer for
    (`hours`, bounds None: open) and the edges read from the rows (`edges`)."""

    hours: tuple[datetime | None, datetime | None] | None
    edges: tuple[tuple[datetime, datetime | None], ...]


def split(start: datetime | None, end: datetime | None) -> Split:
    if start is None and end is None:
        return Split((None, None), ())
    if start is None:
        assert end is not None
        he = floor_hour(end)
        return Split((None, he), ((he, end),) if he < end else ())
    hs = ceil_hour(start)
    head = ((start, hs),) if start < hs else ()
    if end is None:
        return Split((hs, None), head)
    he = floor_hour(end)
    if hs >= he:  # within an hour or two partial ones: rows only
        return Split(None, ((start, end),) if start < end else ())
    head = ((start, hs),) if start < hs else ()
    tail = ((he, end),) if he < end else ()
    return Split((hs, he), head + tail)


def edge_reads(
    edges: tuple[tuple[datetime, datetime | None], ...],
) -> list[tuple[tuple[datetime, datetime] | None, list[tuple[datetime, datetime | None]]]]:
    """Each partial edge hour, read the cheaper way (Postgres): (None, [edge]) reads its rows;
    ((h, h + 1 hour), rest) reads its whole hour from the rollups less the rows of the rest
    of that hour, when the rest is the shorter part (a `--since 30d` mid-hour start reads at
    most half an hour of rows, a range ending now about none)."""
    out: list[tuple[tuple[datetime, datetime] | None, list[tuple[datetime, datetime | None]]]] = []
    for lo, hi in edges:
        h0 = floor_hour(lo)
        h1 = h0 + HOUR
        if hi is None or hi > h1:
            out.append((None, [(lo, hi)]))
            continue
        rest: list[tuple[datetime, datetime | None]] = [(a, b) for a, b in ((h0, lo), (hi, h1)) if a < b]
        shorter = sum(((b or h1) - a for a, b in rest), timedelta()) < hi - lo
        out.append(((h0, h1), rest) if shorter else (None, [(lo, hi)]))
    return out


def floor_day(t: datetime) -> datetime:
    return floor_hour(t).replace(hour=0)


def ceil_day(t: datetime) -> datetime:
    f = floor_day(t)
    return f if f == t else f + DAY


Range = tuple[datetime | None, datetime | None]


def by_day(hours: Range, sealed_before: datetime | None) -> tuple[Range | None, list[Range]]:
    """Whole hours [a, b) as the sealed whole days in them (read from the daily sums) and
    the hours left (from the hourly ones)."""
    a, b = hours
    if sealed_before is None:
        return None, [hours]
    ds = None if a is None else ceil_day(a)
    de = floor_day(sealed_before)
    if b is not None:
        de = min(de, floor_day(b))
    if ds is not None and ds >= de:
        return None, [hours]
    rest: list[Range] = []
    if a is not None and ds is not None and a < ds:
        rest.append((a, ds))
    if b is None or de < b:
        rest.append((de, b))
    return (ds, de), rest


# report groups: how each reads from the rollups and from the rows (None: rows only)
def _group_exprs(dialect: Dialect, group: str) -> tuple[str | None, str]:
    if group == "day":
        return dialect.day_expr("hour"), dialect.day_expr("created_at")
    if group == "hour":  # the console's chart: whole hours, so never from the daily sums (usage_sql)
        return hour_label_expr(dialect, "hour"), hour_label_expr(dialect, "created_at")
    if group == "key":
        return "nullif(api_key_id, '')", "api_key_id"
    column = {"tenant": "tenant_id", "model": "model", "endpoint": "endpoint", "status": "status"}[group]
    return (column if group in ("tenant", "model") else None), column


def usage_sql(
    dialect: Dialect,
    group_by: list[str],
    start: datetime | None,
    end: datetime | None,
    filters: dict[str, str],
    rows_only: bool = False,
    sealed_before: datetime | None = None,
) -> tuple[str, list]:
    """One query: MEASURES summed per group over [start, end), rollups for whole hours
    (unless a group is not in them, e.g. endpoint, or `rows_only`), rows for the rest.
    `filters` maps tenant_id / api_key_id to the value they must have."""
    ph = dialect.placeholder
    pairs = [_group_exprs(dialect, g) for g in group_by]
    use_rollups = not rows_only and all(h is not None for h, _ in pairs)
    cut = split(start, end) if use_rollups else Split(None, ((start, end),))  # type: ignore[arg-type]
    branches: list[str] = []
    params: list = []

    def conditions(column: str, lo, hi) -> list[str]:
        where = []
        for name, value in filters.items():
            where.append(f"{name} = {ph}")
            params.append(value)
        if lo is not None:
            where.append(f"{column} >= {ph}")
            params.append(dialect.time_param(lo))
        if hi is not None:
            where.append(f"{column} < {ph}")
            params.append(dialect.time_param(hi))
        return where or ["1 = 1"]

    n = len(group_by)
    names = [f"g{i}" for i in range(n)] + list(MEASURES)

    def select(exprs: list[str]) -> str:
        return ", ".join(f"{e} AS {a}" for e, a in zip(exprs, names, strict=True))

    if cut.hours is not None:
        days, hours = by_day(cut.hours, None if "hour" in group_by else sealed_before)
        if days is not None:
            where = conditions("day", *days)
            exprs = [h.replace("hour", "day") for h, _ in pairs if h is not None] + list(MEASURES)
            branches.append(f"SELECT {select(exprs)} FROM {DAILY} WHERE {' AND '.join(where)}")
        for lo, hi in hours:
            where = conditions("hour", lo, hi)
            exprs = [h for h, _ in pairs if h is not None] + list(MEASURES)
            branches.append(f"SELECT {select(exprs)} FROM {HOURLY} WHERE {' AND '.join(where)}")
        if dialect.name == "postgres":  # what the writers appended and no fold has moved yet: every whole hour
            where = conditions("hour", *cut.hours)
            exprs = [h for h, _ in pairs if h is not None] + list(MEASURES)
            branches.append(f"SELECT {select(exprs)} FROM {DELTA} WHERE {' AND '.join(where)}")
    # SQLite: the edges' rows (its decimal text does not negate exactly)
    reads = edge_reads(cut.edges) if use_rollups and dialect.name == "postgres" else [(None, list(cut.edges))]
    for whole, rows in reads:
        if whole is not None:  # the whole hour from the rollups, less the rows of the rest of it
            exprs = [h for h, _ in pairs if h is not None] + list(MEASURES)
            for table in (HOURLY, DELTA):
                where = conditions("hour", *whole)
                branches.append(f"SELECT {select(exprs)} FROM {table} WHERE {' AND '.join(where)}")
        sign = "-" if whole is not None else ""
        for lo, hi in rows:
            # summed per group here: the planner hashes these rows, the outer sort sees a few
            where = conditions("created_at", lo, hi)
            totals = [
                dialect.decimal_sum(f"{sign}({m})") if name == "cost_usd" else f"sum({sign}({m}))"
                for name, m in zip(MEASURES, row_measures(dialect), strict=True)
            ]
            exprs = [r for _, r in pairs] + totals
            group = ", ".join(str(i + 1) for i in range(n))
            branches.append(f"SELECT {select(exprs)} FROM litellm_usage WHERE {' AND '.join(where)} GROUP BY {group}")
    if not branches:  # an empty range
        return "", []
    sums = [dialect.decimal_sum(m) if m == "cost_usd" else f"sum({m})" for m in MEASURES]
    order = ", ".join(str(i + 1) for i in range(n))
    # a group only in the part of an edge hour subtracted again adds up to no request: left out
    sql = (
        f"SELECT {', '.join(names[:n])}, {', '.join(sums)} FROM ({' UNION ALL '.join(branches)}) AS u "
        f"GROUP BY {order} HAVING sum(requests) <> 0 ORDER BY {order}"
    )
    return sql, params


def measures_of(row: tuple | list) -> dict:
    """MEASURES (as a report shows them) from a row of usage_sql past its groups."""
    out: dict = {}
    for name, value in zip(MEASURES, row, strict=True):
        out[name] = Decimal(str(value or 0)) if name == "cost_usd" else int(value or 0)
    return out


async def sealed_before(store) -> datetime | None:
    """Where the sealed days end (Postgres; None: no daily sums to read)."""
    if store.dialect != "postgres":
        return None
    rows = await store.fetch("SELECT value FROM tallygate_ledger_state WHERE name = 'sealed_before'")
    return rows[0][0] if rows else None


def latency_sql(
    start: datetime | None, end: datetime | None, filters: dict[str, str], sealed_before: datetime | None = None
) -> tuple[str, list]:
    """Postgres: one query giving (bucket, requests) of the latency histogram over
    [start, end): whole hours from the rollups and the unfolded deltas, edges from the rows."""
    from .dialect import POSTGRES

    ph = POSTGRES.placeholder
    cut = split(start, end)
    branches: list[str] = []
    params: list = []

    def conditions(column: str, lo, hi) -> str:
        where = []
        for name, value in filters.items():
            where.append(f"{name} = {ph}")
            params.append(value)
        for op, bound in ((">=", lo), ("<", hi)):
            if bound is not None:
                where.append(f"{column} {op} {ph}")
                params.append(bound)
        return " AND ".join(where) or "true"

    buckets = f"ARRAY[{', '.join(str(k) for k in range(len(LATENCY_COLUMNS)))}]"
    # coalesce: a rollup table with no row in the range still yields its one row, of NULL sums
    counts = f"ARRAY[{', '.join(f'coalesce(sum({c}), 0)' for c in LATENCY_COLUMNS)}]"
    if cut.hours is not None:
        days, hours = by_day(cut.hours, sealed_before)
        parts = ([(DAILY, "day", days)] if days is not None else []) + [(HOURLY, "hour", h) for h in hours]
        for table, column, (lo, hi) in parts:
            branches.append(
                f"SELECT t.lb, t.n FROM (SELECT {buckets} AS lbs, {counts} AS ns FROM {table} "
                f"WHERE {conditions(column, lo, hi)}) AS s, unnest(s.lbs, s.ns) AS t (lb, n)"
            )
        branches.append(
            f"SELECT lb, count(*) FROM {DELTA}, unnest(latency_buckets) AS lb "
            f"WHERE {conditions('hour', *cut.hours)} GROUP BY 1"
        )
    for whole, rows in edge_reads(cut.edges):
        if whole is not None:  # the whole hour from the rollups, less the rows of the rest of it
            branches.append(
                f"SELECT t.lb, t.n FROM (SELECT {buckets} AS lbs, {counts} AS ns FROM {HOURLY} "
                f"WHERE {conditions('hour', *whole)}) AS s, unnest(s.lbs, s.ns) AS t (lb, n)"
            )
            branches.append(
                f"SELECT lb, count(*) FROM {DELTA}, unnest(latency_buckets) AS lb "
                f"WHERE {conditions('hour', *whole)} GROUP BY 1"
            )
        count = "-count(*)" if whole is not None else "count(*)"
        for lo, hi in rows:
            branches.append(
                f"SELECT {LATENCY_BUCKET_SQL}, {count} FROM litellm_usage "
                f"WHERE {conditions('created_at', lo, hi)} GROUP BY 1"
            )
    if not branches:
        return "", []
    return f"SELECT lb, sum(n) FROM ({' UNION ALL '.join(branches)}) AS u (lb, n) GROUP BY 1", params


def percentile_of_histogram(counts: dict[int, int], percent: int = 95) -> float | None:
    """The nearest-rank percentile (the ceil(percent/100 n)-th smallest latency) as its
    bucket's geometric middle, 2^((k - 1/2) / 2) ms: within a factor 2^(1/4) (+-19%) of the
    exact value, which lies in the same bucket. Bucket 0 gives 1 ms (its top: below 1 ms),
    the last 2^19 ms (its floor); None for no request."""
    import math

    total = sum(n for n in counts.values() if n)
    if not total:
        return None
    rank = math.ceil(total * percent / 100)
    seen = 0
    last = len(LATENCY_COLUMNS) - 1
    for k in sorted(counts):
        seen += int(counts[k] or 0)
        if seen >= rank:
            if k <= 0:
                return 1.0
            if k >= last:
                return LATENCY_BOUNDS[-1]
            return 2.0 ** ((k - 0.5) / 2)
    return LATENCY_BOUNDS[-1]


async def latency_p95(
    store, start: datetime | None, end: datetime | None = None, tenant_id: str | None = None
) -> float | None:
    """Postgres: the p95 latency in ms over [start, end) from the rollups' histogram (see
    percentile_of_histogram for its error bound); None for no request."""
    filters = {"tenant_id": tenant_id} if tenant_id else {}
    sql, params = latency_sql(start, end, filters, await sealed_before(store))
    rows = await store.fetch(sql, params) if sql else []
    return percentile_of_histogram({int(lb): int(n) for lb, n in rows})


async def spend_since(store, column: str, value: str, since: datetime | None) -> Decimal:
    """Cost in the ledger for one tenant or key since a time (None: ever): the budget rebuild."""
    assert column in ("tenant_id", "api_key_id")
    dialect = dialect_of(store)
    ph = dialect.placeholder
    cut = split(since, None)
    branches, params = [], []
    if cut.hours is not None:
        days, hours = by_day(cut.hours, await sealed_before(store))
        parts = ([(DAILY, "day", days)] if days is not None else []) + [(HOURLY, "hour", h) for h in hours]
        if dialect.name == "postgres":
            parts.append((DELTA, "hour", cut.hours))  # not yet folded: every whole hour
        for table, col, (lo, hi) in parts:
            where = [f"{column} = {ph}"]
            params.append(value)
            for op, bound in ((">=", lo), ("<", hi)):
                if bound is not None:
                    where.append(f"{col} {op} {ph}")
                    params.append(dialect.time_param(bound))
            branches.append(f"SELECT cost_usd FROM {table} WHERE {' AND '.join(where)}")
    for lo, hi in cut.edges:
        branches.append(
            f"SELECT cost_usd FROM litellm_usage WHERE {column} = {ph} AND created_at >= {ph} AND created_at < {ph}"
        )
        params += [value, dialect.time_param(lo), dialect.time_param(hi)]
    if not branches:
        return Decimal(0)
    sql = f"SELECT {dialect.decimal_sum('cost_usd')} FROM ({' UNION ALL '.join(branches)}) AS u"
    rows = await store.fetch(sql, params)
    return Decimal(str(rows[0][0] or 0)) if rows else Decimal(0)


def _daily_from_hourly_sql(unsealed_only: bool = False) -> str:
    """The daily sums of the hourly ones in [%s, %s) (Postgres); `unsealed_only`: not
    before the current seal either (what another pass sealed meanwhile is not added twice)."""
    from .dialect import POSTGRES

    totals = [f"sum({m})" for m in sums(POSTGRES)]
    floor = "%s"
    if unsealed_only:
        floor = (
            "greatest(%s, (SELECT coalesce(max(value), '-infinity') FROM tallygate_ledger_state "
            "WHERE name = 'sealed_before'))"
        )
    select = (
        f"SELECT tenant_id, api_key_id, model, date_trunc('day', hour, 'UTC'), {', '.join(totals)} FROM {HOURLY} "
        f"WHERE hour >= {floor} AND hour < %s GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
    )
    return upsert_sql(POSTGRES, select, DAILY)


async def seal_days(store, now: datetime | None = None) -> datetime | None:
    """Fold the closed UTC days since the last seal into the daily sums and move
    `sealed_before` to today's start (Postgres; the gateway's hourly pass does it).
    Under the seal lock taken exclusively: writers' statements that ran before it are in
    the hourly sums folded; those after it see the new bound and add to the daily sums."""
    if store.dialect != "postgres":
        return None
    await fold_deltas(store)  # not needed for the sums to be right; the daily ones start complete
    today = floor_day(now or datetime.now(UTC))
    current = await sealed_before(store)
    if current is None:
        first = (await store.fetch(f"SELECT min(hour) FROM {HOURLY}"))[0][0]
        current = floor_day(first) if first is not None else today
    if current < today:
        await store.transaction(
            [
                (f"SELECT pg_advisory_xact_lock({SEAL_LOCK})", ()),
                (_daily_from_hourly_sql(unsealed_only=True), (current, today)),
                (
                    "INSERT INTO tallygate_ledger_state (name, value) VALUES ('sealed_before', %s) ON CONFLICT (name) "
                    "DO UPDATE SET value = greatest(tallygate_ledger_state.value, excluded.value)",
                    (today,),
                ),
            ]
        )
    elif await sealed_before(store) is None:
        await store.execute(
            "INSERT INTO tallygate_ledger_state (name, value) VALUES ('sealed_before', %s) ON CONFLICT DO NOTHING",
            (today,),
        )
    return today


async def retained_from(store) -> datetime | None:
    """Where the rows retention kept begin (None: it never dropped any)."""
    dialect = dialect_of(store)
    rows = await store.fetch("SELECT value FROM tallygate_ledger_state WHERE name = 'retained_from'")
    return dialect.time_value(rows[0][0]) if rows else None


async def rebuild(store, since: datetime | None = None, now: datetime | None = None) -> dict:
    """Rebuild the rollups from the rows for the hours from `since` (its hour; None: the
    first row's), never before the rows retention kept. Postgres: a day a transaction,
    each locking the rollups and deltas against the writers and the fold (EXCLUSIVE: reads go on), so a
    batch written meanwhile is counted once: committed before the lock, it is in the rows
    read; waiting on the lock, its rows are not yet visible and it adds them after."""
    dialect = dialect_of(store)
    ph = dialect.placeholder
    now = now or datetime.now(UTC)
    if since is None:
        first = (await store.fetch("SELECT min(created_at) FROM litellm_usage"))[0][0]
        if first is None:
            return {"since": None, "rows": 0, "chunks": 0}
        since = dialect.time_value(first)
    assert since is not None
    lower = floor_hour(since)
    kept = await retained_from(store)
    if kept is not None and lower < kept:
        lower = ceil_hour(kept)
    insert = upsert_sql(
        dialect, aggregate_rows_sql(dialect, "litellm_usage", f"created_at >= {ph} AND created_at < {ph}")
    )
    insert_open = upsert_sql(dialect, aggregate_rows_sql(dialect, "litellm_usage", f"created_at >= {ph}"))
    bounds: list[tuple[datetime, datetime | None]] = []
    if dialect.name == "postgres":
        day = lower.replace(hour=0) + timedelta(days=1)
        last = floor_hour(now).replace(hour=0) + timedelta(days=2)
        lo = lower
        while day <= last:
            bounds.append((lo, day))
            lo, day = day, day + timedelta(days=1)
        bounds.append((lo, None))
    else:
        bounds.append((lower, None))
    for lo, hi in bounds:
        t = dialect.time_param
        steps: list[tuple[str, list]] = []
        tables = [HOURLY]
        if dialect.name == "postgres":
            # the writers' statements append to the deltas: they wait for the lock too
            tables.append(DELTA)
            steps.append((f"LOCK TABLE {HOURLY}, {DELTA} IN EXCLUSIVE MODE", []))
        for table in tables:
            if hi is None:
                steps.append((f"DELETE FROM {table} WHERE hour >= {ph}", [t(lo)]))
            else:
                steps.append((f"DELETE FROM {table} WHERE hour >= {ph} AND hour < {ph}", [t(lo), t(hi)]))
        steps.append((insert_open, [t(lo)]) if hi is None else (insert, [t(lo), t(hi)]))
        await store.transaction(steps)
    sealed = await sealed_before(store)
    if sealed is not None and floor_day(lower) < sealed:
        # the sealed days from `lower`'s day on, again from the hourly sums, under the seal lock
        await store.transaction(
            [
                (f"SELECT pg_advisory_xact_lock({SEAL_LOCK})", ()),
                (f"DELETE FROM {DAILY} WHERE day >= %s AND day < %s", (floor_day(lower), sealed)),
                (_daily_from_hourly_sql(), (floor_day(lower), sealed)),
            ]
        )
    rows = (
        await store.fetch(
            f"SELECT coalesce(sum(requests), 0) FROM {HOURLY} WHERE hour >= {ph}", [dialect.time_param(lower)]
        )
    )[0][0]
    return {"since": lower, "rows": int(rows), "chunks": len(bounds)}
