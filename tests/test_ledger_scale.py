"""The ledger at scale: daily partitions (Postgres), hourly rollups kept exactly once,
readers that take whole hours from them and agree with the rows, retention."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from support import ROOT
from support.ledger import conninfo

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@pytest.fixture
def fresh_pg(postgres_env):
    """PG* variables of a database of this test's own (named after the session's)."""
    name = f"{postgres_env['PGDATABASE']}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield {**postgres_env, "PGDATABASE": name}
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["postgres", "sqlite"])
def ledger_env(request, tmp_path):
    if request.param == "postgres":
        yield request.getfixturevalue("fresh_pg")
    else:
        yield {"TALLYGATE_SQLITE_PATH": str(tmp_path / "ledger.db")}


def settings_for(env: dict):
    from tallygate.settings import load

    return load({"PROXY_GATEWAY_TOKEN": "x", **env})


async def opened(env: dict):
    from tallygate.store import open_store

    store = open_store(settings_for(env))
    await store.connect()
    await store.migrate()
    return store


def run(coro):
    return asyncio.run(coro)


def record(i: int, when: datetime, rng: random.Random | None = None, **kw):
    from tallygate.metering.record import UsageRecord

    rng = rng or random.Random(i)
    prompt, completion = rng.randint(0, 5000), rng.randint(0, 2000)
    fields = dict(
        request_id=f"req_{uuid.uuid4().hex}",
        created_at=when,
        tenant_id=rng.choice(["acme", "globex", "initech"]),
        api_key_id=rng.choice([None, "key_a", "key_b"]),
        model=rng.choice(["gpt-4o-mini", "gpt-4o", "my-unpriced"]),
        endpoint=rng.choice(["/v1/chat/completions", "/v1/responses"]),
        stream=bool(i & 1),
        status_code=200,
        status=rng.choice(["ok", "ok", "ok", "upstream_error", "client_disconnected", "timeout"]),
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_tokens=rng.randint(0, prompt),
        reasoning_tokens=rng.randint(0, completion),
        cache_write_tokens=rng.randint(0, 50),
        cache_write_1h_tokens=rng.randint(0, 9),
        audio_input_tokens=rng.randint(0, 30),
        audio_output_tokens=rng.randint(0, 30),
        image_input_tokens=rng.randint(0, 30),
        image_output_tokens=rng.randint(0, 30),
        web_search_calls=rng.randint(0, 2),
        file_search_calls=rng.randint(0, 2),
        cost_usd=Decimal(rng.randint(0, 10**9)) / Decimal(10**12),
        price_source=rng.choice(["genai-prices", "override", "unknown", "genai-prices:partial", "override:partial"]),
        usage_source="provider",
        latency_ms=12.5,
    )
    fields.update(kw)
    return UsageRecord(**fields)


def row_sums(env: dict, where: str = "true", params=()) -> tuple[int, Decimal]:
    if "PGDATABASE" in env:
        with psycopg.connect(conninfo(env)) as conn:
            n, cost = conn.execute(f"SELECT count(*), coalesce(sum(cost_usd), 0) FROM litellm_usage WHERE {where}",
                                   params).fetchone()
        return n, Decimal(cost)
    import sqlite3

    conn = sqlite3.connect(env["TALLYGATE_SQLITE_PATH"])
    rows = conn.execute(f"SELECT cost_usd FROM litellm_usage WHERE {where}", params).fetchall()
    conn.close()
    return len(rows), sum((Decimal(r[0]) for r in rows), Decimal(0))


def fold(env: dict) -> int:
    """Postgres: the writers' deltas into the rollups, as the gateway's pass does; how many moved."""
    from tallygate.store.rollups import _fold_sql

    with psycopg.connect(conninfo(env), autocommit=True) as conn:
        return conn.execute(_fold_sql()).fetchone()[0]


def hourly_sums(env: dict, folded: bool = True) -> tuple[int, Decimal]:
    if "PGDATABASE" in env:
        if folded:
            fold(env)
        with psycopg.connect(conninfo(env)) as conn:
            n, cost = conn.execute("SELECT coalesce(sum(requests), 0), coalesce(sum(cost_usd), 0) "
                                   "FROM litellm_usage_hourly").fetchone()
        return int(n), Decimal(cost)
    import sqlite3

    conn = sqlite3.connect(env["TALLYGATE_SQLITE_PATH"])
    rows = conn.execute("SELECT requests, cost_usd FROM litellm_usage_hourly").fetchall()
    conn.close()
    return sum(r[0] for r in rows), sum((Decimal(r[1]) for r in rows), Decimal(0))


def assert_daily_matches_hourly(env: dict, expect_days: int = 0) -> None:
    """Postgres: the daily sums of the sealed days equal their hourly sums, group by group."""
    if "PGDATABASE" not in env:
        return
    fold(env)
    cols = ("requests, prompt_tokens, audio_output_tokens, file_search_calls, cost_usd, errors, partial_requests, "
            "latency_b00, latency_b07, latency_b39")
    sums = ", ".join(f"sum({c})" for c in cols.split(", "))
    with psycopg.connect(conninfo(env)) as conn:
        sealed = conn.execute("SELECT value FROM tallygate_ledger_state WHERE name = 'sealed_before'").fetchone()[0]
        daily = conn.execute(f"SELECT tenant_id, api_key_id, model, day, {sums} FROM litellm_usage_daily "
                             "GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4").fetchall()
        hourly = conn.execute(f"SELECT tenant_id, api_key_id, model, date_trunc('day', hour, 'UTC'), {sums} "
                              "FROM litellm_usage_hourly WHERE hour < %s GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
                              (sealed,)).fetchall()
    assert daily == hourly
    assert len({r[3] for r in daily}) >= expect_days


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "DATABASE_URL"}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "tallygate", *args], env=full, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


# -- migration ---------------------------------------------------------------------

def test_migration_from_a_populated_0003_table_loses_no_row(fresh_pg):
    """A 0003 ledger with rows of many dates (1999, last year, today, 2090) becomes a
    partitioned one with every row, the same sums, rollups equal to the rows, the new key;
    then a row of a day without a partition lands (DEFAULT) and moves when its day's
    partition is made."""
    from tallygate.reports import usage_report
    from tallygate.store.migrations import migrations

    now = datetime.now(UTC)
    whens = [datetime(1999, 3, 4, 5, 6, 7, 123456, tzinfo=UTC), now - timedelta(days=365), now - timedelta(hours=5),
             now, datetime(2090, 1, 1, tzinfo=UTC)]
    with psycopg.connect(conninfo(fresh_pg), autocommit=True) as conn:
        for m in migrations("postgres"):
            if m.version <= 3:
                conn.execute(m.sql)
        rng = random.Random(3)
        for i in range(600):
            r = record(i, whens[i % len(whens)] + timedelta(seconds=i), rng)
            conn.execute(
                "INSERT INTO litellm_usage (request_id, created_at, tenant_id, api_key_id, model, provider, endpoint, "
                "status_code, status, prompt_tokens, completion_tokens, total_tokens, cost_usd, price_source, "
                "usage_source, latency_ms, audio_input_tokens) VALUES "
                "(%s, %s, %s, %s, %s, 'openai', %s, 200, %s, %s, %s, %s, %s, %s, 'provider', 1, %s)",
                (r.request_id, r.created_at, r.tenant_id, r.api_key_id, r.model, r.endpoint, r.status,
                 r.prompt_tokens, r.completion_tokens, r.total_tokens, r.cost_usd, r.price_source,
                 r.audio_input_tokens))
        before = conn.execute("SELECT count(*), sum(cost_usd), sum(prompt_tokens), sum(audio_input_tokens), "
                              "count(DISTINCT request_id) FROM litellm_usage").fetchone()

    async def go():
        store = await opened(fresh_pg)
        try:
            start = datetime(1990, 1, 1, tzinfo=UTC)
            end = datetime(2100, 1, 1, tzinfo=UTC)
            by = ["tenant", "model", "key", "day"]
            return (await usage_report(store, start, end, group_by=by),
                    await usage_report(store, start, end, group_by=by, rows_only=True))
        finally:
            await store.close()

    from_rollups, from_rows = run(go())
    assert from_rollups == from_rows and sum(r["requests"] for r in from_rows) == 600
    with psycopg.connect(conninfo(fresh_pg), autocommit=True) as conn:
        after = conn.execute("SELECT count(*), sum(cost_usd), sum(prompt_tokens), sum(audio_input_tokens), "
                             "count(DISTINCT request_id) FROM litellm_usage").fetchone()
        assert after == before and after[0] == 600
        assert conn.execute("SELECT relkind FROM pg_class WHERE relname = 'litellm_usage'").fetchone()[0] == "p"
        key = conn.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'litellm_usage_pkey'")
        assert key.fetchone()[0] == "PRIMARY KEY (request_id, created_at)"
        assert conn.execute("SELECT count(*) FROM litellm_usage_p19990304").fetchone()[0] == 120
        assert conn.execute("SELECT count(*) FROM litellm_usage_default").fetchone()[0] == 0
        assert conn.execute("SELECT to_regclass('litellm_usage_0003')").fetchone()[0] is None
        # a day with no partition: the row lands in DEFAULT, and moves into the day's partition
        conn.execute("INSERT INTO litellm_usage (request_id, created_at, tenant_id, model, provider, endpoint, "
                     "status_code, status, price_source, usage_source, latency_ms) VALUES "
                     "('req_far', '2150-06-01T10:00:00Z', 't', 'm', 'openai', '/e', 200, 'ok', 'x', 'provider', 1)")
        assert conn.execute("SELECT count(*) FROM litellm_usage_default").fetchone()[0] == 1
        assert conn.execute("SELECT tallygate_ledger_partition('2150-06-01')").fetchone()[0] == "litellm_usage_p21500601"
        assert conn.execute("SELECT count(*) FROM litellm_usage_default").fetchone()[0] == 0
        assert conn.execute("SELECT request_id FROM litellm_usage_p21500601").fetchall() == [("req_far",)]
        assert conn.execute("SELECT count(*) FROM litellm_usage").fetchone()[0] == 601
        today = now.strftime("%Y%m%d")
        ahead = (now + timedelta(days=7)).strftime("%Y%m%d")
        for day in (today, ahead):
            assert conn.execute(f"SELECT to_regclass('litellm_usage_p{day}')").fetchone()[0] is not None
    # migrating again changes nothing; db init too
    assert cli(fresh_pg, "db", "init").returncode == 0
    with psycopg.connect(conninfo(fresh_pg)) as conn:
        assert conn.execute("SELECT count(*) FROM litellm_usage").fetchone()[0] == 601


def test_schema_file_twice_on_an_empty_database_gives_the_partitioned_ledger(fresh_pg):
    from tallygate.store.migrations import migrations, schema_sql

    assert (ROOT / "db" / "schema.sql").read_text() == schema_sql("postgres")
    url = f"postgres://postgres@127.0.0.1:5432/{fresh_pg['PGDATABASE']}"
    for _ in range(2):
        subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-q", "-f", str(ROOT / "db/schema.sql")],
                       check=True, capture_output=True)
    with psycopg.connect(conninfo(fresh_pg)) as conn:
        assert conn.execute("SELECT relkind FROM pg_class WHERE relname = 'litellm_usage'").fetchone()[0] == "p"
        for table in ("litellm_usage_default", "litellm_usage_hourly", "ledger_export_cursors"):
            assert conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is not None
        shipped = {m.version for m in migrations("postgres")}
        applied = {row[0] for row in conn.execute("SELECT version FROM tallygate_schema_migrations")}
        assert applied == shipped and 4 in applied


# -- rollups -------------------------------------------------------------------------

def test_a_retried_batch_counts_once_in_rows_and_rollups(ledger_env):
    now = datetime.now(UTC)
    first = [record(i, now - timedelta(minutes=i)) for i in range(40)]
    far = [record(100, datetime(1970, 1, 2, tzinfo=UTC)), record(101, datetime(2200, 5, 5, 5, tzinfo=UTC))]

    async def go():
        store = await opened(ledger_env)
        try:
            added = [await store.write(first)]
            added.append(await store.write(first[:25] + far + first[25:]))  # a retry, with two new rows
            added.append(await store.write(first + far))
            return added
        finally:
            await store.close()

    assert run(go()) == [40, 2, 0]
    n, cost = row_sums(ledger_env)
    assert n == 42
    assert cost == sum((r.cost_usd for r in first + far), Decimal(0))
    assert hourly_sums(ledger_env) == (42, cost)


def test_reports_and_budget_rebuild_from_rollups_equal_summing_the_rows(ledger_env):
    """Random rows over four days, written in overlapping (retried) batches; for random
    ranges with odd edges and every grouping the rollup-backed answers equal the rows'."""
    from tallygate.reports import GROUPS, usage_report
    from tallygate.store.rollups import seal_days, spend_since

    rng = random.Random(19)
    base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=3)
    records = [record(i, base + timedelta(seconds=rng.randint(0, 4 * 86400)), rng) for i in range(1500)]
    records[0].created_at = base + timedelta(hours=7)  # on an hour's first microsecond
    records[1].created_at = base + timedelta(hours=7) - timedelta(microseconds=1)

    async def go():
        store = await opened(ledger_env)
        try:
            for i in range(0, len(records), 200):
                await store.write(records[i:i + 200])
                await store.write(records[max(0, i - 50):i + 100])  # a retry overlapping the last batch
                if i == 600:  # the closed days into the daily sums: later rows of those days add to them
                    await seal_days(store)
            checks = 0
            for _ in range(12):
                start = base + timedelta(seconds=rng.randint(-3600, 3 * 86400))
                end = rng.choice([None, start + timedelta(seconds=rng.randint(0, 2 * 86400)),
                                  start + timedelta(seconds=rng.randint(0, 5000))])
                by = rng.sample(GROUPS, rng.randint(1, 3))
                tenant = rng.choice([None, "acme"])
                key = rng.choice([None, None, "key_a"])
                fast = await usage_report(store, start, end, tenant, key, by)
                slow = await usage_report(store, start, end, tenant, key, by, rows_only=True)
                assert fast == slow, (start, end, by, tenant, key)
                checks += bool(slow)
            for since in (None, base + timedelta(hours=30, minutes=17, seconds=3), base - timedelta(days=1),
                          base + timedelta(hours=5)):
                for column, value in (("tenant_id", "globex"), ("api_key_id", "key_b")):
                    expected = sum((r.cost_usd for r in records
                                    if getattr(r, column) == value and (since is None or r.created_at >= since)),
                                   Decimal(0))
                    assert await spend_since(store, column, value, since) == expected
            return checks
        finally:
            await store.close()

    assert run(go()) >= 6  # most ranges held rows
    assert hourly_sums(ledger_env) == row_sums(ledger_env)
    assert_daily_matches_hourly(ledger_env, expect_days=3)
    n_rows = row_sums(ledger_env)[0]
    assert n_rows == 1500


