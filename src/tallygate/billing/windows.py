"""Stripe's side of the ledger: usage per tenant and window, accounted once, as meter
events written to the outbox in the same transaction.

A pass finds the windows to look at (those closed since the last pass, and those a row
ingested since the last scan falls in), sums each window from the ledger and compares the
sums with what was accounted for it before: the difference is a new event (sequence 0 for
a window's first, 1, 2... for the top-ups late rows bring). Looking at a window twice is
harmless, so the scan overlaps the previous one by the settle time. Rounding (one rule,
docs/billing.md): a tenant's exported micro-USD is always floor(its accounted cost x 10^6),
so each event carries what earlier ones left below a micro-dollar.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal

from .config import STRIPE_MAX_AGE_DAYS, ExportError, ExportOptions
from .db import ExportDB

STRIPE_MAX_VALUE = 10**15  # Stripe refuses values of more than 15 significant digits
MICRO = Decimal(1_000_000)


def micro_usd(cost: Decimal) -> int:
    """Whole micro-dollars in `cost`, rounded down (what is left is carried)."""
    return int((cost * MICRO).to_integral_value(rounding=ROUND_FLOOR))


def identifier(tag: str, export: str, event_name: str, tenant_id: str, window_start: datetime, seq: int) -> str:
    """Stable for one (ledger, export, meter, tenant, window, sequence): a retry sends the
    same one and Stripe refuses it as a duplicate. At most 100 characters (Stripe's limit)."""
    epoch = int(window_start.timestamp())
    text = f"tg-{tag}:{export}:{event_name}:{tenant_id}:{epoch}:{seq}"
    if len(text) <= 100:
        return text
    digest = hashlib.sha256(f"{event_name}\0{tenant_id}".encode()).hexdigest()[:24]
    return f"tg-{tag}:{export}:{digest}:{epoch}:{seq}"[:100]


def floor_time(t: datetime, seconds: int) -> datetime:
    epoch = int(t.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, UTC)


@dataclass
class Sums:
    cost: Decimal = Decimal(0)
    prompt: int = 0
    completion: int = 0
    total: int = 0
    requests: int = 0
    seq: int = -1  # the last sequence accounted; -1: never

    def minus(self, other: Sums) -> Sums:
        return Sums(
            self.cost - other.cost,
            self.prompt - other.prompt,
            self.completion - other.completion,
            self.total - other.total,
            self.requests - other.requests,
        )

    @property
    def zero(self) -> bool:
        return not (self.cost or self.prompt or self.completion or self.total or self.requests)

    @property
    def negative(self) -> bool:
        return self.cost < 0 or min(self.prompt, self.completion, self.total, self.requests) < 0


@dataclass
class TenantAccount:
    cost: Decimal = Decimal(0)  # exact ledger cost accounted
    micro: int = 0  # micro-USD exported for it: floor(cost x 10^6)
    tokens: int = 0
    changed: bool = False


@dataclass(frozen=True)
class Event:
    identifier: str
    tenant_id: str
    window_start: datetime
    seq: int
    event_name: str
    value: int
    customer_id: str | None


@dataclass
class Plan:
    windows: int = 0  # windows looked at
    events: list[Event] = field(default_factory=list)
    accounted: dict[str, Decimal] = field(default_factory=dict)  # tenant -> cost accounted this pass
    shrunk: list[tuple[str, datetime]] = field(default_factory=list)  # ledger below what was exported
    closed_before: datetime | None = None


@dataclass
class State:
    tag: str  # this ledger's, in every identifier (billing_export_state.ledger_tag)
    window_seconds: int
    since: datetime
    closed_before: datetime | None
    scanned_to: datetime | None
    last_request_id: str | None = None
    new: bool = False


def load_state(db: ExportDB, name: str, opts: ExportOptions, now: datetime, align: bool = True) -> State:
    p = db.dialect.placeholder
    rows = db.fetch(
        "SELECT ledger_tag, window_seconds, since, closed_before, scanned_to, last_request_id FROM billing_export_state "
        f"WHERE name = {p}",
        (name,),
    )
    if not rows:
        since = opts.since or now - timedelta(days=STRIPE_MAX_AGE_DAYS)
        if align:
            since = floor_time(since, opts.window_seconds)
        return State(secrets.token_hex(4), opts.window_seconds, since, None, None, None, new=True)
    tag, w, since, closed, scanned, last_id = rows[0]
    if align and w != opts.window_seconds:
        raise ExportError(
            f"the export {name!r} runs with {w}-second windows; --window {opts.window_seconds}s would count "
            "windows twice (use another export name, or the same window)"
        )
    t = db.time
    return State(tag, w, t(since), t(closed) if closed else None, t(scanned) if scanned else None, last_id)


def save_state(db: ExportDB, name: str, state: State, now: datetime) -> None:
    tp = db.dialect.time_param
    db.execute(
        "INSERT INTO billing_export_state (name, ledger_tag, window_seconds, since, closed_before, scanned_to, "
        f"last_request_id, updated_at) VALUES ({db.dialect.placeholders(8)}) ON CONFLICT (name) DO UPDATE SET "
        "closed_before = excluded.closed_before, scanned_to = excluded.scanned_to, "
        "last_request_id = excluded.last_request_id, updated_at = excluded.updated_at",
        (
            name,
            state.tag,
            state.window_seconds,
            tp(state.since),
            tp(state.closed_before),
            tp(state.scanned_to),
            state.last_request_id,
            tp(now),
        ),
    )


def save_cursor(db: ExportDB, name: str, exported_before: datetime, now: datetime) -> None:
    """The shared high-water mark (ledger_export_cursors): what retention may drop."""
    tp = db.dialect.time_param
    db.execute(
        f"INSERT INTO ledger_export_cursors (name, exported_before, updated_at) VALUES ({db.dialect.placeholders(3)}) "
        "ON CONFLICT (name) DO UPDATE SET exported_before = excluded.exported_before, updated_at = excluded.updated_at",
        (name, tp(exported_before), tp(now)),
    )


def exported_before(db: ExportDB, bound: datetime, ingested_after: datetime) -> datetime:
    """`bound`, or earlier when a row not yet looked at (ingested after the horizon) was
    created before it: retention must not drop such a late row before it is exported."""
    p = db.dialect.placeholder
    rows = db.fetch(
        f"SELECT min(created_at) FROM litellm_usage WHERE ingested_at > {p}", (db.dialect.time_param(ingested_after),)
    )
    oldest = rows[0][0] if rows else None
    return min(bound, db.time(oldest)) if oldest is not None else bound


def _window_expr(db: ExportDB) -> str:
    if db.dialect.name == "postgres":
        return "floor(extract(epoch FROM created_at) / %s)::bigint * %s"
    return "(CAST(strftime('%s', created_at) AS INTEGER) / ?) * ?"


def candidate_windows(db: ExportDB, state: State, close: datetime, settle: int) -> list[datetime]:
    """Window starts with rows that may not be accounted yet, oldest first."""
    p, tp, w = db.dialect.placeholder, db.dialect.time_param, state.window_seconds
    prev_close = state.closed_before or state.since
    # overlap the last scan by the settle time: a row whose insert began before the last
    # horizon but committed after it is still found (looking twice counts nothing twice)
    scan_from = state.scanned_to - timedelta(seconds=settle) if state.scanned_to else state.since - timedelta(days=1)
    # two scans, each on its own index (created_at; ingested_at), rather than one OR
    expr = _window_expr(db)
    rows = db.fetch(
        f"SELECT {expr} FROM litellm_usage WHERE created_at >= {p} AND created_at < {p} UNION "
        f"SELECT {expr} FROM litellm_usage WHERE ingested_at > {p} AND created_at >= {p} AND created_at < {p}",
        (w, w, tp(max(prev_close, state.since)), tp(close), w, w, tp(scan_from), tp(state.since), tp(close)),
    )
    return sorted(datetime.fromtimestamp(int(r[0]), UTC) for r in rows)


def plan_windows(
    db: ExportDB,
    name: str,
    state: State,
    windows: list[datetime],
    horizon: datetime,
    cost_event: str,
    tokens_event: str | None,
    plan: Plan,
    now: datetime | None = None,
) -> None:
    """Account `windows` (inside the caller's transaction): window and tenant state, outbox rows."""
    sql, p, tp = db.dialect, db.dialect.placeholder, db.dialect.time_param
    w = timedelta(seconds=state.window_seconds)
    accounts: dict[str, TenantAccount] = {
        r[0]: TenantAccount(db.decimal(r[1]), int(r[2]), int(r[3]))
        for r in db.fetch(
            f"SELECT tenant_id, cost_usd, micro_usd, tokens FROM billing_export_tenants WHERE name = {p}", (name,)
        )
    }
    customers = {r[0]: r[1] for r in db.fetch("SELECT tenant_id, stripe_customer_id FROM tallygate_tenants")}
    first_new = len(plan.events)
    window_rows: list[tuple] = []
    for start in windows:
        plan.windows += 1
        ledger = {
            r[0]: Sums(db.decimal(r[1]), int(r[2] or 0), int(r[3] or 0), int(r[4] or 0), int(r[5]))
            for r in db.fetch(
                f"SELECT tenant_id, {sql.decimal_sum('cost_usd')}, sum(prompt_tokens), sum(completion_tokens), "
                f"sum(total_tokens), count(*) FROM litellm_usage WHERE created_at >= {p} AND created_at < {p} "
                f"AND ingested_at <= {p} GROUP BY tenant_id",
                (tp(start), tp(start + w), tp(horizon)),
            )
        }
        done = {
            r[0]: Sums(db.decimal(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6]))
            for r in db.fetch(
                "SELECT tenant_id, cost_usd, prompt_tokens, completion_tokens, total_tokens, requests, seq "
                f"FROM billing_export_windows WHERE name = {p} AND window_start = {p}",
                (name, tp(start)),
            )
        }
        for tenant, now_sums in sorted(ledger.items()):
            before = done.get(tenant, Sums())
            delta = now_sums.minus(before)
            if delta.zero:
                continue
            if delta.negative:  # rows left the ledger after they were exported: never sent as negative usage
                plan.shrunk.append((tenant, start))
                continue
            seq = before.seq + 1
            account = accounts.setdefault(tenant, TenantAccount())
            micro_after = micro_usd(account.cost + delta.cost)
            value = micro_after - account.micro
            customer = customers.get(tenant)
            if value > 0:
                _check_value(value, tenant, start)
                plan.events.append(
                    Event(
                        identifier(state.tag, name, cost_event, tenant, start, seq),
                        tenant,
                        start,
                        seq,
                        cost_event,
                        value,
                        customer,
                    )
                )
            if tokens_event and delta.total > 0:
                _check_value(delta.total, tenant, start)
                plan.events.append(
                    Event(
                        identifier(state.tag, name, tokens_event, tenant, start, seq),
                        tenant,
                        start,
                        seq,
                        tokens_event,
                        delta.total,
                        customer,
                    )
                )
            account.cost += delta.cost
            account.micro = micro_after
            account.tokens += delta.total
            account.changed = True
            plan.accounted[tenant] = plan.accounted.get(tenant, Decimal(0)) + delta.cost
            window_rows.append(
                (
                    name,
                    tenant,
                    tp(start),
                    sql.decimal_param(now_sums.cost),
                    now_sums.prompt,
                    now_sums.completion,
                    now_sums.total,
                    now_sums.requests,
                    seq,
                    tp(horizon),
                )
            )
    db.executemany(
        "INSERT INTO billing_export_windows (name, tenant_id, window_start, cost_usd, prompt_tokens, "
        "completion_tokens, total_tokens, requests, seq, updated_at) VALUES "
        f"({sql.placeholders(10)}) ON CONFLICT (name, tenant_id, window_start) DO UPDATE SET "
        "cost_usd = excluded.cost_usd, prompt_tokens = excluded.prompt_tokens, "
        "completion_tokens = excluded.completion_tokens, total_tokens = excluded.total_tokens, "
        "requests = excluded.requests, seq = excluded.seq, updated_at = excluded.updated_at",
        window_rows,
    )
    db.executemany(
        "INSERT INTO billing_export_tenants (name, tenant_id, cost_usd, micro_usd, tokens, updated_at) VALUES "
        f"({sql.placeholders(6)}) ON CONFLICT (name, tenant_id) DO UPDATE SET cost_usd = excluded.cost_usd, "
        "micro_usd = excluded.micro_usd, tokens = excluded.tokens, updated_at = excluded.updated_at",
        [
            (name, tenant, sql.decimal_param(a.cost), a.micro, a.tokens, tp(horizon))
            for tenant, a in accounts.items()
            if a.changed
        ],
    )
    write_outbox(db, name, plan.events[first_new:], now or horizon)


def write_outbox(db: ExportDB, name: str, events: list[Event], now: datetime) -> None:
    sql, tp = db.dialect, db.dialect.time_param
    db.executemany(
        "INSERT INTO billing_export_outbox (identifier, name, tenant_id, window_start, seq, event_name, value, "
        f"customer_id, created_at) VALUES ({sql.placeholders(9)})",
        [
            (e.identifier, name, e.tenant_id, tp(e.window_start), e.seq, e.event_name, e.value, e.customer_id, tp(now))
            for e in events
        ],
    )


def _check_value(value: int, tenant: str, start: datetime) -> None:
    if value >= STRIPE_MAX_VALUE:
        raise ExportError(
            f"tenant {tenant!r}, window {start.isoformat()}: a value of {value} has more than 15 digits, which "
            "Stripe refuses; export with a shorter --window"
        )
