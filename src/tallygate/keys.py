"""Tenant keys and tenant limits: stored in the ledger database, served from memory.

A key is `tg-` + 40 random base62-ish characters; only its SHA-256 and a short
display prefix are stored. Every instance keeps all keys and tenant limits in
memory and polls for changes (`TALLYGATE_KEYS_REFRESH`, default 2 s), so a lookup
never costs a database round trip and a revocation reaches every instance within
a refresh interval.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

import orjson

from .auth import hash_key
from .money import usd_text
from .settings import TENANT_RE

log = logging.getLogger("tallygate.keys")

PERIODS = ("day", "month", "total")
KEY_RE = re.compile(r"tg-[A-Za-z0-9_-]{20,100}")


class InvalidInput(ValueError):
    """Bad admin input; the message names the field."""


@dataclass(slots=True)
class Limits:
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    budget_usd: Decimal | None = None
    budget_period: str = "month"
    models: tuple[str, ...] | None = None

    @property
    def empty(self) -> bool:
        return (self.rpm_limit is None and self.tpm_limit is None and self.budget_usd is None
                and self.models is None)

    def as_json(self) -> dict:
        return {"rpm_limit": self.rpm_limit, "tpm_limit": self.tpm_limit,
                "budget_usd": None if self.budget_usd is None else usd_text(self.budget_usd),
                "budget_period": self.budget_period,
                "models": None if self.models is None else list(self.models)}


@dataclass(slots=True)
class TenantKey:
    key_id: str
    key_prefix: str
    tenant_id: str
    limits: Limits
    name: str | None = None
    expires_at: datetime | None = None
    created_at: datetime | None = None
    revoked_at: datetime | None = None

    def as_json(self) -> dict:
        return {"key_id": self.key_id, "key_prefix": self.key_prefix, "tenant_id": self.tenant_id,
                "name": self.name, **self.limits.as_json(),
                "expires_at": _iso(self.expires_at), "created_at": _iso(self.created_at),
                "revoked_at": _iso(self.revoked_at), "revoked": self.revoked_at is not None}


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


# -- input validation --------------------------------------------------------

LIMIT_FIELDS = ("rpm_limit", "tpm_limit", "budget_usd", "budget_period", "models")


def parse_limits(doc: dict, allowed_extra: tuple[str, ...] = ()) -> Limits:
    unknown = set(doc) - set(LIMIT_FIELDS) - set(allowed_extra)
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
    limits = Limits()
    for name in ("rpm_limit", "tpm_limit"):
        value = doc.get(name)
        if value is not None:
            if type(value) is not int or value < 1:
                raise InvalidInput(f"{name} must be a positive integer or null")
            setattr(limits, name, value)
    budget = doc.get("budget_usd")
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, (int, float, str)):
            raise InvalidInput("budget_usd must be a number (USD) or null")
        try:
            limits.budget_usd = Decimal(str(budget))
        except InvalidOperation:
            raise InvalidInput("budget_usd must be a number (USD) or null") from None
        if not limits.budget_usd.is_finite() or limits.budget_usd < 0:
            raise InvalidInput("budget_usd must be zero or more")
    period = doc.get("budget_period", "month")
    if period not in PERIODS:
        raise InvalidInput("budget_period must be day, month or total")
    limits.budget_period = period
    models = doc.get("models")
    if models is not None:
        if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
            raise InvalidInput("models must be a list of model names or null")
        limits.models = tuple(models)
    return limits


def parse_time(value, field: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be an ISO 8601 time")
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{field} must be an ISO 8601 time") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def check_tenant(tenant_id) -> str:
    if not isinstance(tenant_id, str) or not TENANT_RE.fullmatch(tenant_id):
        raise InvalidInput("tenant_id must be 1-128 characters of A-Z a-z 0-9 . _ : @ -")
    return tenant_id


# -- storage -------------------------------------------------------------------

class KeyStore:
    """SQL for keys and tenants on either dialect (parameters only, never formatting)."""

    def __init__(self, store) -> None:
        self.store = store
        self.sqlite = store.dialect == "sqlite"
        self.p = "?" if self.sqlite else "%s"

    def _t(self, value: datetime | None):
        if value is None or not self.sqlite:
            return value
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _d(self, value: Decimal | None):
        return None if value is None else (str(value) if self.sqlite else value)

    @staticmethod
    def _models(value: tuple | None):
        return None if value is None else orjson.dumps(list(value)).decode()

    async def create_key(self, tenant_id: str, limits: Limits, name: str | None,
                         expires_at: datetime | None) -> tuple[str, TenantKey]:
        secret = "tg-" + secrets.token_urlsafe(30)
        key_id = "key_" + secrets.token_hex(8)
        now = datetime.now(timezone.utc)
        key = TenantKey(key_id, secret[:11], tenant_id, limits, name, expires_at, now)
        p = self.p
        await self.store.execute(
            "INSERT INTO tallygate_keys (key_id, key_hash, key_prefix, tenant_id, name, rpm_limit, tpm_limit, "
            "budget_usd, budget_period, models, expires_at, created_at, updated_at) VALUES "
            f"({', '.join([p] * 13)})",
            (key_id, hash_key(secret), key.key_prefix, tenant_id, name, limits.rpm_limit, limits.tpm_limit,
             self._d(limits.budget_usd), limits.budget_period, self._models(limits.models),
             self._t(expires_at), self._t(now), self._t(now)))
        return secret, key

    async def revoke_key(self, key_id: str) -> bool:
        now = self._t(datetime.now(timezone.utc))
        count = await self.store.execute(
            f"UPDATE tallygate_keys SET revoked_at = {self.p}, updated_at = {self.p} "
            f"WHERE key_id = {self.p} AND revoked_at IS NULL", (now, now, key_id))
        if count:
            return True
        rows = await self.store.fetch(f"SELECT 1 FROM tallygate_keys WHERE key_id = {self.p}", (key_id,))
        return bool(rows)  # already revoked: still a success, nothing changes

    async def put_tenant(self, tenant_id: str, limits: Limits) -> None:
        p = self.p
        now = self._t(datetime.now(timezone.utc))
        await self.store.execute(
            "INSERT INTO tallygate_tenants (tenant_id, rpm_limit, tpm_limit, budget_usd, budget_period, models, "
            f"updated_at) VALUES ({', '.join([p] * 7)}) ON CONFLICT (tenant_id) DO UPDATE SET "
            "rpm_limit = excluded.rpm_limit, tpm_limit = excluded.tpm_limit, budget_usd = excluded.budget_usd, "
            "budget_period = excluded.budget_period, models = excluded.models, updated_at = excluded.updated_at",
            (tenant_id, limits.rpm_limit, limits.tpm_limit, self._d(limits.budget_usd), limits.budget_period,
             self._models(limits.models), now))

    def _limits(self, row) -> Limits:
        rpm, tpm, budget, period, models = row
        return Limits(rpm, tpm, None if budget is None else Decimal(str(budget)), period,
                      None if models is None else tuple(orjson.loads(models)))

    def _time(self, value) -> datetime | None:
        if value is None or isinstance(value, datetime):
            return value
        return datetime.fromisoformat(value.replace("Z", "+00:00"))

    async def keys(self, tenant_id: str | None = None, include_revoked: bool = True) -> list[TenantKey]:
        where, params = [], []
        if tenant_id:
            where.append(f"tenant_id = {self.p}")
            params.append(tenant_id)
        if not include_revoked:
            where.append("revoked_at IS NULL")
        rows = await self.store.fetch(
            "SELECT key_id, key_prefix, tenant_id, name, rpm_limit, tpm_limit, budget_usd, budget_period, "
            "models, expires_at, created_at, revoked_at FROM tallygate_keys"
            + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY created_at", params)
        return [TenantKey(r[0], r[1], r[2], self._limits(r[4:9]), r[3], self._time(r[9]), self._time(r[10]),
                          self._time(r[11])) for r in rows]

    async def key_hashes(self) -> list[tuple[str, str, bool]]:
        """(key_hash, key_id, active) for every key."""
        rows = await self.store.fetch("SELECT key_hash, key_id, revoked_at IS NULL FROM tallygate_keys")
        return [(r[0], r[1], bool(r[2])) for r in rows]

    async def tenants(self) -> dict[str, Limits]:
        rows = await self.store.fetch(
            "SELECT tenant_id, rpm_limit, tpm_limit, budget_usd, budget_period, models FROM tallygate_tenants "
            "ORDER BY tenant_id")
        return {r[0]: self._limits(r[1:]) for r in rows}

    async def spend_since(self, column: str, value: str, since: datetime | None) -> Decimal:
        """Cost in the ledger for a tenant or key since a time (budget rebuild)."""
        assert column in ("tenant_id", "api_key_id")
        cost = "dsum(cost_usd)" if self.sqlite else "sum(cost_usd)"
        sql = f"SELECT {cost} FROM litellm_usage WHERE {column} = {self.p}"
        params: list = [value]
        if since is not None:
            sql += f" AND created_at >= {self.p}"
            params.append(self._t(since))
        rows = await self.store.fetch(sql, params)
        return Decimal(str(rows[0][0] or 0)) if rows else Decimal(0)


# -- the in-memory view ------------------------------------------------------------

class KeyCache:
    """All keys and tenant limits in memory; refreshed from the database by polling."""

    def __init__(self, keystore: KeyStore, refresh_interval: float = 2.0) -> None:
        self.keystore = keystore
        self.refresh_interval = refresh_interval
        self._by_hash: dict[str, TenantKey] = {}
        self.tenants: dict[str, Limits] = {}
        self.loaded = False
        self._task: asyncio.Task | None = None

    def lookup(self, secret: str) -> TenantKey | None:
        key = self._by_hash.get(hash_key(secret))
        if key is None or key.revoked_at is not None:
            return None
        if key.expires_at is not None and key.expires_at <= datetime.now(timezone.utc):
            return None
        return key

    def add(self, secret: str, key: TenantKey) -> None:
        """A key created by this instance works here at once."""
        self._by_hash[hash_key(secret)] = key

    def revoke_local(self, key_id: str) -> None:
        for key in self._by_hash.values():
            if key.key_id == key_id and key.revoked_at is None:
                key.revoked_at = datetime.now(timezone.utc)

    async def refresh(self) -> None:
        keys = {k.key_id: k for k in await self.keystore.keys()}
        by_hash = {}
        for key_hash, key_id, _active in await self.keystore.key_hashes():
            key = keys.get(key_id)
            if key is not None:
                by_hash[key_hash] = key
        self._by_hash = by_hash
        self.tenants = await self.keystore.tenants()
        self.loaded = True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll(), name="key-cache")

    async def _poll(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.refresh()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("key refresh failed; serving the keys already loaded: %s",
                                str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def period_start(period: str, now: datetime | None = None) -> datetime | None:
    now = now or datetime.now(timezone.utc)
    if period == "day":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return None


def period_end(period: str, now: datetime | None = None) -> datetime | None:
    start = period_start(period, now)
    if start is None:
        return None
    if period == "day":
        return start + timedelta(days=1)
    return (start + timedelta(days=32)).replace(day=1)


# -- CLI -------------------------------------------------------------------------

async def keys_command(store, args) -> int:
    ks = KeyStore(store)
    if args.keys_command == "create":
        doc = {"rpm_limit": args.rpm, "tpm_limit": args.tpm, "budget_usd": args.budget_usd,
               "budget_period": args.budget_period,
               "models": [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None}
        try:
            tenant = check_tenant(args.tenant_id)
            limits = parse_limits(doc)
            expires = parse_time(args.expires_at, "--expires-at")
        except InvalidInput as exc:
            sys.stderr.write(f"tallygate: {exc}\n")
            return 1
        secret, key = await ks.create_key(tenant, limits, args.name, expires)
        print(f"key_id: {key.key_id}\ntenant: {tenant}\nkey:    {secret}\n\n"
              "The key is shown only now; store it safely.")
        return 0
    if args.keys_command == "list":
        keys = await ks.keys(args.tenant)
        if not keys:
            print("no keys")
            return 0
        print(f"{'key_id':22}  {'prefix':12}  {'tenant':20}  {'state':8}  limits")
        for k in keys:
            lim = k.limits
            parts = [f"rpm={lim.rpm_limit}" if lim.rpm_limit else "", f"tpm={lim.tpm_limit}" if lim.tpm_limit else "",
                     f"budget=${lim.budget_usd}/{lim.budget_period}" if lim.budget_usd is not None else "",
                     f"models={','.join(lim.models)}" if lim.models else ""]
            state = "revoked" if k.revoked_at else ("expired" if k.expires_at and k.expires_at <= datetime.now(timezone.utc) else "active")
            print(f"{k.key_id:22}  {k.key_prefix:12}  {k.tenant_id:20}  {state:8}  {' '.join(p for p in parts if p)}")
        return 0
    if args.keys_command == "revoke":
        if not await ks.revoke_key(args.key_id):
            sys.stderr.write(f"tallygate: no key {args.key_id}\n")
            return 1
        print(f"revoked {args.key_id}")
        return 0
    return 2