def test_rebuild_rollups_counts_rows_inserted_by_sql(ledger_env):
    now = datetime.now(UTC)
    written = [record(i, now - timedelta(hours=i)) for i in range(30)]

    async def go():
        from tallygate.store.rollups import seal_days

        store = await opened(ledger_env)
        try:
            await store.write(written)
            await seal_days(store)
        finally:
            await store.close()

    run(go())
    # a bulk import behind the gateway's back: rows only
    imported = "req_imported_1"
    sql = ("INSERT INTO litellm_usage (request_id, created_at, tenant_id, model, provider, endpoint, status_code, "
           "status, cost_usd, price_source, usage_source, latency_ms) VALUES "
           "('{id}', {p}, 'acme', 'gpt-4o', 'openai', '/e', 200, 'ok', '0.5', 'unknown', 'provider', 1)")
    when = now - timedelta(hours=3)
    if "PGDATABASE" in ledger_env:
        with psycopg.connect(conninfo(ledger_env), autocommit=True) as conn:
            conn.execute(sql.format(id=imported, p="%s"), (when,))
    else:
        import sqlite3

        conn = sqlite3.connect(ledger_env["TALLYGATE_SQLITE_PATH"])
        conn.execute(sql.format(id=imported, p="?"), (when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),))
        conn.commit()
        conn.close()
    rows = row_sums(ledger_env)
    assert hourly_sums(ledger_env) != rows and rows[0] == 31
    done = cli(ledger_env, "ledger", "rebuild-rollups", "--since", "6h")
    assert done.returncode == 0, done.stderr
    assert "rollups rebuilt from" in done.stdout
    assert hourly_sums(ledger_env) == rows
    done = cli(ledger_env, "ledger", "rebuild-rollups")  # from the first row
    assert done.returncode == 0, done.stderr
    assert hourly_sums(ledger_env) == rows
    assert_daily_matches_hourly(ledger_env, expect_days=1)
    usage = cli(ledger_env, "usage", "--since", "2d", "--by", "tenant")
    assert usage.returncode == 0, usage.stderr
    header = usage.stdout.splitlines()[2]
    assert "unpriced_requests" in header  # shown: there are unpriced requests


