"""The Guard: which limits apply to a caller, the worst case a request reserves,
admission, settlement once metered, and what happens when Redis or the database is down."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from ..errors import GatewayError, forbidden, unavailable
from ..metering.bounds import output_bound, request_caps
from ..metering.pricing import Price
from ..metering.usage import Usage
from ..money import usd_text
from ..store import StoreUnavailable
from ..tenants.cache import KeyCache
from ..tenants.model import Limits, period_end, period_start
from ..tenants.store import KeyStore
from .counters import MODE_BALANCE, MODE_BUDGET, MODE_WINDOW, Check, Rejected

log = logging.getLogger("tallygate.limits")

NANO = Decimal(1_000_000_000)
FAIL_OPEN_LOG_INTERVAL = 10.0  # seconds between WARNING lines while limits are failing open
CREDIT_EVENT_TTL = 7 * 86400  # credit_low / credit_exhausted: once per tenant and credited total this long


@dataclass(slots=True)
class Reservation:
    checks: list[Check]
    tokens: int
    cost_nanos: int
    settled: bool = False


def _nanos(cost: Decimal) -> int:
    return int((cost * NANO).to_integral_value(rounding="ROUND_CEILING"))


def _period_key(period: str, now: datetime) -> str:
    if period == "day":
        return now.strftime("d%Y%m%d")
    if period == "month":
        return now.strftime("m%Y%m")
    return "total"


def _outage(exc: BaseException) -> bool:
    """An error of the counters' backend being unreachable (Redis down, a timeout)."""
    return isinstance(exc, (OSError, ConnectionError, asyncio.TimeoutError)) or type(exc).__module__.startswith("redis")


