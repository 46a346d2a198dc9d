"""The ledger writer: batched, idempotent, never loses a record silently.

Records wait in a bounded in-memory buffer and are written in batches (size or
time, whichever first) with `ON CONFLICT (request_id, created_at) DO NOTHING` (the
hourly rollups updated from the rows really added), so a retried batch never double counts. While the database is down, batches are retried with
backoff and the gateway keeps serving. If the buffer overflows, the records that
could not be kept are counted and named in an ERROR line (their log lines remain,
and `tallygate ledger replay` rebuilds them).

In `sync` mode each record carries a future that resolves once its row has
committed (group commit), so a response's last bytes can wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque

from ..metering.record import UsageRecord
from ..store import RowsRefused
from .jsonlog import log_entry

log = logging.getLogger("tallygate.ledger")


class LedgerWriter:
    @classmethod
    def from_settings(cls, store, settings) -> LedgerWriter:
        """The writer with the TALLYGATE_LEDGER_* batch, interval and buffer settings."""
        return cls(
            store,
            batch_size=settings.ledger_batch_size,
            flush_interval=settings.ledger_flush_interval,
            buffer_limit=settings.ledger_buffer_limit,
        )

    def __init__(
        self,
        store,
        *,
        batch_size: int = 100,
        flush_interval: float = 0.02,
        buffer_limit: int = 100_000,
        max_backoff: float = 5.0,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.buffer_limit = buffer_limit
        self.max_backoff = max_backoff
        self._buffer: deque[tuple[UsageRecord, asyncio.Future | None]] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        # counters, exported as metrics
        self.rows_written = 0
        self.rows_duplicate = 0
        self.records_dropped = 0
        self.write_failures = 0
        self.last_error: str | None = None

    @property
    def depth(self) -> int:
        return len(self._buffer)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-writer")

    def add(self, records: list[UsageRecord], futures: list | None = None) -> None:
        was_empty = not self._buffer
        room = self.buffer_limit - len(self._buffer)
        if room < len(records):
            lost = records[max(room, 0) :]
            records = records[: max(room, 0)]
            self.records_dropped += len(lost)
            ids = [r.request_id for r in lost]
            log.error(
                "ledger buffer full: %d records not written to the ledger (their log lines "
                "hold them; rebuild with `tallygate ledger replay`)",
                len(lost),
                extra={
                    "fields": {
                        "records_not_written": len(lost),
                        "request_ids": ids[:1000],
                        "ledger_error": self.last_error,
                    }
                },
            )
            if futures:
                for fut in futures[len(records) :]:
                    if fut is not None and not fut.done():
                        fut.set_result(False)
                futures = futures[: len(records)]
        if futures:
            self._buffer.extend(zip(records, futures, strict=True))
        else:
            self._buffer.extend((r, None) for r in records)
        # an idle writer starts at once; a full batch or a waiting (sync) request ends
        # its interval early
        if was_empty or len(self._buffer) >= self.batch_size or futures:
            self._wakeup.set()

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            # idle: write the first pass at once; busy: a full batch or the interval (docs/DESIGN.md)
            if not self._buffer:
                self._wakeup.clear()
                if self._closing:
                    return
                await self._wakeup.wait()
            elif len(self._buffer) < self.batch_size and backoff == 0.0 and not self._closing:
                # wait for a full batch or the interval, whichever first
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), self.flush_interval)
                except TimeoutError:
                    pass
            if not self._buffer:
                continue
            ok = await self._write_batch()
            if ok:
                backoff = 0.0
            else:
                backoff = min(self.max_backoff, max(0.05, backoff * 2))
                await asyncio.sleep(backoff * (0.5 + random.random() / 2))

    async def _write_batch(self) -> bool:
        n = min(self.batch_size, len(self._buffer))
        batch = [self._buffer[i] for i in range(n)]
        refused: list[UsageRecord] = []
        try:
            inserted = await self._write_isolating([r for r, _ in batch], refused)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # database down or slow: keep the records, retry
            self.write_failures += 1
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if self.last_error != text or self.write_failures % 100 == 1:
                log.warning(
                    "ledger write failed, will retry: %s",
                    text,
                    extra={"fields": {"buffered_records": len(self._buffer)}},
                )
            self.last_error = text
            return False
        for _ in range(n):
            self._buffer.popleft()
        if self.last_error is not None:
            log.info("ledger writes recovered", extra={"fields": {"buffered_records": len(self._buffer)}})
            self.last_error = None
        self.rows_written += inserted
        self.rows_duplicate += n - inserted - len(refused)
        refused_ids = {id(r) for r in refused}
        for rec, fut in batch:
            if fut is not None and not fut.done():
                fut.set_result(id(rec) not in refused_ids)
        return True

    async def _write_isolating(self, records: list[UsageRecord], refused: list[UsageRecord]) -> int:
        """Write records; when the database refuses a batch's data (not an outage), halve
        it until the refused rows stand alone, write the rest, and drop those with an
        ERROR line that holds them whole: one bad row never blocks the ledger."""
        try:
            return await self.store.write(records)
        except RowsRefused as exc:
            if len(records) == 1:
                rec = records[0]
                refused.append(rec)
                self.records_dropped += 1
                log.error(
                    "the ledger refused a record: not written (the record is in this line)",
                    extra={
                        "fields": {"request_id": rec.request_id, "ledger_error": str(exc), "record": log_entry(rec)}
                    },
                )
                return 0
            half = len(records) // 2
            return await self._write_isolating(records[:half], refused) + await self._write_isolating(
                records[half:], refused
            )

    async def flush(self, deadline: float) -> bool:
        """Write everything buffered, giving up at `deadline` (time.monotonic()).
        Returns True when the buffer is empty."""
        self._closing = True
        self._wakeup.set()
        while self._buffer and time.monotonic() < deadline:
            if self._task is None or self._task.done():
                if not await self._write_batch():
                    await asyncio.sleep(0.05)
            else:
                await asyncio.sleep(0.01)
        return not self._buffer

    async def close(self, deadline: float) -> None:
        flushed = await self.flush(deadline)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if not flushed:
            ids = [r.request_id for r, _ in self._buffer]
            self.records_dropped += len(ids)
            log.error(
                "shutdown deadline reached: %d records not written to the ledger (their "
                "log lines hold them; rebuild with `tallygate ledger replay`)",
                len(ids),
                extra={
                    "fields": {
                        "records_not_written": len(ids),
                        "request_ids": ids[:1000],
                        "ledger_error": self.last_error,
                    }
                },
            )
            for _, fut in self._buffer:
                if fut is not None and not fut.done():
                    fut.set_result(False)
            self._buffer.clear()