# -- retention -----------------------------------------------------------------------

def test_retention_drops_old_partitions_but_not_what_an_export_has_not_passed(ledger_env):
    now = datetime.now(UTC)
    old = [record(i, now - timedelta(days=500, hours=i)) for i in range(5)]  # past retention, exported
    unexported = [record(10 + i, now - timedelta(days=450, hours=i)) for i in range(4)]  # past it, not exported
    recent = [record(20 + i, now - timedelta(days=3, hours=i)) for i in range(6)]
    pg = "PGDATABASE" in ledger_env

    async def go():
        from tallygate.store.partitions import daily_partitions

        store = await opened(ledger_env)
        try:
            if pg:
                for r in old + unexported:  # the partitions those days had
                    await store.fetch("SELECT tallygate_ledger_partition(%s::date)",
                                      ((r.created_at.astimezone(UTC)).date(),))
            await store.write(old + unexported + recent)
            ph = "%s" if pg else "?"
            t = (now - timedelta(days=470)) if pg else (now - timedelta(days=470)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            await store.execute(f"INSERT INTO ledger_export_cursors (name, exported_before) VALUES ('stripe', {ph})",
                                (t,))
            return [n for n, _ in await daily_partitions(store)] if pg else []
        finally:
            await store.close()

    parts_before = run(go())
    env = {**ledger_env, "TALLYGATE_LEDGER_RETENTION": "400d"}
    dry = cli(env, "ledger", "retention", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert row_sums(ledger_env)[0] == 15  # a dry run drops nothing
    done = cli(env, "ledger", "retention")
    assert done.returncode == 0, done.stderr
    left = {r for r in (row_sums(ledger_env, "request_id = " + ("%s" if pg else "?"), (r.request_id,))[0]
                        and r.request_id for r in old + unexported + recent) if r}
    assert left == {r.request_id for r in unexported + recent}
    if pg:
        old_parts = {f"litellm_usage_p{r.created_at.astimezone(UTC):%Y%m%d}" for r in old}
        assert old_parts <= set(parts_before)
        assert "would drop" in dry.stdout and sorted(old_parts)[0] in dry.stdout
        with psycopg.connect(conninfo(ledger_env)) as conn:
            for name in old_parts:
                assert conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is None
        assert "billing export has not passed" in done.stdout
    # the rollups keep every request, and a rebuild does not undo them
    assert hourly_sums(ledger_env)[0] == 15
    assert cli(ledger_env, "ledger", "rebuild-rollups").returncode == 0
    assert hourly_sums(ledger_env)[0] == 15
    unset = cli(ledger_env, "ledger", "retention")
    assert unset.returncode != 0 and "TALLYGATE_LEDGER_RETENTION" in unset.stderr


def test_retention_setting_is_validated():
    from tallygate.settings import SettingsError, load

    assert load({"TALLYGATE_LEDGER_RETENTION": "400d"}).ledger_retention_days == 400
    assert load({"TALLYGATE_LEDGER_RETENTION": "2w"}).ledger_retention_days == 14
    assert load({}).ledger_retention_days is None
    for bad in ("0d", "12h", "soon"):
        with pytest.raises(SettingsError, match="TALLYGATE_LEDGER_RETENTION"):
            load({"TALLYGATE_LEDGER_RETENTION": bad})


def test_one_maintenance_pass_at_a_time(fresh_pg):
    """Of many instances, the one holding the advisory lock maintains; the others skip."""
    from tallygate.store.partitions import MAINTENANCE_LOCK, maintain

    async def go():
        store = await opened(fresh_pg)
        try:
            async with store.try_lock(MAINTENANCE_LOCK) as got:
                assert got
                skipped = await maintain(store, None)
            done = await maintain(store, None)
            return skipped, done
        finally:
            await store.close()

    skipped, done = run(go())
    assert skipped is None and done == {"partitions_created": 0}




def test_the_gateway_creates_partitions_ahead(gateway, fresh_pg):
    """A partition missing from the week ahead is made by the gateway's maintenance pass."""
    from support import wait_until

    assert cli(fresh_pg, "db", "init").returncode == 0
    day = (datetime.now(UTC) + timedelta(days=5)).strftime("%Y%m%d")
    with psycopg.connect(conninfo(fresh_pg), autocommit=True) as conn:
        conn.execute(f"DROP TABLE litellm_usage_p{day}")

    def present() -> bool:
        with psycopg.connect(conninfo(fresh_pg)) as conn:
            return conn.execute("SELECT to_regclass(%s)", (f"litellm_usage_p{day}",)).fetchone()[0] is not None

    assert not present()
    gateway(**fresh_pg)
    wait_until(present, 10, message=f"litellm_usage_p{day} made by the gateway")


# -- the writer across a database restart ---------------------------------------------

def test_the_writer_is_back_within_its_bound_once_postgres_is(private_postgres):
    """A write asked for during an outage gives up within TALLYGATE_DB_TIMEOUT (not the
    pool's 10 s), and once the database is back the writer's next tries land within a
    couple of seconds, so a SIGTERM after an outage still flushes inside its grace."""
    import time

    from tallygate.sinks.ledger import LedgerWriter
    from tallygate.store.errors import StoreUnavailable

    private_postgres.start()
    name = f"restart_{uuid.uuid4().hex[:8]}"
    admin = f"host=127.0.0.1 port={private_postgres.port} user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    env = {**private_postgres.env(name), "TALLYGATE_DB_TIMEOUT": "2"}
    now = datetime.now(UTC)

    async def go():
        store = await opened(env)
        writer = LedgerWriter(store, batch_size=50, flush_interval=0.01)
        try:
            assert await store.write([record(0, now)]) == 1
            private_postgres.stop()
            t = time.monotonic()
            with pytest.raises((StoreUnavailable, psycopg.OperationalError)):
                await store.write([record(1, now)])  # the kept connection is gone, no server to get another
            during = time.monotonic() - t
            writer.start()
            writer.add([record(i, now) for i in range(10, 30)])
            await asyncio.sleep(3)  # the writer fails and backs off meanwhile
            assert writer.write_failures >= 1 and writer.rows_written == 0
            private_postgres.start()
            back = time.monotonic()
            flushed = await writer.flush(back + 8)  # the SIGTERM grace
            return during, time.monotonic() - back, flushed, writer.rows_written
        finally:
            await writer.close(time.monotonic() + 1)
            await store.close()

    try:
        during, after, flushed, written = run(go())
    finally:
        private_postgres.start()
    assert during < 4, f"a write during the outage waited {during:.1f} s"
    assert flushed and written == 20
    assert after < 5, f"the buffered rows landed {after:.1f} s after Postgres was back"
    assert row_sums(env)[0] == 21


# -- the console's reads, the latency histogram, the fold ------------------------------

def exact_p95(latencies: list[float]) -> float | None:
    import math

    if not latencies:
        return None
    return sorted(latencies)[math.ceil(len(latencies) * 95 / 100) - 1]


def test_console_series_and_health_from_rollups_equal_the_rows(ledger_env):
    """The console's chart and health figures (reports.usage_series, latency_and_errors)
    over random data, some of it folded, some sealed, some still in deltas: the sums equal
    the rows'; p95 is exact on SQLite and, on Postgres, the middle of the histogram bucket
    the exact value lies in (within a factor 2^(1/4))."""
    import math

    from tallygate.reports import latency_and_errors, usage_series
    from tallygate.store.rollups import LATENCY_BOUNDS, fold_deltas, seal_days

    rng = random.Random(95)
    now = datetime.now(UTC)
    base = now.replace(minute=0, second=0, microsecond=0) - timedelta(days=3)
    records = [record(i, base + timedelta(seconds=rng.randint(0, int((now - base).total_seconds()) - 1)), rng,
                      latency_ms=math.exp(rng.uniform(math.log(0.3), math.log(1_200_000))))
               for i in range(1200)]
    pg = "PGDATABASE" in ledger_env

    async def go():
        store = await opened(ledger_env)
        try:
            for i in range(0, 800, 100):
                await store.write(records[i:i + 100])
            await seal_days(store)  # folds, then seals the closed days
            for i in range(800, 1000, 100):
                await store.write(records[i:i + 100])
            await fold_deltas(store)
            for i in range(1000, 1200, 100):
                await store.write(records[i:i + 100])  # left in the deltas
            out = []
            for start, end, tenant, bucket in (
                (base + timedelta(minutes=17), now, None, "hour"),
                (base - timedelta(hours=5), now, "acme", "day"),
                (base + timedelta(hours=30, seconds=3), base + timedelta(hours=50, minutes=1), "globex", "hour"),
            ):
                out.append((start, end, tenant, bucket, await usage_series(store, start, end, tenant, bucket),
                            await latency_and_errors(store, start, end, tenant)))
            return out
        finally:
            await store.close()

    for start, end, tenant, bucket, series, health in run(go()):
        chosen = [r for r in records if start <= r.created_at < end and (tenant is None or r.tenant_id == tenant)]
        label = "%Y-%m-%dT%H:00" if bucket == "hour" else "%Y-%m-%d"
        expected: dict[str, list] = {}
        for r in chosen:
            e = expected.setdefault(r.created_at.strftime(label), [0, 0, Decimal(0)])
            e[0] += 1
            e[1] += r.total_tokens
            e[2] += r.cost_usd
        got = {p["label"]: [p["requests"], p["total_tokens"], Decimal(p["cost_usd"])] for p in series if p["requests"]}
        assert got == expected
        assert health["requests"] == len(chosen)
        assert health["errors"] == sum(r.status != "ok" for r in chosen)
        exact = exact_p95([r.latency_ms for r in chosen])
        assert exact is not None
        if not pg:
            assert health["p95_latency_ms"] == round(exact, 1)
            continue
        k = sum(exact >= b for b in LATENCY_BOUNDS)  # width_bucket's answer
        middle = 1.0 if k == 0 else LATENCY_BOUNDS[-1] if k == len(LATENCY_BOUNDS) else 2 ** ((k - 0.5) / 2)
        assert health["p95_latency_ms"] == round(middle, 1)
        if 0 < k < len(LATENCY_BOUNDS):
            assert exact / 2 ** 0.25 <= health["p95_latency_ms"] <= exact * 2 ** 0.25 + 0.05


def test_concurrent_writers_and_folds_count_each_row_once(fresh_pg):
    """Three writers sending overlapping (retried) batches of the same hours while folds
    run beside them: after a last fold the rollups hold every row once, and no delta is left."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    records = [record(i, now - timedelta(seconds=rng.randint(0, 7200)), rng) for i in range(1800)]

    async def go():
        from tallygate.store.rollups import fold_deltas

        stores = [await opened(fresh_pg) for _ in range(4)]
        done = asyncio.Event()

        async def writer(store, offset):
            for i in range(offset, len(records), 150):
                await store.write(records[i:i + 150])
                await store.write(records[max(0, i - 75):i + 75])  # a retry overlapping others' rows

        async def folder(store):
            moved = 0
            while not done.is_set():
                moved += await fold_deltas(store)
                await asyncio.sleep(0.005)
            return moved

        try:
            fold_task = asyncio.ensure_future(folder(stores[3]))
            await asyncio.gather(*(writer(s, k * 50) for k, s in enumerate(stores[:3])))
            done.set()
            moved = await fold_task
            moved += await fold_deltas(stores[3])
            return moved
        finally:
            for s in stores:
                await s.close()

    assert run(go()) > 0
    with psycopg.connect(conninfo(fresh_pg)) as conn:
        assert conn.execute("SELECT count(*) FROM litellm_usage_rollup_delta").fetchone()[0] == 0
        hist = conn.execute("SELECT sum(" + " + ".join(f"latency_b{k:02d}" for k in range(40)) + ") "
                            "FROM litellm_usage_hourly").fetchone()[0]
    assert hourly_sums(fresh_pg, folded=False) == row_sums(fresh_pg)
    assert row_sums(fresh_pg)[0] == 1800 and hist == 1800


def test_an_edge_hour_is_read_the_cheaper_way():
    """A range starting at :10 reads that hour's rollup less the 10 minutes before it; one
    starting at :50 reads its last 10 minutes of rows; one ending now reads its hour's rollup
    less the rest of the hour (no rows yet)."""
    from tallygate.store.rollups import edge_reads, split

    h = datetime(2026, 5, 1, 7, tzinfo=UTC)
    m = timedelta(minutes=1)
    assert edge_reads(split(h + 10 * m, h + 5 * timedelta(hours=1)).edges) == [((h, h + timedelta(hours=1)),
                                                                                 [(h, h + 10 * m)])]
    assert edge_reads(split(h + 50 * m, None).edges) == [(None, [(h + 50 * m, h + timedelta(hours=1))])]
    end = h + 3 * timedelta(hours=1) + 59 * m
    whole, rest = edge_reads(split(h, end).edges)[0]
    assert whole == (end - 59 * m, end + m) and rest == [(end, end + m)]


def test_p95_when_the_rollup_tables_have_no_row_in_the_range(ledger_env):
    """Rows not folded yet (in the deltas), nothing in the hourly or daily rollups of the
    range: each rollup branch of the histogram query still yields its one row, of NULL sums;
    the p95 is the rows', not an error (the console's overview answered 500 here)."""
    from tallygate.reports import latency_and_errors

    now = datetime.now(UTC)
    records = [record(i, now - timedelta(seconds=i + 1), latency_ms=40.0) for i in range(60)]

    async def go():
        store = await opened(ledger_env)
        try:
            await store.write(records)
            return await latency_and_errors(store, now - timedelta(days=20), now, None)
        finally:
            await store.close()

    health = run(go())
    assert health["requests"] == 60
    assert 40.0 / 2 ** 0.25 <= health["p95_latency_ms"] <= 40.0 * 2 ** 0.25
