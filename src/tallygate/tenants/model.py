"""What a tenant key and a tenant's limits are, and how admin input is checked.

A key is `tg-` + 40 random base62-ish characters; only its SHA-256 and a short
display prefix are stored.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from ..money import usd_text
from ..settings import TENANT_RE

PERIODS = ("day", "month", "total")
LIMIT_FIELDS = ("rpm_limit", "tpm_limit", "budget_usd", "budget_period", "models")


def new_key() -> tuple[str, str, str]:
    """(key_id, secret, display prefix) of a new key."""
    secret = "tg-" + secrets.token_urlsafe(30)
    return "key_" + secrets.token_hex(8), secret, secret[:11]


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
        return self.rpm_limit is None and self.tpm_limit is None and self.budget_usd is None and self.models is None

    def as_json(self) -> dict:
        return {
            "rpm_limit": self.rpm_limit,
            "tpm_limit": self.tpm_limit,
            "budget_usd": None if self.budget_usd is None else usd_text(self.budget_usd),
            "budget_period": self.budget_period,
            "models": None if self.models is None else list(self.models),
        }


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
        return {
            "key_id": self.key_id,
            "key_prefix": self.key_prefix,
            "tenant_id": self.tenant_id,
            "name": self.name,
            **self.limits.as_json(),
            "expires_at": _iso(self.expires_at),
            "created_at": _iso(self.created_at),
            "revoked_at": _iso(self.revoked_at),
            "revoked": self.revoked_at is not None,
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def period_start(period: str, now: datetime | None = None) -> datetime | None:
    now = now or datetime.now(UTC)
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


# -- input validation --------------------------------------------------------

LIMIT_MAX = 2**31 - 1  # rpm_limit and tpm_limit are integer columns
BUDGET_MAX = Decimal(10**8)


def parse_limits(doc: dict, allowed_extra: tuple[str, ...] = ()) -> Limits:
    unknown = set(doc) - set(LIMIT_FIELDS) - set(allowed_extra)
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
    limits = Limits()
    for name in ("rpm_limit", "tpm_limit"):
        value = doc.get(name)
        if value is not None:
            if type(value) is not int or not 1 <= value <= LIMIT_MAX:
                raise InvalidInput(f"{name} must be a positive integer (at most {LIMIT_MAX}) or null")
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
        # the column is numeric(20, 12): refuse what it would round or cannot hold, never store less
        if limits.budget_usd >= BUDGET_MAX or limits.budget_usd.as_tuple().exponent < -12:  # type: ignore[operator]
            raise InvalidInput("budget_usd must be below 100000000 with at most 12 decimal places")
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
    return t if t.tzinfo else t.replace(tzinfo=UTC)


STRIPE_CUSTOMER_RE = re.compile(r"cus_[A-Za-z0-9]{1,250}")


def parse_stripe_customer(value) -> str | None:
    """A Stripe customer id (`cus_...`) or None (the tenant's usage is then held, not exported)."""
    if value is None:
        return None
    if not isinstance(value, str) or not STRIPE_CUSTOMER_RE.fullmatch(value):
        raise InvalidInput("stripe_customer_id must be a Stripe customer id (cus_ and letters or digits) or null")
    return value


def check_tenant(tenant_id) -> str:
    if not isinstance(tenant_id, str) or not TENANT_RE.fullmatch(tenant_id):
        raise InvalidInput("tenant_id must be 1-128 characters of A-Z a-z 0-9 . _ : @ -")
    return tenant_id
