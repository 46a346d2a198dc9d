"""One queue from the request path to the sinks, drained off the request path.

The request handler only appends a UsageRecord (no pricing, no I/O). A single
consumer task prices each record, then hands the same records to every sink, so
the log line, the ledger row and the counters always agree.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Protocol

from ..metering.bounds import hold_to_bounds
from ..metering.media import media_cost
from ..metering.pricing import PriceBook
from ..metering.record import UsageRecord

log = logging.getLogger("tallygate.pipeline")


# How long the consumer lets records gather before a pass: a pass has fixed costs (a
# write of the log lines, a wake-up) that a batch shares, and 5 ms is far below what
# anyone reading the log or /metrics can notice. The sync ledger mode uses 0: there a
# response waits for its row.
LINGER = 0.005
# models named in the once-per-model WARNING about missing rates (names come from clients)
UNPRICED_WARNINGS = 1000


class Sink(Protocol):
    """Receives every priced record (the log line, the metrics)."""

    def write(self, records: list[UsageRecord]) -> None: ...


class Settlement(Sink, Protocol):
    """A sink that settles what admission reserved (the limits' Guard): while it has
    records pending, the consumer does not linger."""

    @property
    def pending(self) -> bool: ...


class Ledger(Protocol):
    """The durable sink (sinks/ledger.py LedgerWriter): rows written in its own task."""

    def start(self) -> None: ...

    def add(self, records: list[UsageRecord], futures: list[asyncio.Future | None] | None) -> None: ...

    async def close(self, deadline: float) -> None: ...


class Pipeline:
    """submit(record) appends and returns None. With `wait_for_commit` (the sync ledger
    mode) submit(record, wait=True) returns an awaitable that ends when the record's row
    committed, or after `commit_timeout` seconds; wait=False (records nobody waits for,
    such as a client that hung up) never waits."""

    def __init__(
        self,
        prices: PriceBook,
        sinks: Sequence[Sink],
        ledger: Ledger | None,
        settlements: Sequence[Settlement] = (),
        *,
        wait_for_commit: bool = False,
        commit_timeout: float = 5.0,
        linger: float | None = None,
        default_max_output_tokens: int = 32768,
        default_context_tokens: int = 1_000_000,
    ) -> None:
        self.linger = (0.0 if wait_for_commit else LINGER) if linger is None else linger
        self.default_out = default_max_output_tokens  # usage bounds (metering/bounds.py)
        self.default_context = default_context_tokens
        self.prices = prices
        self.sinks = tuple(sinks)
        self.settlements = tuple(settlements)
        self._writers = self.sinks + self.settlements  # every pass writes to each, in this order
        self.ledger = ledger
        self.wait_for_commit = wait_for_commit
        self.commit_timeout = commit_timeout
        if wait_for_commit:
            # chosen once: the async mode's submit stays the plain append below
            self.submit = self._submit_or_wait  # type: ignore[method-assign]
        self._queue: list[tuple[UsageRecord, asyncio.Future | None]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._warned_unpriced: set[str] = set()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="pipeline")
        if self.ledger is not None:
            self.ledger.start()

    def submit(self, record: UsageRecord, wait: bool = False) -> Awaitable[None] | None:
        record.submitted = True
        self._queue.append((record, None))
        if not self._wakeup.is_set():
            self._wakeup.set()
        return None

    def submit_committed(self, record: UsageRecord) -> asyncio.Future:
        """Queue a record, in either ledger mode, and hand back a future that ends with True once
        its row committed (False: not written): for work marked done only once its rows are in."""
        fut = asyncio.get_running_loop().create_future()
        record.submitted = True
        self._queue.append((record, fut))
        if not self._wakeup.is_set():
            self._wakeup.set()
        return fut

    def queued(self) -> list[UsageRecord]:
        """The records submitted and not yet handed to the sinks, oldest first."""
        return [r for r, _ in self._queue]

    def _submit_or_wait(self, record: UsageRecord, wait: bool = False) -> Awaitable[None] | None:
        if not wait:
            return Pipeline.submit(self, record)
        fut = asyncio.get_running_loop().create_future()
        record.submitted = True
        self._queue.append((record, fut))
        if not self._wakeup.is_set():
            self._wakeup.set()
        return self._committed(record, fut)

    async def _committed(self, record: UsageRecord, fut: asyncio.Future) -> None:
        """Wait (bounded) until the row committed. Past the bound the response goes out
        anyway; the row stays buffered and is retried."""
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.commit_timeout)
        except TimeoutError:
            log.warning(
                "ledger commit is slow; answering before the row committed",
                extra={"fields": {"request_id": record.request_id}},
            )

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            # records that settle a limit reservation go at once: a tenant's next request
            # should see its real usage, not the worst case it reserved
            if self.linger and not self._closing and not any(h.pending for h in self.settlements):
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
            if rec.price_source == "free":  # a call that costs nothing (routes/objects.py): $0, no rate to find
                continue
            try:
                price = self.prices.price(rec.provider, rec.model, rec.upstream_model, rec.service_tier)
                # usage beyond what the request allows is billed at the bound (and flagged)
                hold_to_bounds(rec, price.context_window, self.default_out, self.default_context)
                if rec.media is None:
                    rec.cost_usd, rec.price_source = price.cost(rec), price.source_for(rec)
                else:  # images and audio: per image, second or character, or their tokens
                    rec.cost_usd, rec.price_source = media_cost(price, rec)
                rec.model_label = price.model or "other"
                rec.price_version = self.prices.version
                # source_for hands back the price's own source unless a part had no rate
                unpriced = rec.price_source is not price.source or price.source == "unknown"
                if unpriced and rec.model not in self._warned_unpriced:
                    self._warn_unpriced(rec)
            except Exception:
                log.exception("pricing failed", extra={"fields": {"model": rec.model}})
        for sink in self._writers:
            try:
                sink.write(records)
            except Exception:
                log.exception("sink failed")
        if self.ledger is not None:
            futures = [f for _, f in batch]
            self.ledger.add(records, futures if any(f is not None for f in futures) else None)
        else:
            for _, fut in batch:
                if fut is not None and not fut.done():
                    fut.set_result(True)

    def _warn_unpriced(self, rec: UsageRecord) -> None:
        """Once per model and process: the gateway served a model it cannot fully price
        (counted per request in tallygate_unpriced_requests_total)."""
        if len(self._warned_unpriced) >= UNPRICED_WARNINGS:
            return
        self._warned_unpriced.add(rec.model)
        partial = rec.price_source.endswith(":partial")
        log.warning(
            "model priced in part: some of its usage has no rate"
            if partial
            else "model has no price: its requests are recorded at cost 0",
            extra={
                "fields": {
                    "model": rec.model,
                    "upstream_model": rec.upstream_model,
                    "provider": rec.provider,
                    "service_tier": rec.service_tier,
                    "price_source": rec.price_source,
                    "hint": "add the missing rates to the price file (TALLYGATE_PRICES_FILE); "
                    "see README, 'Costs and prices'",
                }
            },
        )

    async def close(self, deadline: float) -> None:
        """Drain the queue, then flush the ledger until `deadline` (monotonic)."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), max(0.05, deadline - time.monotonic()))
            except (TimeoutError, Exception):
                pass
        if self._queue:  # the consumer could not finish: process what is left inline
            batch, self._queue = self._queue, []
            self._process(batch)
        if self.ledger is not None:
            await self.ledger.close(deadline)
