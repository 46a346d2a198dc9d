"""Failed console sign-ins, bounded so that keys cannot be guessed through the form.

At most `per_address` failures from one client address and `total` from all addresses
together within a sliding minute; past either, every sign-in from there (the right key's
too: checking it would tell a guesser whether it was right) is a 429 whose Retry-After
says when the oldest failure leaves the minute. Sessions already signed in are not
affected. Counted in memory by each process: N instances allow N times as many.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

WINDOW_SECONDS = 60.0
MAX_ADDRESSES = 10_000  # addresses remembered; past it the longest quiet is forgotten (the total still counts)


def client_address(scope, headers: dict) -> str:
    """The address the nearest proxy names (the last X-Forwarded-For entry: Cloud Run's
    front end appends the client's), else the connection's. A client without a proxy can
    write the header itself; the total bound holds whatever it writes."""
    forwarded = headers.get(b"x-forwarded-for")
    if forwarded:
        last = forwarded.decode("latin-1").split(",")[-1].strip()
        if last:
            return last[:64]
    client = scope.get("client")
    return str(client[0]) if client else "-"


class SignInThrottle:
    def __init__(
        self,
        per_address: int,
        total: int,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_address = per_address
        self.total = total
        self.window = window
        self.clock = clock
        self._all: deque[float] = deque()
        self._by_address: OrderedDict[str, deque[float]] = OrderedDict()

    def _prune(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window:
            times.popleft()

    def retry_after(self, address: str) -> int | None:
        """Whole seconds until `address` may try again, or None: it may try now."""
        now = self.clock()
        self._prune(self._all, now)
        waits = []
        if len(self._all) >= self.total:
            waits.append(self._all[-self.total] + self.window - now)
        mine = self._by_address.get(address)
        if mine is not None:
            self._prune(mine, now)
            if not mine:
                del self._by_address[address]
            elif len(mine) >= self.per_address:
                waits.append(mine[-self.per_address] + self.window - now)
        return max(1, math.ceil(max(waits))) if waits else None

    def failed(self, address: str) -> None:
        now = self.clock()
        self._all.append(now)
        self._prune(self._all, now)
        mine = self._by_address.pop(address, None) or deque()
        mine.append(now)
        self._prune(mine, now)
        self._by_address[address] = mine  # the newest at the end
        while len(self._by_address) > MAX_ADDRESSES:
            self._by_address.popitem(last=False)
        # the deques never hold more than the bound needs
        while len(self._all) > self.total:
            self._all.popleft()
        while len(mine) > self.per_address:
            mine.popleft()
