"""The counters the limits are kept in: what a check is, and the per-process backend.

A backend's `admit(checks)` checks and increments all of a request's counters
atomically: it returns their new values, raises Rejected for the first over its
limit, or returns the key of a budget counter that must first be started from the
ledger (`init`). `add` corrects a counter once a request is metered and returns its
new value (None when it does not exist); `once(key, ttl)` is True for the first caller
only (an event logged once across instances).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

MODE_WINDOW = 1  # count + amount <= limit
MODE_BUDGET = 2  # count < limit, then add amount
MODE_BALANCE = 3  # count + amount <= limit (a prepaid balance: spent + reserved within the credit)


@dataclass(slots=True)
class Check:
    key: str
    limit: int
    amount: int
    ttl: int  # seconds; 0: never expires
    mode: int
    kind: str  # rpm | tpm | budget | credit
    scope: str  # "tenant acme" / "key key_123", for messages
    init: tuple | None = None  # budget, credit: (column, id, period start) to rebuild from the ledger
    reset_at: float | None = None  # epoch seconds when the window/period ends


class Rejected(Exception):
    def __init__(self, check: Check, current: int) -> None:
        self.check = check
        self.current = current


class MemoryCounters:
    """Per-process counters (no REDIS_URL)."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[int, float]] = {}  # key -> (value, expires_at or 0)

    def _get(self, key: str, now: float) -> int | None:
        item = self._values.get(key)
        if item is None:
            return None
        value, expires = item
        if expires and expires <= now:
            del self._values[key]
            return None
        return value

    async def admit(self, checks: list[Check]) -> list[int] | str:
        now = time.time()
        for c in checks:
            cur = self._get(c.key, now)
            if cur is None:
                if c.mode != MODE_WINDOW:
                    return c.key  # needs its start value from the ledger
                cur = 0
            if c.mode == MODE_BUDGET:
                if cur >= c.limit:
                    raise Rejected(c, cur)
            elif cur + c.amount > c.limit:
                raise Rejected(c, cur)
        out = []
        for c in checks:
            value = (self._get(c.key, now) or 0) + c.amount
            expires = self._values.get(c.key, (0, now + c.ttl if c.ttl else 0))[1]
            self._values[c.key] = (value, expires)
            out.append(value)
        if len(self._values) > 100_000:
            self._values = {k: v for k, v in self._values.items() if not v[1] or v[1] > now}
        return out

    async def init(self, key: str, value: int, ttl: int) -> None:
        if self._get(key, time.time()) is None:
            self._values[key] = (value, time.time() + ttl if ttl else 0)

    async def add(self, key: str, delta: int) -> int | None:
        item = self._values.get(key)
        if item is None:
            return None
        self._values[key] = (item[0] + delta, item[1])
        return item[0] + delta

    async def value(self, key: str) -> int | None:
        return self._get(key, time.time())

    async def once(self, key: str, ttl: int) -> bool:
        now = time.time()
        if self._get(key, now) is not None:
            return False
        self._values[key] = (1, now + ttl)
        return True

    async def close(self) -> None:
        pass
