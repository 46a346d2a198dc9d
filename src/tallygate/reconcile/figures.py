"""The quantities compared, per group: requests, tokens and US dollars."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

# what each usage group carries, in the order the report lists them
USAGE_MEASURES = ("requests", "input_tokens", "cached_tokens", "output_tokens")


@dataclass
class Figures:
    """Sums for one group. `requests` is None where the source does not count requests
    (Anthropic's usage report); `cost_usd` is None where it has no amount at this grain."""

    requests: int | None = 0
    input_tokens: int = 0  # every input token, cache reads and writes included
    cached_tokens: int = 0  # cache reads
    output_tokens: int = 0
    cost_usd: Decimal | None = None

    def add(self, other: Figures) -> None:
        if self.requests is not None and other.requests is not None:
            self.requests += other.requests
        else:
            self.requests = None
        self.input_tokens += other.input_tokens
        self.cached_tokens += other.cached_tokens
        self.output_tokens += other.output_tokens
        if other.cost_usd is not None:
            self.cost_usd = (self.cost_usd or Decimal(0)) + other.cost_usd


@dataclass
class LedgerFigures(Figures):
    """The ledger's sums, with what was left out and why (docs/reconciliation.md)."""

    timeouts: int = 0  # counted requests that timed out at the gateway: the provider may bill more
    excluded: int = 0  # rows that never reached the provider or were refused by it (not counted)
    tenants: dict[str, int] = field(default_factory=dict)  # counted requests per tenant

    def add_ledger(self, other: LedgerFigures) -> None:
        self.add(other)
        self.timeouts += other.timeouts
        self.excluded += other.excluded
        for tenant, n in other.tenants.items():
            self.tenants[tenant] = self.tenants.get(tenant, 0) + n
