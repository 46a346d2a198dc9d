"""Billing exports against a real Postgres (a database per test), the fakes of Stripe's
meter events and OpenMeter's ingest on loopback (tests/support/fake_billing.py), and
`tallygate billing export` as a real process (the official stripe SDK as its client)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal

import psycopg
import pytest

from support import MASTER, ROOT, admin_call, wait_until
from support.fake_billing import FakeOpenMeter, FakeStripe
from support.ledger import conninfo, send_mixed

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
HOUR = timedelta(hours=1)


@pytest.fixture
def export_db():
    """A fresh database with the schema applied (`tallygate db init`), dropped after."""
    name = f"export_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    env = {"PGHOST": "127.0.0.1", "PGPORT": "5432", "PGUSER": "postgres", "PGDATABASE": name, "PGSSL": "disable"}
    done = subprocess.run([sys.executable, "-m", "tallygate", "db", "init"], env=_env(env), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    yield env
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def stripe_fake():
    fake = FakeStripe()
    yield fake
    fake.stop()


def _env(db: dict, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PG", "TALLYGATE_", "STRIPE_", "OPENMETER_", "DATABASE_URL"))}
    env.update(db)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def export(db: dict, *args: str, fake: FakeStripe | None = None, timeout: float = 60, **extra):
    """`tallygate billing export ...` to the end; (exit status, output)."""
    if fake is not None:
        extra = {"STRIPE_API_KEY": fake.api_key, "STRIPE_API_BASE": fake.url,
                 "STRIPE_METER_EVENTS_BASE": fake.meter_events_url, **extra}
    done = subprocess.run([sys.executable, "-m", "tallygate", "billing", "export", *args], env=_env(db, **extra),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return done.returncode, done.stdout + done.stderr


def start_export(db: dict, *args: str, fake: FakeStripe, **extra) -> subprocess.Popen:
    env = _env(db, STRIPE_API_KEY=fake.api_key, STRIPE_API_BASE=fake.url,
               STRIPE_METER_EVENTS_BASE=fake.meter_events_url, **extra)
    return subprocess.Popen([sys.executable, "-m", "tallygate", "billing", "export", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)


def insert_rows(db: dict, rows: list[tuple[str, datetime, str]], tokens: int = 10) -> None:
    """Rows straight into the ledger as the writer would (tenant, created_at, cost text);
    ingested_at is stamped by the database."""
    with psycopg.connect(conninfo(db), autocommit=True) as conn:
        for tenant, created, cost in rows:
            conn.execute(
                "INSERT INTO litellm_usage (request_id, created_at, tenant_id, model, provider, endpoint, "
                "status_code, status, prompt_tokens, completion_tokens, total_tokens, cost_usd, price_source, "
                "usage_source, latency_ms) VALUES (%s, %s, %s, 'gpt-4o-mini', 'openai', '/v1/chat/completions', "
                "200, 'success', %s, %s, %s, %s, 'genai-prices', 'upstream', 1.0)",
                (f"req_{uuid.uuid4().hex}", created, tenant, tokens, tokens // 2, tokens + tokens // 2, Decimal(cost)))
    threading.Event().wait(1.2)  # past the exports' settle time (--settle 1s)


def set_customers(db: dict, mapping: dict[str, str]) -> None:
    for tenant, customer in mapping.items():
        done = subprocess.run([sys.executable, "-m", "tallygate", "billing", "set-customer", tenant, customer],
                              env=_env(db), capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr


def ledger_micro(db: dict, before: datetime | None = None) -> dict[str, int]:
    """floor(ledger cost x 10^6) per tenant (rows created before `before`)."""
    with psycopg.connect(conninfo(db)) as conn:
        rows = conn.execute("SELECT tenant_id, sum(cost_usd) FROM litellm_usage WHERE created_at < %s "
                            "GROUP BY tenant_id", (before or datetime.now(UTC) + HOUR,)).fetchall()
    return {t: int((Decimal(c) * 1_000_000).to_integral_value(rounding=ROUND_FLOOR)) for t, c in rows}


def outbox(db: dict) -> list[dict]:
    with psycopg.connect(conninfo(db)) as conn:
        cur = conn.execute("SELECT * FROM billing_export_outbox ORDER BY window_start, identifier")
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def hours_ago(n: float) -> datetime:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return now - timedelta(hours=n)


# -- Stripe ---------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_crash_between_sends_then_resume_counts_every_row_once(gateway, export_db, stripe_fake, api):
    """Rows through a real gateway into Postgres, 1-second windows; the exporter is killed
    (SIGKILL) right after Stripe took events it never confirmed (v1: one event; v2: a meter
    event stream call); the next run resends exactly the unconfirmed ones (Stripe drops the
    duplicates) and the exported micro-USD per customer equal floor(the tenant's ledger sum
    x 10^6)."""
    gw = gateway(**export_db)
    tenants = [f"crash{i}-{uuid.uuid4().hex[:6]}" for i in range(4)]  # 4: each tenant gets priced models too
    customers = {t: f"cus_{uuid.uuid4().hex[:14]}" for t in tenants}
    set_customers(export_db, customers)
    for _ in range(3):  # several 1-second windows per tenant
        send_mixed(gw, 12, tuple(tenants))
        threading.Event().wait(1.1)
    gw.stop()
    wait_until(lambda: sum(ledger_micro(export_db).values()) > 0, message="ledger rows")
    threading.Event().wait(1.5)  # the last window closes and settles (--settle 1s)

    stripe_fake.stall_after = 4  # the call taking the 5th event is taken, then never answered
    # v2: one window per transaction, so each stream call carries one window's events
    args = ("--window", "1s", "--settle", "1s", *(("--batch", "1") if api == "v2" else ()))
    proc = start_export(export_db, "stripe", *args, "--since", "1h", fake=stripe_fake,
                        TALLYGATE_STRIPE_METER_API=api)
    wait_until(lambda: len(stripe_fake.events) >= 5, timeout=60, message="five events at Stripe")
    threading.Event().wait(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    unsent = [r for r in outbox(export_db) if r["sent_at"] is None]
    assert unsent, "the kill left events unsent in the outbox"
    taken = {e["identifier"] for e in stripe_fake.events}
    unconfirmed = [r["identifier"] for r in unsent if r["identifier"] in taken]  # taken by Stripe, not confirmed
    assert unconfirmed and all(r["first_attempt_at"] is not None for r in unsent if r["identifier"] in taken)
    if api == "v1":
        assert unconfirmed == [stripe_fake.events[4]["identifier"]] == [unsent[0]["identifier"]]
    else:
        assert stripe_fake.stream_calls >= 2 and len(unconfirmed) == stripe_fake.stream_batches[-1]

    stripe_fake.stall_after = None
    status, out = export(export_db, "stripe", *args, fake=stripe_fake, TALLYGATE_STRIPE_METER_API=api)
    assert status == 0, out
    if api == "v1":
        assert "already at Stripe 1" in out, out
    else:
        assert "meter event stream call(s)" in out, out
    assert stripe_fake.duplicates == len(unconfirmed)
    rows = outbox(export_db)
    assert rows and all(r["sent_at"] is not None for r in rows)
    idents = [e["identifier"] for e in stripe_fake.events]
    assert len(idents) == len(set(idents)) == len(rows)
    ledger = ledger_micro(export_db)
    assert stripe_fake.totals() == {customers[t]: ledger[t] for t in tenants}
    assert all(v > 0 for v in ledger.values())
    assert stripe_fake.error_reports == []

    # a third run finds nothing new
    status, out = export(export_db, "stripe", *args, fake=stripe_fake, TALLYGATE_STRIPE_METER_API=api)
    assert status == 0 and len(stripe_fake.events) == len(rows), out


def test_v2_stream_batches_renews_expired_sessions_and_waits_out_429s(export_db, stripe_fake):
    """150 events (30 tenants x 5 windows) on the v2 stream: calls of at most 100 events,
    a session token that expires after each call (renewed, the same events sent again), a
    429 and a 500 mid-export waited out; every value lands once, to the micro-dollar."""
    tenants = [f"v2s{i:02d}-{uuid.uuid4().hex[:4]}" for i in range(30)]
    customers = {t: f"cus_v2s{i:02d}abcdef" for i, t in enumerate(tenants)}
    set_customers(export_db, customers)
    insert_rows(export_db, [(t, hours_ago(h) + timedelta(minutes=i), f"0.00{i + 1}23456")
                            for i, t in enumerate(tenants) for h in range(2, 7)])
    stripe_fake.session_calls = 1
    stripe_fake.rate_limit_every = 3
    stripe_fake.fail_every = 4
    status, out = export(export_db, "stripe", "--since", "8h", "--settle", "1s", fake=stripe_fake,
                         TALLYGATE_STRIPE_METER_API="v2")
    assert status == 0, out
    assert stripe_fake.stream_batches == [100, 50], stripe_fake.stream_batches
    assert stripe_fake.expired >= 1 and stripe_fake.sessions >= 2, out
    assert stripe_fake.rate_limited >= 1 and stripe_fake.server_errors >= 1, out
    assert "sent 150 in 2 meter event stream call(s)" in out, out
    ledger = ledger_micro(export_db)
    assert stripe_fake.totals() == {customers[t]: ledger[t] for t in tenants}
    assert len({e["identifier"] for e in stripe_fake.events}) == 150 and stripe_fake.duplicates == 0
    assert all(r["sent_at"] is not None for r in outbox(export_db))
    assert {e["timestamp"] for e in stripe_fake.events} == {int(hours_ago(h).timestamp()) for h in range(2, 7)}


def test_v2_partial_failure_keeps_the_rest_for_the_next_run(export_db, stripe_fake):
    """The first stream call (100 events) is taken, then Stripe answers 500 to every call: the run stops
    (exit 1) with the first call's events marked sent and the rest unsent; the next run sends
    the rest, each event once."""
    tenants = [f"v2p{i:02d}-{uuid.uuid4().hex[:4]}" for i in range(21)]
    customers = {t: f"cus_v2p{i:02d}abcdef" for i, t in enumerate(tenants)}
    set_customers(export_db, customers)
    insert_rows(export_db, [(t, hours_ago(h) + timedelta(seconds=i), "0.05")
                            for i, t in enumerate(tenants) for h in range(2, 7)])  # 105 events
    stripe_fake.fail_after = 1
    status, out = export(export_db, "stripe", "--since", "8h", "--settle", "1s", fake=stripe_fake,
                         TALLYGATE_STRIPE_METER_API="v2")
    assert status == 1 and "Stripe is not reachable" in out and "stay in the outbox" in out, out
    rows = outbox(export_db)
    assert sum(r["sent_at"] is not None for r in rows) == 100 and len(rows) == 105
    # the refused call may have landed (a 500): its events keep their first attempt
    assert all(r["first_attempt_at"] is not None for r in rows)
    stripe_fake.fail_after = None
    status, out = export(export_db, "stripe", "--settle", "1s", fake=stripe_fake, TALLYGATE_STRIPE_METER_API="v2")
    assert status == 0, out
    assert stripe_fake.totals() == {c: 250000 for c in customers.values()} and stripe_fake.duplicates == 0
    assert len(stripe_fake.events) == 105


def test_a_resend_past_the_dedupe_window_waits_for_an_operator(export_db, stripe_fake):
    """Stripe drops a repeated identifier within 24 hours only. An event offered to Stripe
    (which may have taken it: the connection failed) and still unsent 23+ hours later is not
    sent again: it is marked for review, the run exits 1 and says so, `billing status`
    counts it, `billing review` lists it; --resend sends it on the next run, --sent closes it."""
    from support import free_port

    a, b = f"rv1-{uuid.uuid4().hex[:6]}", f"rv2-{uuid.uuid4().hex[:6]}"
    set_customers(export_db, {a: "cus_review00001", b: "cus_review00002"})
    insert_rows(export_db, [(a, hours_ago(3), "0.5"), (b, hours_ago(3), "0.25")])
    status, out = export(export_db, "stripe", "--since", "4h", "--settle", "1s", fake=stripe_fake,
                         STRIPE_API_BASE=f"http://127.0.0.1:{free_port()}")  # nothing listens: it may have landed
    assert status == 1 and "Stripe is not reachable" in out, out
    rows = outbox(export_db)
    # the event in flight keeps its first attempt; the one never offered does not
    assert [r["first_attempt_at"] is not None for r in rows].count(True) == 1, rows
    with psycopg.connect(conninfo(export_db), autocommit=True) as conn:
        conn.execute("UPDATE billing_export_outbox SET first_attempt_at = now() - interval '25 hours'")
    status, out = export(export_db, "stripe", "--settle", "1s", fake=stripe_fake)
    assert status == 1 and "needs review: 2 event(s)" in out and "tallygate billing review" in out, out
    assert stripe_fake.calls == 0  # nothing sent again
    assert "needs review: first offered to Stripe at" in out  # the log line (alertable)
    shown = subprocess.run([sys.executable, "-m", "tallygate", "billing", "status"], env=_env(export_db),
                           capture_output=True, text=True, timeout=30)
    assert "outbox: 0 sent, 2 unsent" in shown.stdout and "needs review: 2" in shown.stdout, shown
    status, out = export(export_db, "stripe", "--settle", "1s", fake=stripe_fake)
    assert status == 0 and stripe_fake.calls == 0, out  # set aside: later runs leave them be

    def review(*args: str) -> tuple[int, str]:
        done = subprocess.run([sys.executable, "-m", "tallygate", "billing", "review", *args], env=_env(export_db),
                              capture_output=True, text=True, timeout=30)
        return done.returncode, done.stdout + done.stderr

    status, listed = review()
    ident = {r["tenant_id"]: r["identifier"] for r in outbox(export_db)}
    assert status == 0 and ident[a] in listed and ident[b] in listed and "cus_review00001" in listed, listed
    status, said = review("--resend", ident[a])
    assert status == 0 and "will be sent by the next run" in said, said
    status, said = review("--sent", ident[b], "tg-unknown")
    assert status == 1 and "marked sent" in said and "tg-unknown: not waiting for review" in said, said
    assert review("--resend")[0] != 0  # identifiers are needed
    status, out = export(export_db, "stripe", "--settle", "1s", fake=stripe_fake)
    assert status == 0, out
    assert stripe_fake.totals() == {"cus_review00001": 500000}  # b was settled by hand, never resent
    assert all(r["sent_at"] is not None for r in outbox(export_db))
    assert review()[1].strip() == "no event needs review"


def test_stripe_meter_api_setting_is_checked(export_db):
    status, out = export(export_db, "stripe", "--settle", "1s", STRIPE_API_KEY="sk_test_x",
                         TALLYGATE_STRIPE_METER_API="v3")
    assert status == 1 and "TALLYGATE_STRIPE_METER_API must be v1" in out and "Traceback" not in out, out
    status, out = export(export_db, "stripe", "--settle", "1s", STRIPE_API_KEY="sk_test_x",
                         STRIPE_METER_EVENTS_BASE="meter-events.example")
    assert status == 1 and "STRIPE_METER_EVENTS_BASE must be an http(s) URL" in out, out


def test_carry_late_rows_and_exact_totals(export_db, stripe_fake):
    """Sub-micro costs are carried to the tenant's next window; a row ingested after its
    window was exported comes as a top-up event (sequence 1) of that window."""
    tenant = f"carry-{uuid.uuid4().hex[:6]}"
    customer = "cus_carry0001"
    set_customers(export_db, {tenant: customer})
    # 0.4 micro-dollars in each of three windows: nothing to send for the first two (0.8 carried)
    insert_rows(export_db, [(tenant, hours_ago(3) + timedelta(minutes=5), "0.0000004"),
                            (tenant, hours_ago(2) + timedelta(minutes=5), "0.0000004"),
                            (tenant, hours_ago(1) + timedelta(minutes=5), "0.0000004"),
                            (tenant, hours_ago(1) + timedelta(minutes=9), "1.2345677")])
    status, out = export(export_db, "stripe", "--since", "4h", "--settle", "1s", fake=stripe_fake)
    assert status == 0, out
    assert [e["value"] for e in stripe_fake.events] == [1234568]  # floor(1.2345689 x 10^6), 0.9 carried
    assert stripe_fake.events[0]["identifier"].endswith(":0")
    assert stripe_fake.events[0]["timestamp"] == int((hours_ago(1)).timestamp())  # the window's start

    # a late row (buffered ledger flushed after an outage) in the window already exported
    insert_rows(export_db, [(tenant, hours_ago(1) + timedelta(minutes=30), "0.0000017")])
    status, out = export(export_db, "stripe", "--settle", "1s", fake=stripe_fake)
    assert status == 0, out
    top_up = stripe_fake.events[-1]
    assert top_up["identifier"].endswith(":1") and top_up["value"] == 2  # 0.9 carried + 1.7 = 2.6
    assert stripe_fake.totals() == {customer: ledger_micro(export_db)[tenant]} == {customer: 1234570}

    with psycopg.connect(conninfo(export_db)) as conn:
        cursor = conn.execute("SELECT exported_before FROM ledger_export_cursors WHERE name = 'stripe'").fetchone()
    assert cursor[0] == hours_ago(0)  # the end of the last closed window

    # the window setting is the export's: another would count windows twice
    status, out = export(export_db, "stripe", "--window", "15m", "--settle", "1s", fake=stripe_fake)
    assert status == 1 and "3600-second windows" in out, out


def test_values_stripe_would_refuse_stop_the_run_before_anything_is_written(export_db, stripe_fake):
    tenant = f"big-{uuid.uuid4().hex[:6]}"
    set_customers(export_db, {tenant: "cus_big0000001"})
    # 11 x 99,999,999 USD in one window: 1.1 x 10^15 micro-USD, 16 digits
    insert_rows(export_db, [(tenant, hours_ago(2) + timedelta(minutes=i), "99999999") for i in range(11)])
    status, out = export(export_db, "stripe", "--since", "3h", "--settle", "1s", fake=stripe_fake)
    assert status == 1 and "more than 15 digits" in out, out
    assert stripe_fake.calls == 0 and outbox(export_db) == []


def test_billing_keys_are_secrets_the_log_scrubs():
    from tallygate import settings

    loaded = settings.load({"STRIPE_API_KEY": "sk_live_abc123secret", "OPENMETER_API_KEY": "om_secret_456"})
    assert {"sk_live_abc123secret", "om_secret_456"} <= set(loaded.secrets)


def test_micro_usd_and_identifiers():
    from tallygate.billing.windows import identifier, micro_usd

    assert micro_usd(Decimal("0.0000009999")) == 0
    assert micro_usd(Decimal("1.2345679")) == 1234567
    assert micro_usd(Decimal("0")) == 0
    start = datetime(2026, 12, 1, 10, tzinfo=UTC)
    short = identifier("0a1b2c3d", "stripe", "tallygate_cost_micro_usd", "acme", start, 2)
    assert short == f"tg-0a1b2c3d:stripe:tallygate_cost_micro_usd:acme:{int(start.timestamp())}:2"
    long_a = identifier("0a1b2c3d", "stripe", "tallygate_cost_micro_usd", "t" * 128, start, 0)
    long_b = identifier("0a1b2c3d", "stripe", "tallygate_cost_micro_usd", "t" * 127 + "u", start, 0)
    assert len(long_a) <= 100 and len(long_b) <= 100 and long_a != long_b
    assert identifier("0a1b2c3d", "stripe", "tallygate_cost_micro_usd", "t" * 128, start, 0) == long_a  # stable
    # another ledger (staging sharing the Stripe account) never sends the same identifier
    assert identifier("99aa88bb", "stripe", "tallygate_cost_micro_usd", "acme", start, 2) != short


def test_session_expiry_and_stream_timestamps():
    from tallygate.billing.stripe_send import _rfc3339, session_expiry

    at = datetime(2024, 6, 1, 12, 15, tzinfo=UTC)
    assert session_expiry("2024-06-01T12:15:00.000Z") == at == session_expiry(int(at.timestamp()))
    assert _rfc3339(int(at.timestamp())) == "2024-06-01T12:15:00.000Z"


def test_dry_run_sends_and_saves_nothing(export_db, stripe_fake):
    tenant = f"dry-{uuid.uuid4().hex[:6]}"
    set_customers(export_db, {tenant: "cus_dry000001"})
    insert_rows(export_db, [(tenant, hours_ago(2), "0.5")])
    status, out = export(export_db, "stripe", "--since", "3h", "--dry-run", "--settle", "1s")  # no key needed
    assert status == 0, out
    assert "dry run" in out and "tallygate_cost_micro_usd=500000" in out and "cus_dry000001" in out, out
    assert stripe_fake.calls == 0 and outbox(export_db) == []
    with psycopg.connect(conninfo(export_db)) as conn:
        assert conn.execute("SELECT count(*) FROM billing_export_state").fetchone()[0] == 0


def test_rate_limits_are_waited_out_and_tokens_meter(export_db, stripe_fake):
    tenants = [f"rl{i}-{uuid.uuid4().hex[:6]}" for i in range(4)]
    set_customers(export_db, {t: f"cus_rl{i}abcdef" for i, t in enumerate(tenants)})
    insert_rows(export_db, [(t, hours_ago(2) + timedelta(minutes=i), "0.01") for i, t in enumerate(tenants)])
    stripe_fake.rate_limit_every = 3  # every third request: 429 rate_limit
    status, out = export(export_db, "stripe", "--since", "3h", "--settle", "1s", fake=stripe_fake,
                         TALLYGATE_STRIPE_TOKENS_METER_EVENT="tallygate_tokens")
    assert status == 0, out
    assert stripe_fake.rate_limited >= 2 and "429s waited out" in out
    assert stripe_fake.totals() == {f"cus_rl{i}abcdef": 10000 for i in range(4)}
    assert stripe_fake.totals("tallygate_tokens") == {f"cus_rl{i}abcdef": 15 for i in range(4)}


def test_tenant_without_customer_is_held_then_exported(export_db, stripe_fake):
    tenant = f"held-{uuid.uuid4().hex[:6]}"
    insert_rows(export_db, [(tenant, hours_ago(2), "0.25")])
    status, out = export(export_db, "stripe", "--since", "3h", "--settle", "1s", fake=stripe_fake)
    assert status == 0, out
    assert f"held: tenant {tenant!r} has no Stripe customer" in out, out
    assert stripe_fake.events == []
    shown = subprocess.run([sys.executable, "-m", "tallygate", "billing", "status"], env=_env(export_db),
                           capture_output=True, text=True, timeout=30)
    assert "outbox: 0 sent, 1 unsent (1 held: no Stripe customer, 0 refused by Stripe)" in shown.stdout, shown
    set_customers(export_db, {tenant: "cus_heldlater01"})
    status, out = export(export_db, "stripe", "--settle", "1s", fake=stripe_fake)
    assert status == 0, out
    assert stripe_fake.totals() == {"cus_heldlater01": 250000}


def test_wrong_key_is_a_clear_error_and_loses_nothing(export_db, stripe_fake):
    tenant = f"auth-{uuid.uuid4().hex[:6]}"
    set_customers(export_db, {tenant: "cus_auth000001"})
    insert_rows(export_db, [(tenant, hours_ago(2), "0.3")])
    status, out = export(export_db, "stripe", "--since", "3h", "--settle", "1s", fake=stripe_fake,
                         STRIPE_API_KEY="sk_test_wrong_key_999")
    assert status == 1 and "Stripe refused the API key" in out, out
    assert "sk_test_wrong_key_999" not in out
    status, out = export(export_db, "stripe", "--settle", "1s")  # no STRIPE_API_KEY at all
    assert status == 1 and "STRIPE_API_KEY is not set" in out and "Traceback" not in out, out
    status, out = export(export_db, "stripe", "--settle", "1s", fake=stripe_fake)
    assert status == 0, out
    assert stripe_fake.totals() == {"cus_auth000001": 300000}


def test_stripe_unreachable_keeps_the_outbox_for_the_next_run(export_db, stripe_fake):
    from support import free_port

    tenant = f"down-{uuid.uuid4().hex[:6]}"
    set_customers(export_db, {tenant: "cus_down000001"})
    insert_rows(export_db, [(tenant, hours_ago(2), "0.75")])
    status, out = export(export_db, "stripe", "--since", "3h", "--settle", "1s", fake=stripe_fake,
                         STRIPE_API_BASE=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert status == 1 and "Stripe is not reachable" in out, out
    assert [r["sent_at"] for r in outbox(export_db)] == [None]  # accounted, waiting
    status, out = export(export_db, "stripe", "--settle", "1s", fake=stripe_fake)
    assert status == 0, out
    assert stripe_fake.totals() == {"cus_down000001": 750000} and len(stripe_fake.events) == 1


def test_two_exporters_one_leader(export_db, stripe_fake):
    """Two `--loop` exporters on one database: one holds the advisory lock and exports,
    the other stands by; every event reaches Stripe once."""
    tenant = f"lead-{uuid.uuid4().hex[:6]}"
    set_customers(export_db, {tenant: "cus_leader0001"})
    insert_rows(export_db, [(tenant, hours_ago(2) + timedelta(minutes=i), "0.001") for i in range(5)])
    procs = [start_export(export_db, "stripe", "--since", "3h", "--settle", "1s", "--loop", "--interval", "1s",
                          fake=stripe_fake) for _ in range(2)]
    try:
        wait_until(lambda: stripe_fake.events, timeout=30, message="an event at Stripe")
        threading.Event().wait(3)  # a few rounds of both
    finally:
        outs = []
        for p in procs:
            p.send_signal(signal.SIGTERM)
            outs.append(p.communicate(timeout=10)[0])
    assert sum("another exporter leads" in o for o in outs) == 1, outs
    assert stripe_fake.totals() == {"cus_leader0001": 5000}
    assert stripe_fake.duplicates == 0 and len(stripe_fake.events) == 1


# -- the tenant's Stripe customer (admin API) ----------------------------------------


def test_admin_put_stripe_customer_is_a_partial_update(gateway, export_db):
    gw = gateway(**export_db)
    tenant = f"adm-{uuid.uuid4().hex[:6]}"
    url = f"{gw.url}/admin/tenants/{tenant}"
    status, _, doc = admin_call(url, "PUT", {"rpm_limit": 50, "budget_usd": "10"})
    assert status == 200 and doc["stripe_customer_id"] is None, doc
    status, _, doc = admin_call(url, "PUT", {"stripe_customer_id": "cus_Adm123"})
    assert status == 200, doc
    assert doc["stripe_customer_id"] == "cus_Adm123" and doc["rpm_limit"] == 50 and doc["budget_usd"] == "10"
    status, _, doc = admin_call(url, "PUT", {"rpm_limit": 70})  # limits replaced, the customer kept
    assert status == 200 and doc["rpm_limit"] == 70 and doc["budget_usd"] is None
    assert doc["stripe_customer_id"] == "cus_Adm123"
    status, _, listed = admin_call(gw.url + "/admin/tenants")
    mine = [t for t in listed["data"] if t["tenant_id"] == tenant]
    assert mine == [{**doc}], mine
    status, _, err = admin_call(url, "PUT", {"stripe_customer_id": "not a customer"})
    assert status == 400 and err["error"]["code"] == "invalid_parameter", err
    status, _, doc = admin_call(url, "PUT", {"stripe_customer_id": None})
    assert status == 200 and doc["stripe_customer_id"] is None and doc["rpm_limit"] == 70
    status, _, err = admin_call(url, "PUT", {"stripe_customer_id": "cus_x"}, token="wrong")
    assert status == 401
    assert MASTER not in str(err)


# -- OpenMeter ------------------------------------------------------------------------


def test_openmeter_events_are_the_rows_once(gateway, export_db):
    fake = FakeOpenMeter()
    try:
        gw = gateway(**export_db)
        tenants = (f"om1-{uuid.uuid4().hex[:6]}", f"om2-{uuid.uuid4().hex[:6]}")
        send_mixed(gw, 30, tenants)
        gw.stop()
        threading.Event().wait(1.2)
        env = {"OPENMETER_URL": fake.url, "OPENMETER_API_KEY": fake.api_key}
        fake.fail_after = 2  # the third batch fails: the export stops, the cursor stays after batch 2
        status, out = export(export_db, "openmeter", "--since", "1h", "--settle", "1s", "--batch", "7", **env)
        assert status == 1 and "503" in out, out
        assert len(fake.events) == 14
        fake.fail_after = None
        fake.rate_limit_every = 2
        status, out = export(export_db, "openmeter", "--settle", "1s", "--batch", "7", **env)
        assert status == 0, out
        assert fake.rate_limited >= 1 and "429s waited out" in out, out
        fake.rate_limit_every = 0
        with psycopg.connect(conninfo(export_db)) as conn:
            rows = conn.execute("SELECT request_id, tenant_id, cost_usd, total_tokens FROM litellm_usage").fetchall()
        assert sorted(e["id"] for e in fake.events) == sorted(r[0] for r in rows)
        by_id = {e["id"]: e for e in fake.events}
        for rid, tenant, cost, total in rows:
            e = by_id[rid]
            assert e["subject"] == tenant and e["source"] == "tallygate" and e["specversion"] == "1.0"
            assert Decimal(e["data"]["cost_usd"]) == cost and e["data"]["total_tokens"] == total
        status, out = export(export_db, "openmeter", "--settle", "1s", **env)
        assert status == 0 and "sent 0 event(s)" in out, out
        status, out = export(export_db, "openmeter", "--settle", "1s", OPENMETER_URL=fake.url,
                             OPENMETER_API_KEY="om_wrong")
        assert status == 0, out  # nothing left to send: the key is not even needed
    finally:
        fake.stop()


# -- SQLite (the embedded default) -------------------------------------------------------


def test_sqlite_ledger_exports_both_ways(gateway, tmp_path, stripe_fake):
    """The same exports from the default SQLite ledger: rows through a gateway, Stripe
    micro-USD equal to the ledger's floor per tenant, OpenMeter one event per row."""
    path = tmp_path / "ledger.db"
    db = {"TALLYGATE_SQLITE_PATH": str(path)}
    gw = gateway(**db)
    tenants = (f"sq1-{uuid.uuid4().hex[:6]}", f"sq2-{uuid.uuid4().hex[:6]}")
    send_mixed(gw, 16, tenants)
    gw.stop()
    set_customers(db, {tenants[0]: "cus_sqlite0001", tenants[1]: "cus_sqlite0002"})
    threading.Event().wait(2.1)
    status, out = export(db, "stripe", "--window", "1s", "--settle", "1s", "--since", "1h", fake=stripe_fake)
    assert status == 0, out
    conn = sqlite3.connect(path)
    sums: dict[str, Decimal] = {}
    ids = []
    for rid, tenant, cost, ingested in conn.execute(
            "SELECT request_id, tenant_id, cost_usd, ingested_at FROM litellm_usage"):
        sums[tenant] = sums.get(tenant, Decimal(0)) + Decimal(cost)
        ids.append(rid)
        assert ingested and ingested.endswith("Z") and len(ingested) == len("2026-01-01T00:00:00.000000Z")
    conn.close()
    expected = {f"cus_sqlite000{i + 1}": int((sums[t] * 1_000_000).to_integral_value(rounding=ROUND_FLOOR))
                for i, t in enumerate(tenants)}
    assert stripe_fake.totals() == expected and all(expected.values())
    again = len(stripe_fake.events)
    status, out = export(db, "stripe", "--window", "1s", "--settle", "1s", fake=stripe_fake)
    assert status == 0 and len(stripe_fake.events) == again, out

    fake = FakeOpenMeter()
    try:
        status, out = export(db, "openmeter", "--since", "1h", "--settle", "1s", "--batch", "5",
                             OPENMETER_URL=fake.url, OPENMETER_API_KEY=fake.api_key)
        assert status == 0, out
        assert sorted(e["id"] for e in fake.events) == sorted(ids) and fake.duplicates == 0
    finally:
        fake.stop()


