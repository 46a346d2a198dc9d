"""tallygate's pipeline, ledger writer and prices running in LiteLLM's event loop.

Built from the same settings as the gateway (PG*/PGSSL/DATABASE_URL or the SQLite default,
TALLYGATE_LEDGER_*, TALLYGATE_PRICES_FILE, TALLYGATE_DEFAULT_TENANT), started on the first
record (a callback runs in the proxy's loop; nothing is started at import), and closed by
`close()`: the logger calls it from the proxy's shutdown. The callback itself only appends
a record; pricing, the log line and the ledger write happen in the pipeline's task.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Iterable
from typing import TextIO

import orjson

from ... import settings as settings_module
from ...logs import JsonFormatter
from ...metering.pricing import PriceBook, load_overrides
from ...metering.record import UsageRecord
from ...settings import Settings
from ...sinks.jsonlog import JsonLogSink, escape_line_breaks, log_entry
from ...sinks.ledger import LedgerWriter
from ...sinks.pipeline import Pipeline
from ...store import open_store

log = logging.getLogger("tallygate.litellm")


class LiteLLMLogSink(JsonLogSink):
    """The gateway's `litellm_request` line, plus `litellm_response_cost` (LiteLLM's float)."""

    def write(self, records: Iterable[UsageRecord]) -> None:
        lines = []
        for r in records:
            entry = log_entry(r)
            theirs = getattr(r, "litellm_response_cost", None)
            if theirs is not None:
                entry["litellm_response_cost"] = theirs
            lines.append(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))
        if lines:
            data = escape_line_breaks(b"".join(lines))  # model names come from requests
            stream = self.stream
            raw = getattr(stream, "buffer", None)
            if raw is not None:
                stream.flush()
                raw.write(data)
                raw.flush()
            else:
                stream.write(data.decode())
                stream.flush()


def _log_to_stdout(settings: Settings) -> None:
    """tallygate's own lines (ledger outages, shutdown) as JSON on stdout, secrets scrubbed,
    whatever LiteLLM did with the root logger."""
    logger = logging.getLogger("tallygate")
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JsonFormatter(settings.secrets))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


class LiteLLMMetering:
    def __init__(self, settings: Settings | None = None, stream: TextIO | None = None) -> None:
        self.settings = s = settings or settings_module.load()
        _log_to_stdout(s)
        self.prices = PriceBook(load_overrides(s.prices_file) if s.prices_file else {})
        self.store = open_store(s)
        self.ledger = LedgerWriter.from_settings(self.store, s)
        self.stream = stream
        self.pipeline: Pipeline | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ledger_ready = False
        self.closed = False
        self._connect: asyncio.Task | None = None

    def submit(self, record: UsageRecord) -> None:
        """Append a record (on the loop the metering started on); starts it on first use."""
        if self.pipeline is None:
            self._start()
        assert self.pipeline is not None
        self.pipeline.submit(record)

    def _start(self) -> None:
        s = self.settings
        self.loop = asyncio.get_running_loop()
        self.pipeline = Pipeline(
            self.prices,
            [LiteLLMLogSink(self.stream)],
            self.ledger,
            default_max_output_tokens=s.default_max_output_tokens,
            default_context_tokens=s.default_context_tokens,
        )
        self.pipeline.start()
        self._connect = self.loop.create_task(self._connect_until_ready(), name="tallygate-ledger-connect")

    async def _connect_until_ready(self) -> None:
        """Connect (and migrate) in the background; until then the writer keeps its rows."""
        delay, first = 0.5, True
        while not self.ledger_ready:
            try:
                await self.store.connect()
                if await self.store.needs_migration():
                    if not self.settings.auto_migrate:
                        raise RuntimeError(
                            f"the ledger schema is missing or old in {self.store.description} "
                            "and TALLYGATE_AUTO_MIGRATE is off: run `tallygate db init`"
                        )
                    await self.store.migrate()
                self.ledger_ready = True
                log.info("ledger ready", extra={"fields": {"ledger": self.store.description}})
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                (log.error if first else log.warning)("ledger unavailable; records are buffered: %s", exc)
                first = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def close(self, seconds: float | None = None) -> None:
        """Price and log what is queued, write the ledger until the deadline (by default
        TALLYGATE_SHUTDOWN_GRACE, 8 s: Cloud Run allows 10 s from SIGTERM to SIGKILL, and
        LiteLLM drains its callbacks first, usually at once), disconnect."""
        if self.closed:
            return
        self.closed = True
        if self.pipeline is None:
            return
        deadline = time.monotonic() + (self.settings.shutdown_grace if seconds is None else seconds)
        if self._connect is not None and not self.ledger_ready:
            # one more chance to reach the database before the rows are given up
            try:
                await asyncio.wait_for(asyncio.shield(self._connect), max(0.05, deadline - time.monotonic() - 1.0))
            except (TimeoutError, Exception):
                pass
        if self._connect is not None:
            self._connect.cancel()
        await self.pipeline.close(deadline)
        try:
            await self.store.close()
        except Exception:
            pass
        log.info(
            "ledger flushed on shutdown",
            extra={
                "fields": {
                    "ledger_rows_written": self.ledger.rows_written,
                    "ledger_records_not_written": self.ledger.records_dropped,
                }
            },
        )
