"""Recording a finished batch: its output and error files read from the upstream, a ledger
record per line through the pipeline (priced, logged, counted and written like any other),
then the batch marked settled once every row committed.

Two ways lead here, whichever comes first: a client's retrieve (or cancel, or listing) that
shows the batch finished, and the poller (batches/poller.py). Within a process one settling
runs per batch at a time; across processes the ledger's idempotent insert and the derived
request ids make a second reading add nothing, and a settled batch is not read again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import orjson

from ..store.errors import StoreUnavailable
from .lines import TERMINAL, ended_at, line_record
from .store import BatchCreator, BatchStore

log = logging.getLogger("tallygate.batches")

CHUNK = 256 * 1024  # file content is read in pieces this size: a file is never held whole
MAX_LINE = 64 * 1024 * 1024  # a longer line is not a result line (OpenAI's files are at most 200 MB)
SUBMIT_GROUP = 1000  # records handed to the pipeline between awaits of their commits


class BatchFilesError(Exception):
    """An output or error file could not be read whole: the batch stays unsettled."""


class BatchBilling:
    def __init__(self, *, batches: BatchStore, pipeline, router, client: Callable[[], Awaitable]) -> None:
        self.batches = batches
        self.pipeline = pipeline
        self.router = router
        self.client = client
        self._settled: set[str] = set()  # batch ids known settled (no database read for them)
        self._running: dict[str, asyncio.Task] = {}
        self._tasks: set[asyncio.Task] = set()

    async def created(self, batch: dict, principal) -> None:
        """A batch the upstream accepted: its creator, whom its lines are billed to."""
        endpoint, file_id = batch.get("endpoint"), batch.get("input_file_id")
        await self.batches.remember(
            str(batch["id"]),
            principal.tenant_id,
            principal.key_id,
            endpoint[:256] if isinstance(endpoint, str) else "",
            file_id[:256] if isinstance(file_id, str) else "",
            str(batch.get("status") or "validating")[:32],
        )

    def seen(self, batch: object) -> None:
        """A batch object the upstream answered (retrieve, cancel, listing): if it has
        finished, its lines are recorded in the background."""
        if isinstance(batch, dict):
            self.start(batch)

    def start(self, batch: dict, creator: BatchCreator | None = None) -> asyncio.Task | None:
        """Record a finished batch's lines in a task, one per batch at a time in this process."""
        batch_id = batch.get("id")
        if not isinstance(batch_id, str) or batch.get("status") not in TERMINAL or batch_id in self._settled:
            return None
        task = self._running.get(batch_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._settle_logged(batch, creator))
            self._running[batch_id] = task
            self._tasks.add(task)
            task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        for batch_id, running in list(self._running.items()):
            if running is task:
                del self._running[batch_id]

    async def _settle_logged(self, batch: dict, creator: BatchCreator | None) -> int | None:
        try:
            return await self.settle(batch, creator)
        except (StoreUnavailable, BatchFilesError) as exc:
            log.warning(
                "batch not recorded yet; tried again on the next look",
                extra={"fields": {"batch_id": batch.get("id"), "error": str(exc)[:200]}},
            )
        except Exception:
            log.exception("batch not recorded", extra={"fields": {"batch_id": batch.get("id")}})
        return None

    async def settle(self, batch: dict, creator: BatchCreator | None = None) -> int | None:
        """Record a finished batch's lines; the number recorded, None when there was nothing
        to do (not finished, not created through the gateway, settled, being read elsewhere)."""
        batch_id = batch.get("id")
        if not isinstance(batch_id, str) or batch.get("status") not in TERMINAL or batch_id in self._settled:
            return None
        if creator is None:
            creator = await self.batches.creator(batch_id)
        if creator is None:
            return None  # not created through this gateway: nobody to bill
        if creator.settled:
            self._settled.add(batch_id)
            return None
        if not await self.batches.claim(batch_id):
            return None  # another instance is reading it (or just settled it)
        try:
            count = await self._record(batch, creator)
        except BaseException:
            await asyncio.shield(self._release(batch_id))
            raise
        await self.batches.settle(batch_id, str(batch.get("status")), count)
        self._settled.add(batch_id)
        log.info(
            "batch recorded",
            extra={"fields": {"batch_id": batch_id, "tenant_id": creator.tenant_id, "lines": count}},
        )
        return count

    async def _release(self, batch_id: str) -> None:
        try:
            await self.batches.release(batch_id)
        except StoreUnavailable:
            pass  # the claim expires by itself

    async def _record(self, batch: dict, creator: BatchCreator) -> int:
        """Every line of the output and error files into the pipeline; returns once committed."""
        at = ended_at(batch, creator)
        provider = self.router.default.provider
        futures: list[asyncio.Future] = []
        for field in ("output_file_id", "error_file_id"):
            file_id = batch.get(field)
            if not isinstance(file_id, str) or not file_id:
                continue
            group = []
            async for line in self._lines(file_id):
                record = line_record(line, creator, provider, at)
                if record is None:
                    continue
                group.append(record)
                if len(group) >= SUBMIT_GROUP:
                    futures.extend(self.pipeline.submit_committed(r) for r in group)
                    group = []
                    await asyncio.sleep(0)  # let requests through between groups
            futures.extend(self.pipeline.submit_committed(r) for r in group)
        written = await asyncio.gather(*futures)
        if not all(written):
            # buffered rows wait for the database: settled on a later look (adding nothing twice)
            raise BatchFilesError(f"{written.count(False)} of {len(written)} rows not committed yet")
        return len(futures)

    async def _lines(self, file_id: str):
        """The lines of a file's content on the upstream, read in pieces."""
        import aiohttp

        route = self.router.default
        session = await self.client()
        try:
            async with session.get(route.url(f"/files/{file_id}/content"), headers=route.headers) as resp:
                if resp.status >= 400:
                    raise BatchFilesError(f"the upstream answered {resp.status} for file {file_id}")
                rest = b""
                async for piece in resp.content.iter_chunked(CHUNK):
                    rest += piece
                    *lines, rest = rest.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield line
                    if len(rest) > MAX_LINE:
                        raise BatchFilesError(f"a line of file {file_id} is longer than {MAX_LINE} bytes")
                if rest.strip():
                    yield rest
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise BatchFilesError(f"file {file_id}: {type(exc).__name__}") from None

    async def fetch(self, batch_id: str) -> dict | None:
        """The batch object from the upstream (the poller's look), None when unreadable."""
        route = self.router.default
        session = await self.client()
        async with session.get(route.url(f"/batches/{batch_id}"), headers=route.headers) as resp:
            data = await resp.read()
            if resp.status >= 400:
                return None
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        return doc if isinstance(doc, dict) else None

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