def test_export_loop_inside_two_gateways(gateway, export_db, stripe_fake):
    """TALLYGATE_BILLING_EXPORT=stripe: two gateways on one database, each with the export
    loop in a thread; one leads, and the micro-USD at Stripe reach the ledger's floor per
    tenant, each event once."""
    tenants = (f"in1-{uuid.uuid4().hex[:6]}", f"in2-{uuid.uuid4().hex[:6]}", f"in3-{uuid.uuid4().hex[:6]}")
    customers = {t: f"cus_in{i}{uuid.uuid4().hex[:8]}" for i, t in enumerate(tenants)}
    set_customers(export_db, customers)
    loop_env = {"TALLYGATE_BILLING_EXPORT": "stripe", "TALLYGATE_BILLING_WINDOW": "1s",
                "TALLYGATE_BILLING_SETTLE": "1s", "TALLYGATE_BILLING_INTERVAL": "1s",
                "STRIPE_API_KEY": stripe_fake.api_key, "STRIPE_API_BASE": stripe_fake.url}
    gws = [gateway(**export_db, **loop_env) for _ in range(2)]
    send_mixed(gws[0], 10, tenants)
    send_mixed(gws[1], 10, tenants)

    def exported() -> bool:
        ledger = ledger_micro(export_db)
        return bool(ledger) and stripe_fake.totals() == {customers[t]: v for t, v in ledger.items() if v}

    wait_until(exported, timeout=40, message="Stripe totals equal to the ledger's")
    idents = [e["identifier"] for e in stripe_fake.events]
    assert len(idents) == len(set(idents)) and stripe_fake.duplicates == 0
    logs = [line for gw in gws for line in gw.lines() if "another exporter leads" in str(line.get("message"))]
    assert len(logs) == 1, logs  # the standby said so once
    with psycopg.connect(conninfo(export_db)) as conn:
        assert conn.execute("SELECT count(*) FROM billing_export_outbox WHERE sent_at IS NULL").fetchone()[0] == 0


