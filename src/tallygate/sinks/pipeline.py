"""One queue from the request path to the sinks, drained off the request path.

The request handler only appends a UsageRecord (no pricing, no I/O). A single
consumer task prices each record, then hands the same records to every sink, so
the log line, the ledger row and the counters always agree.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..metering.bounds import hold_to_bounds
from ..metering.pricing import PriceBook
from ..metering.record import UsageRecord

log = logging.getLogger("tallygate.pipeline")


# How long the consumer lets records gather before a pass: a pass has fixed costs (a
# write of the log lines, a wake-up) that a batch shares, and 5 ms is far below what
# anyone reading the log or /metrics can notice. The sync ledger mode uses 0: there a
# response waits for its row.
LINGER = 0.005


class Pipeline:
    def __init__(self, prices: PriceBook, jsonlog, metrics, ledger, hooks=(), linger: float = LINGER,
                 default_max_output_tokens: int = 32768, default_context_tokens: int = 1_000_000) -> None:
        self.linger = linger
        self.default_out = default_max_output_tokens  # usage bounds (metering/bounds.py)
        self.default_context = default_context_tokens
        self.prices = prices
        self.jsonlog = jsonlog
        self.metrics = metrics
        self.ledger = ledger
        self.hooks = list(hooks)  # .write(records) after pricing, .pending (e.g. budgets)
        self._queue: list[tuple[UsageRecord, asyncio.Future | None]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="pipeline")
        if self.ledger is not None:
            self.ledger.start()

    def submit(self, record: UsageRecord) -> None:
        record.submitted = True
        self._queue.append((record, None))
        if not self._wakeup.is_set():
            self._wakeup.set()

    def submit_and_wait(self, record: UsageRecord) -> asyncio.Future:
        """Sync ledger mode: the future resolves once the record's row committed."""
        fut = asyncio.get_running_loop().create_future()
        record.submitted = True
        self._queue.append((record, fut))
        if not self._wakeup.is_set():
            self._wakeup.set()
        return fut

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            # records that settle a limit reservation go at once: a tenant's next request
            # should see its real usage, not the worst case it reserved
            if self.linger and not self._closing and not any(getattr(h, "pending", False) for h in self.hooks):
                await asyncio.sleep(self.linger)
            self._wakeup.clear()
            if self._queue:
                try:
                    # the price data (~13 MB, ~0.3 s to import) loads with the first record,
                    # in a thread: start-up and idle memory stay small
                    await self.prices.ensure_warm()
                except Exception:
                    log.exception("price data failed to load; costs are computed from overrides only")
            batch, self._queue = self._queue, []
            if batch:
                self._process(batch)
            if self._closing and not self._queue:
                return

    def _process(self, batch: list) -> None:
        records = [r for r, _ in batch]
        for rec in records:
            try:
                price = self.prices.price(rec.provider, rec.model, rec.upstream_model)
                # usage beyond what the request allows is billed at the bound (and flagged)
                hold_to_bounds(rec, price.context_window, self.default_out, self.default_context)
                rec.cost_usd, rec.price_source = price.cost(rec), price.source
            except Exception:
                log.exception("pricing failed", extra={"fields": {"model": rec.model}})
        for sink in (self.jsonlog, self.metrics, *self.hooks):
            if sink is None:
                continue
            try:
                sink.write(records) if hasattr(sink, "write") else sink(records)
            except Exception:
                log.exception("sink failed")
        if self.ledger is not None:
            futures = [f for _, f in batch]
            self.ledger.add(records, futures if any(f is not None for f in futures) else None)
        else:
            for _, fut in batch:
                if fut is not None and not fut.done():
                    fut.set_result(True)

    async def close(self, deadline: float) -> None:
        """Drain the queue, then flush the ledger until `deadline` (monotonic)."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), max(0.05, deadline - time.monotonic()))
            except (asyncio.TimeoutError, Exception):
                pass
        if self._queue:  # the consumer could not finish: process what is left inline
            batch, self._queue = self._queue, []
            self._process(batch)
        if self.ledger is not None:
            await self.ledger.close(deadline)