class Guard:
    def __init__(
        self,
        cache: KeyCache,
        keystore: KeyStore,
        prices,
        counters,
        default_max_tokens: int = 32768,
        prefix: str = "tg",
        unpriced_reserve_mtok: Decimal | None = None,
        on_redis_down: str = "closed",
        on_db_down: str = "closed",
        failed_open=None,
        credit_low_usd: Decimal | None = None,
    ) -> None:
        self.cache = cache
        self.credit_low_usd = credit_low_usd  # the credit_low threshold (None: 10% of the last top-up)
        self._credit_events: set[str] = set()  # the events this instance already logged or saw taken
        # "closed": a request whose limits cannot be checked is refused (503); "open": it is
        # admitted unchecked, counted by `failed_open(reason)` and logged
        self.on_redis_down = on_redis_down
        self.on_db_down = on_db_down
        self.failed_open = failed_open
        self._open_since_log: dict[str, int] = {}
        self._open_logged: dict[str, float] = {}
        self.keystore = keystore
        self.prices = prices
        self.counters = counters
        self.default_max_tokens = default_max_tokens  # output cap when neither request nor price data has one
        self.unpriced_reserve_mtok = unpriced_reserve_mtok  # USD per million tokens for routes with no price
        self.prefix = prefix
        self._pending: dict[str, Reservation] = {}
        self._tasks: set[asyncio.Task] = set()

    # -- admission --------------------------------------------------------------
    def _scopes(self, principal) -> list[tuple[str, str, str, Limits]]:
        scopes = []
        limits = self.cache.tenants.get(principal.tenant_id)
        if limits is not None and not limits.empty:
            scopes.append(("tenant", principal.tenant_id, "tenant_id", limits))
        key = principal.key
        if key is not None and not key.limits.empty:
            scopes.append(("key", key.key_id, "api_key_id", key.limits))
        return scopes

    def applies(self, principal) -> bool:
        """Whether the caller has any limit or model list to check (most have none)."""
        if not self.cache.loaded:
            return self._not_loaded()
        return bool(self._scopes(principal)) or principal.tenant_id in self.cache.prepaid

    def _not_loaded(self) -> bool:
        """Tenant limits never loaded (the database down since start-up): nobody can tell
        whether this tenant has limits."""
        if self.on_db_down == "open":
            self._fail_open("limits_not_loaded", "the database has not been reachable since start-up")
            return False
        raise unavailable(
            "Tenant limits are not loaded yet: the database has not been reachable since "
            "this instance started. Retry shortly.",
            "limits_unavailable",
        )

    def _fail_open(self, reason: str, detail: str) -> None:
        if self.failed_open is not None:
            self.failed_open(reason)
        count = self._open_since_log[reason] = self._open_since_log.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._open_logged.get(reason, -FAIL_OPEN_LOG_INTERVAL) >= FAIL_OPEN_LOG_INTERVAL:
            self._open_logged[reason] = now
            self._open_since_log[reason] = 0
            log.warning(
                "limits unavailable; admitting requests without them (fail open)",
                extra={"fields": {"reason": reason, "detail": detail, "requests": count}},
            )

    def _counters_down(self, exc: BaseException) -> None:
        """The counters cannot be reached: refuse (closed) or return to admit unchecked (open)."""
        if self.on_redis_down == "open":
            self._fail_open("redis_down", type(exc).__name__)
            return None
        raise unavailable(
            f"Limits are unavailable: {type(exc).__name__}. Retry shortly.", "limits_unavailable", 1
        ) from None

    def allows(self, principal, model: str) -> bool:
        """Whether the key's and the tenant's model lists (if any) include `model`; a
        fallback model is checked against them like the one asked for."""
        return all(limits.models is None or model in limits.models for *_, limits in self._scopes(principal))

    async def admit(
        self,
        principal,
        model: str,
        doc: dict,
        body: bytes,
        provider: str | None = None,
        upstream_model: str | None = None,
        fallbacks: Sequence[tuple[str | None, str, str | None]] = (),
        endpoint: str = "",
        caps: tuple[int, int] | None = None,
        worst_usd: Decimal | None = None,
    ) -> Reservation | None:
        """Check the caller's limits and reserve the request's worst case. `fallbacks`
        are the (provider, model, upstream model) that may serve it instead: the worst
        case is the dearest of them all. `caps`: request_caps(doc), if already known.
        `worst_usd`: the worst case when the caller priced it (images and audio, by their units)."""
        scopes = self._scopes(principal)
        account = self.cache.prepaid.get(principal.tenant_id)  # a prepaid tenant's credit account
        if not scopes and account is None:
            return None  # the common case: nothing to enforce, no I/O
        for kind, ident, _, limits in scopes:
            if limits.models is not None and model not in limits.models:
                raise forbidden(f"Model {model!r} is not allowed for {kind} {ident}.", "model_not_allowed")
        prompt_estimate = max(1, len(body) // 4)
        cap, choices = caps if caps is not None else request_caps(doc)
        tokens = prompt_estimate + cap * choices
        worst = 0
        # the price data loads with the first limited request (in a thread): settling a
        # reservation waits for its record's price, which would otherwise wait for the load
        await self.prices.ensure_warm()
        if worst_usd is not None:
            worst = _nanos(worst_usd)
        elif account is not None or any(limits.budget_usd is not None for *_, limits in scopes):
            tier = doc.get("service_tier")
            # one token a byte: no byte-level tokenizer makes more tokens than bytes of text
            worst = max(
                self._worst_cost(
                    p,
                    m,
                    u,
                    max(1, len(body)),
                    None,
                    cap=cap,
                    choices=choices,
                    endpoint="/v1" + endpoint if endpoint else "",
                    tier=tier if isinstance(tier, str) else None,
                    cache_writes=b'"cache_control"' in body,
                )
                for p, m, u in [(provider, model, upstream_model), *fallbacks]
            )
        now = time.time()
        minute = int(now // 60)
        utc = datetime.fromtimestamp(now, UTC)
        checks: list[Check] = []
        for kind, ident, column, limits in scopes:
            base = f"{self.prefix}:{kind}:{ident}"
            scope = f"{kind} {ident}"
            if limits.rpm_limit is not None:
                checks.append(
                    Check(
                        f"{base}:rpm:{minute}",
                        limits.rpm_limit,
                        1,
                        120,
                        MODE_WINDOW,
                        "rpm",
                        scope,
                        reset_at=(minute + 1) * 60,
                    )
                )
            if limits.tpm_limit is not None:
                if tokens > limits.tpm_limit:
                    raise GatewayError(
                        429,
                        f"Request too large for {scope}: about {tokens} tokens (prompt estimate plus "
                        f"max_tokens), the limit is {limits.tpm_limit} tokens per minute.",
                        "tokens",
                        "rate_limit_exceeded",
                    )
                checks.append(
                    Check(
                        f"{base}:tpm:{minute}",
                        limits.tpm_limit,
                        tokens,
                        120,
                        MODE_WINDOW,
                        "tpm",
                        scope,
                        reset_at=(minute + 1) * 60,
                    )
                )
            if limits.budget_usd is not None:
                period = limits.budget_period
                end = period_end(period, utc)
                ttl = int(end.timestamp() - now) + 86400 if end else 0
                checks.append(
                    Check(
                        f"{base}:budget:{_period_key(period, utc)}",
                        _nanos(limits.budget_usd),
                        worst,
                        ttl,
                        MODE_BUDGET,
                        "budget",
                        scope,
                        init=(column, ident, period_start(period, utc)),
                        reset_at=end.timestamp() if end else None,
                    )
                )
        if account is not None:
            checks.append(self._credit_check(account, worst))
        for _ in range(3):
            try:
                result = await self.counters.admit(checks)
            except Rejected as r:
                raise self._rejection(r, now) from None
            except Exception as exc:  # Redis down or timing out
                if not _outage(exc):
                    raise
                self._counters_down(exc)  # raises unless failing open
                return None
            if isinstance(result, str):  # a budget counter to start from the ledger
                check = next(c for c in checks if c.key == result)
                try:
                    started = await self._start_budget(check)
                except Exception as exc:  # Redis went down meanwhile
                    if not _outage(exc):
                        raise
                    self._counters_down(exc)  # raises unless failing open
                    return None
                if not started:
                    checks = [c for c in checks if c is not check]  # failing open: unchecked
                    if not checks:
                        return None
                continue
            return Reservation(checks, tokens, worst)
        raise GatewayError(503, "Limits could not be initialised.", "service_unavailable", "limits_unavailable")

    async def admit_request(self, principal) -> None:
        """A call that costs nothing (retrieving a response, a file, a moderation): counted
        against the requests-per-minute limits only; no tokens, no budget reserved."""
        if not self.applies(principal):
            return
        now = time.time()
        minute = int(now // 60)
        checks = [
            Check(
                f"{self.prefix}:{kind}:{ident}:rpm:{minute}",
                limits.rpm_limit,
                1,
                120,
                MODE_WINDOW,
                "rpm",
                f"{kind} {ident}",
                reset_at=(minute + 1) * 60,
            )
            for kind, ident, _, limits in self._scopes(principal)
            if limits.rpm_limit is not None
        ]
        if not checks:
            return
        try:
            await self.counters.admit(checks)
        except Rejected as r:
            raise self._rejection(r, now) from None
        except Exception as exc:
            if not _outage(exc):
                raise
            self._counters_down(exc)  # raises unless failing open

    def prepare_account(self, account) -> None:
        """The account's counter key and credit_low threshold, once per account loaded (the
        cache builds new ones on each refresh)."""
        if not account.counter_key:
            from ..credits.model import low_threshold

            account.low_nanos = _nanos(low_threshold(account, self.credit_low_usd))
            account.counter_key = f"{self.prefix}:credit:{account.tenant_id}:{int(account.prepaid_since.timestamp())}"

    def _credit_check(self, account, worst: int) -> Check:
        """The prepaid balance: spent + reserved + this request's worst case within the credited
        total (nano-dollars, rounded down), the counter started from the ledger's spend since
        the tenant became prepaid (a counter per prepaid_since: it never expires)."""
        self.prepare_account(account)
        return Check(
            account.counter_key,
            account.credited_nanos,
            worst,
            0,
            MODE_BALANCE,
            "credit",
            f"tenant {account.tenant_id}",
            init=("tenant_id", account.tenant_id, account.prepaid_since),
        )

    async def _start_budget(self, check: Check) -> bool:
        """Start a budget counter from the ledger's spend; False: admit without it (open)."""
        assert check.init is not None  # only budget checks start from the ledger
        column, ident, since = check.init
        try:
            spent = await self.keystore.spend_since(column, ident, since)
        except StoreUnavailable:
            if self.on_db_down == "open":
                self._fail_open("ledger_down", f"{check.kind} of {check.scope}")
                return False
            what = "Prepaid balance" if check.kind == "credit" else "Budget"
            raise unavailable(
                f"{what} of {check.scope} cannot be checked: the ledger is not reachable. Retry shortly.",
                "ledger_unavailable",
            ) from None
        await self.counters.init(check.key, _nanos(spent), check.ttl)
        return True

    def _worst_cost(
        self,
        provider: str | None,
        model: str,
        upstream_model: str | None,
        prompt_tokens: int,
        out_tokens: int | None,
        cap: int = 0,
        choices: int = 1,
        endpoint: str = "",
        tier: str | None = None,
        cache_writes: bool = False,
    ) -> int:
        """The most the request can cost: priced like its record will be (the route's
        provider and upstream model; tiered prices through the library), no cache discount.
        `out_tokens` None: the output bound the record is held to (metering/bounds.py).
        A request naming a service tier (`priority`, `flex`) is reserved at the dearer of that
        tier's price and the standard one (the provider may serve it at either). With
        `cache_writes` (the body asks for prompt caching: Anthropic's `cache_control`) the whole
        prompt is reserved as 1-hour cache writes, the dearest input there is (2x the input price).
        A model with no known price is reserved at `unpriced_reserve_mtok`, or refused."""

        def worst(price: Price) -> int:
            out = out_tokens
            if out is None:
                out = output_bound(endpoint, cap, choices, price.context_window, self.default_max_tokens)
            usage = Usage(prompt_tokens, out, prompt_tokens + out)
            if cache_writes:
                usage.cache_write_tokens = usage.cache_write_1h_tokens = prompt_tokens
                return max(
                    _nanos(price.cost(usage)), _nanos(price.cost(Usage(prompt_tokens, out, prompt_tokens + out)))
                )
            return _nanos(price.cost(usage))

        try:
            price = self.prices.price(provider, model, upstream_model)
            if price.source != "unknown":
                if tier is None:
                    return worst(price)
                return max(worst(price), worst(self.prices.price(provider, model, upstream_model, tier)))
        except Exception:
            log.exception("worst-case pricing failed", extra={"fields": {"model": model}})
        rate = self.unpriced_reserve_mtok
        if rate is None:
            raise forbidden(
                f"Model {model!r} has no known price, so its cost cannot be held to a budget: the route "
                "needs an upstream_model or an entry in the price file (TALLYGATE_PRICES_FILE), or the "
                "gateway a TALLYGATE_UNPRICED_RESERVE_MTOK.",
                "model_price_unknown",
            )
        return worst(Price(rate, rate, None, "reserve"))

    def _rejection(self, r: Rejected, now: float) -> GatewayError:
        c = r.check
        retry = max(1, math.ceil(c.reset_at - now)) if c.reset_at else None
        headers = []
        if retry is not None:
            headers.append((b"retry-after", str(retry).encode()))
        if c.kind == "credit":
            return self._no_credit(c, r.current)
        if c.kind == "budget":
            spent = Decimal(r.current) / NANO
            message = (
                f"Budget exceeded for {c.scope}: ${usd_text(spent)} of "
                f"${usd_text(Decimal(c.limit) / NANO)} used this period."
            )
            return GatewayError(429, message, "insufficient_quota", "budget_exceeded", headers)
        unit = "requests" if c.kind == "rpm" else "tokens"
        headers += [
            (f"x-ratelimit-limit-{unit}".encode(), str(c.limit).encode()),
            (f"x-ratelimit-remaining-{unit}".encode(), str(max(0, c.limit - r.current)).encode()),
            (f"x-ratelimit-reset-{unit}".encode(), f"{retry}s".encode()),
        ]
        message = f"Rate limit reached for {c.scope}: {c.limit} {unit} per minute. Retry in {retry}s."
        return GatewayError(429, message, unit, "rate_limit_exceeded", headers)

    def _no_credit(self, c: Check, current: int) -> GatewayError:
        """OpenAI's own answer for an account without credit (429 insufficient_quota), with
        `x-should-retry: false`: the SDKs retry a 429 otherwise, and only a top-up helps."""
        available = Decimal(max(0, c.limit - current)) / NANO
        account = self.cache.prepaid.get(c.init[1]) if c.init else None
        if account is not None:
            self.prepare_account(account)
            # a request larger than a balance that is not low (n=100 without max_tokens) is
            # refused too: that is not the tenant running out
            if c.limit - current < max(account.low_nanos, 1):
                self._credit_event("credit_exhausted", c, current)
        message = (
            f"You exceeded your current quota: the prepaid balance of {c.scope} (${usd_text(available)} "
            f"available, requests in flight included) cannot cover this request's worst case of "
            f"${usd_text(Decimal(c.amount) / NANO)}. Top up the tenant's credits, or send max_tokens "
            "to reserve less."
        )
        return GatewayError(429, message, "insufficient_quota", "insufficient_quota", [(b"x-should-retry", b"false")])

    def _credit_event(self, event: str, c: Check, current: int) -> None:
        """Log `event` (a WARNING, alertable) once per tenant and credited total across
        instances: the counters' `once` decides which instance logs it."""
        assert c.init is not None
        tenant = c.init[1]
        name = f"{c.key}:{event}:{c.limit}"
        if name in self._credit_events:
            return
        if len(self._credit_events) > 10_000:
            self._credit_events.clear()
        self._credit_events.add(name)
        account = self.cache.prepaid.get(tenant)
        fields = {
            "event": event,
            "tenant_id": tenant,
            "available_usd": usd_text(Decimal(c.limit - current) / NANO),
            "credited_usd": usd_text(account.credited) if account is not None else usd_text(Decimal(c.limit) / NANO),
        }
        if event == "credit_low" and account is not None:
            fields["threshold_usd"] = usd_text(Decimal(account.low_nanos) / NANO)

        async def log_once() -> None:
            try:
                if not await self.counters.once(name, CREDIT_EVENT_TTL):
                    return  # another instance logged it
            except Exception as exc:  # the counters are down: log here rather than never
                if not _outage(exc):
                    raise
            log.warning(event, extra={"fields": fields})

        task = asyncio.get_running_loop().create_task(log_once())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- settlement ----------------------------------------------------------------
    def settle_later(self, reservation: Reservation, record) -> None:
        self._pending[record.request_id] = reservation

    @property
    def pending(self) -> bool:
        """Reservations wait for settlement: the pipeline should not linger."""
        return bool(self._pending)

    def cancel(self, reservation: Reservation, record) -> None:
        """The request never reached metering: give back what it reserved."""
        self._pending.pop(record.request_id, None)
        self._apply(reservation, 0, 0)

    def write(self, records) -> None:
        """Pipeline hook: records are priced; replace reservations by real usage."""
        if not self._pending:
            return
        for rec in records:
            res = self._pending.pop(rec.request_id, None)
            if res is not None:
                self._apply(res, rec.total_tokens, _nanos(rec.cost_usd))

    def _apply(self, res: Reservation, tokens: int, cost_nanos: int) -> None:
        if res.settled:
            return
        res.settled = True
        deltas: list[tuple[str | Check, int]] = []
        for c in res.checks:
            if c.kind == "tpm" and tokens != res.tokens:
                deltas.append((c.key, tokens - res.tokens))
            elif c.kind == "budget" and cost_nanos != res.cost_nanos:
                deltas.append((c.key, cost_nanos - res.cost_nanos))
            elif c.kind == "credit":  # always: its new value tells whether the balance ran low
                deltas.append((c, cost_nanos - res.cost_nanos))
        if deltas:
            task = asyncio.get_running_loop().create_task(self._add(deltas))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _add(self, deltas) -> None:
        for key, delta in deltas:
            check = None
            if isinstance(key, Check):
                check, key = key, key.key
            try:
                value = await self.counters.add(key, delta)
            except Exception as exc:
                log.warning("limit settlement failed: %s", type(exc).__name__, extra={"fields": {"counter": key}})
                continue
            if check is not None and value is not None:
                account = self.cache.prepaid.get(check.init[1]) if check.init else None
                if account is not None:
                    self.prepare_account(account)
                    if check.limit - value < account.low_nanos:
                        self._credit_event("credit_low", check, value)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        await self.counters.close()
