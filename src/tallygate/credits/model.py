"""Credit entries, accounts and the admin input they come from.

Rounding: amounts are exact decimals (12 places, like cost_usd). The counters that
enforce a balance count nano-dollars: the credited total rounded down, each request's
cost rounded up, so the gateway never admits a nano-dollar the tenant did not pay for.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal, InvalidOperation

from ..money import usd_text

AMOUNT_MAX = Decimal(10**8)
REFERENCE_MAX = 200
NOTE_MAX = 1000
NANO = Decimal(1_000_000_000)
CREDIT_FIELDS = ("amount_usd", "reference", "note")


class InvalidCredit(ValueError):
    """Bad credit input; the message names the field."""


def new_entry_id() -> str:
    return "cr_" + secrets.token_hex(8)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class CreditEntry:
    entry_id: str
    tenant_id: str
    kind: str  # topup | adjustment
    amount_usd: Decimal
    reference: str
    note: str | None
    created_at: datetime

    def as_json(self) -> dict:
        return {
            "id": self.entry_id,
            "object": "credit_entry",
            "tenant_id": self.tenant_id,
            "kind": self.kind,
            "amount_usd": usd_text(self.amount_usd),
            "reference": self.reference,
            "note": self.note,
            "created_at": _iso(self.created_at),
        }


@dataclass(slots=True)
class CreditAccount:
    """What the limits need of a prepaid tenant, computed once per cache refresh."""

    tenant_id: str
    prepaid_since: datetime
    credited: Decimal  # the sum of the tenant's entries
    last_topup: Decimal
    counter_key: str = ""  # the balance counter (limits/guard.py sets it)
    credited_nanos: int = 0  # rounded down
    low_nanos: int = 0  # the credit_low threshold

    def __post_init__(self) -> None:
        self.credited_nanos = max(0, int((self.credited * NANO).to_integral_value(rounding=ROUND_FLOOR)))


def low_threshold(account: CreditAccount, low_usd: Decimal | None) -> Decimal:
    """TALLYGATE_CREDIT_LOW_USD when set, else 10% of the last top-up."""
    return low_usd if low_usd is not None else account.last_topup / 10


def parse_amount(value) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidCredit("amount_usd must be a decimal number (USD), as a string or a number")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidCredit("amount_usd must be a decimal number (USD), as a string or a number") from None
    if not amount.is_finite() or amount == 0:
        raise InvalidCredit("amount_usd must be a finite amount other than zero (negative: an adjustment)")
    # the column is numeric(20, 12): refuse what it would round or cannot hold, never store less
    if abs(amount) >= AMOUNT_MAX or amount.as_tuple().exponent < -12:  # type: ignore[operator]
        raise InvalidCredit("amount_usd must be below 100000000 in size with at most 12 decimal places")
    return amount


def parse_credit(doc: dict) -> tuple[Decimal, str, str | None]:
    """(amount, reference, note) of a top-up (amount > 0) or an adjustment (amount < 0)."""
    unknown = set(doc) - set(CREDIT_FIELDS)
    if unknown:
        raise InvalidCredit(f"unknown field(s): {', '.join(sorted(unknown))}")
    if "amount_usd" not in doc:
        raise InvalidCredit("amount_usd is required")
    amount = parse_amount(doc["amount_usd"])
    reference = doc.get("reference")
    if not isinstance(reference, str) or not reference.strip() or len(reference) > REFERENCE_MAX:
        raise InvalidCredit(
            f"reference is required: a string of 1-{REFERENCE_MAX} characters naming the payment or "
            "reason (the same reference again is the same entry, never a second credit)"
        )
    note = doc.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > NOTE_MAX):
        raise InvalidCredit(f"note must be a string of at most {NOTE_MAX} characters")
    return amount, reference, note