def test_bad_export_setting_stops_gateway_start(gateway, export_db):
    with pytest.raises(RuntimeError, match="STRIPE_API_KEY is not set"):  # the gateway exits at start-up
        gateway(**export_db, TALLYGATE_BILLING_EXPORT="stripe")


def test_sqlite_ledger_v2_stream_and_review(gateway, tmp_path, stripe_fake):
    """The v2 stream and the dedupe-window rule on the SQLite ledger: every stream call
    answered 500 (the events may have landed), their first attempt set back 25 hours, the
    next run sets them aside; `billing review --resend` and the run after send each once,
    exactly the ledger's micro-USD per tenant."""
    from tallygate.store.dialect import SQLITE

    path = tmp_path / "ledger.db"
    db = {"TALLYGATE_SQLITE_PATH": str(path)}
    gw = gateway(**db)
    tenants = (f"sv1-{uuid.uuid4().hex[:6]}", f"sv2-{uuid.uuid4().hex[:6]}")
    send_mixed(gw, 12, tenants)
    gw.stop()
    set_customers(db, {tenants[0]: "cus_sqlitev201", tenants[1]: "cus_sqlitev202"})
    threading.Event().wait(2.1)
    v2 = {"TALLYGATE_STRIPE_METER_API": "v2"}
    stripe_fake.fail_after = 0  # every stream call: 500
    status, out = export(db, "stripe", "--window", "1s", "--settle", "1s", "--since", "1h", fake=stripe_fake, **v2)
    assert status == 1 and "Stripe is not reachable" in out, out
    conn = sqlite3.connect(path)
    with conn:
        firsts = [r[0] for r in conn.execute("SELECT first_attempt_at FROM billing_export_outbox")]
        assert firsts and all(firsts), firsts
        conn.execute("UPDATE billing_export_outbox SET first_attempt_at = ?",
                     (SQLITE.time_param(datetime.now(UTC) - timedelta(hours=25)),))
    stripe_fake.fail_after = None
    status, out = export(db, "stripe", "--window", "1s", "--settle", "1s", fake=stripe_fake, **v2)
    assert status == 1 and f"needs review: {len(firsts)} event(s)" in out and stripe_fake.events == [], out
    idents = [r[0] for r in conn.execute("SELECT identifier FROM billing_export_outbox WHERE needs_review_at IS NOT NULL")]
    assert len(idents) == len(firsts)
    done = subprocess.run([sys.executable, "-m", "tallygate", "billing", "review", "--resend", *idents],
                          env=_env(db), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    status, out = export(db, "stripe", "--window", "1s", "--settle", "1s", fake=stripe_fake, **v2)
    assert status == 0, out
    sums: dict[str, Decimal] = {}
    for tenant, cost in conn.execute("SELECT tenant_id, cost_usd FROM litellm_usage"):
        sums[tenant] = sums.get(tenant, Decimal(0)) + Decimal(cost)
    assert conn.execute("SELECT count(*) FROM billing_export_outbox WHERE sent_at IS NULL").fetchone()[0] == 0
    conn.close()
    expected = {f"cus_sqlitev20{i + 1}": int((sums[t] * 1_000_000).to_integral_value(rounding=ROUND_FLOOR))
                for i, t in enumerate(tenants)}
    assert stripe_fake.totals() == expected and all(expected.values())
    assert len(stripe_fake.events) == len(firsts) and stripe_fake.duplicates == 0


def test_first_attempts_kept_only_for_what_stripe_may_have(tmp_path):
    """The outbox's first-attempt times on the SQLite ledger, with a sender that refuses two
    events, takes one, then stops the run on one that may have landed: a refusal and events
    not taken keep no first attempt from this run; the one in flight keeps it, and so does
    one an earlier run offered (that attempt may have landed)."""
    from tallygate.billing.db import SqliteExportDB
    from tallygate.billing.stripe_export import send_unsent
    from tallygate.billing.stripe_send import Sent, Undelivered

    path = tmp_path / "ledger.db"
    done = subprocess.run([sys.executable, "-m", "tallygate", "db", "init"], capture_output=True, text=True,
                          env=_env({"TALLYGATE_SQLITE_PATH": str(path)}), timeout=60)
    assert done.returncode == 0, done.stderr
    db = SqliteExportDB(str(path))
    start = hours_ago(2)
    db.executemany(
        "INSERT INTO billing_export_outbox (identifier, name, tenant_id, window_start, seq, event_name, value, "
        "customer_id, created_at) VALUES (?, 'stripe', 't', ?, 0, 'tallygate_cost_micro_usd', 5, 'cus_t', ?)",
        [(f"id{i}", db.dialect.time_param(start), db.dialect.time_param(start)) for i in range(6)],
    )
    earlier = db.dialect.time_param(datetime.now(UTC) - HOUR)  # id5: offered by an earlier run, maybe landed
    db.execute("UPDATE billing_export_outbox SET first_attempt_at = ? WHERE identifier = 'id5'", (earlier,))

    class Sender:
        def send(self, chunk, marks, sent):
            assert [(e.identifier, e.fresh) for e in chunk] == [(f"id{i}", i < 5) for i in range(6)]
            marks.refused("id0", "No such customer: 'cus_t'")
            marks.refused("id5", "No such customer: 'cus_t'")  # says nothing of the earlier run's attempt
            marks.delivered(["id1"])
            raise Undelivered("Stripe is not reachable", ["id3", "id4", "id5"])  # id2 was in flight

    with pytest.raises(Undelivered):
        send_unsent(db, "stripe", Sender(), Sent())
    rows = {r[0]: r[1:] for r in db.fetch(
        "SELECT identifier, first_attempt_at IS NOT NULL, sent_at IS NOT NULL, last_error FROM billing_export_outbox")}
    db.close()
    assert rows == {"id0": (0, 0, "No such customer: 'cus_t'"), "id1": (1, 1, None), "id2": (1, 0, None),
                    "id3": (0, 0, None), "id4": (0, 0, None), "id5": (1, 0, "No such customer: 'cus_t'")}
