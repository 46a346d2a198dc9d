"""A provider's admin API: GET with retries (429, 5xx, connection errors), pages followed.

Bodies are parsed with `parse_float=Decimal`: OpenAI's Costs API gives amounts as JSON
numbers, and a float would change them (0.1 + 0.2). The admin key goes in a header only,
never into an error message or a log line.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import TYPE_CHECKING

from ..upstream import retry_after

if TYPE_CHECKING:
    import aiohttp

MAX_RETRY_AFTER = 300.0  # seconds: a report job can wait this long when the provider asks


class AdminApiError(Exception):
    pass


class AdminApi:
    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        *,
        attempts: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        timeout: float = 60.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Accept": "application/json", **headers}
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.calls = 0  # HTTP requests made, retries included
        self.retries = 0
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AdminApi:
        import aiohttp

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout), cookie_jar=aiohttp.DummyCookieJar()
        )
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()

    def _delay(self, attempt: int, asked: float | None) -> float:
        if asked is not None:
            return asked
        ceiling = min(self.max_backoff, self.backoff * (2**attempt))
        return ceiling * (0.5 + random.random() / 2)

    async def get(self, path: str, params: list[tuple[str, str]]) -> dict:
        import aiohttp

        assert self._session is not None, "use `async with AdminApi(...)`"
        url = self.base_url + path
        reason = ""
        for attempt in range(self.attempts):
            self.calls += 1
            asked = None
            try:
                async with self._session.get(url, params=params, headers=self.headers, allow_redirects=False) as resp:
                    body = await resp.read()
                    if resp.status == 200:
                        return _document(body, path)
                    if resp.status != 429 and resp.status < 500:
                        raise AdminApiError(f"{path}: HTTP {resp.status}: {_message(body)}")
                    reason = f"HTTP {resp.status}: {_message(body)}"
                    asked = retry_after(resp.headers)
                    if asked is not None and asked > MAX_RETRY_AFTER:
                        raise AdminApiError(f"{path}: {reason}; the provider asks to wait {asked:.0f} s")
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = f"{type(exc).__name__}"
            if attempt + 1 < self.attempts:
                self.retries += 1
                await asyncio.sleep(self._delay(attempt, asked))
        raise AdminApiError(f"{path}: gave up after {self.attempts} attempts ({reason})")

    async def pages(self, path: str, params: list[tuple[str, str]]) -> AsyncIterator[dict]:
        """Every page of a report: `has_more` and `next_page`, passed back as `page`."""
        page: str | None = None
        seen: set[str] = set()
        while True:
            doc = await self.get(path, params + ([("page", page)] if page else []))
            yield doc
            if not doc.get("has_more"):
                return
            page = doc.get("next_page")
            if not isinstance(page, str) or not page:
                raise AdminApiError(f"{path}: has_more without a next_page")
            if page in seen:
                raise AdminApiError(f"{path}: the provider returned the page cursor {page!r} twice")
            seen.add(page)


def _document(body: bytes, path: str) -> dict:
    try:
        doc = json.loads(body, parse_float=Decimal)
    except ValueError:
        raise AdminApiError(f"{path}: the answer is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise AdminApiError(f"{path}: the answer has no data list")
    return doc


def _message(body: bytes) -> str:
    """The provider's error message (OpenAI's and Anthropic's error shapes), shortened."""
    try:
        doc = json.loads(body)
        error = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"][:300]
    except ValueError:
        pass
    return body[:200].decode("utf-8", "replace")


def items(doc: dict, path: str) -> list[tuple[dict, dict]]:
    """(bucket, result) for every result of every bucket of a page."""
    out = []
    for bucket in doc["data"]:
        results = bucket.get("results") if isinstance(bucket, dict) else None
        if not isinstance(results, list):
            raise AdminApiError(f"{path}: a bucket without results")
        out += [(bucket, r) for r in results if isinstance(r, dict)]
    return out


def count(result: dict, name: str, path: str) -> int:
    """A token or request count of a result: a JSON integer, absent or null meaning 0."""
    value = result.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AdminApiError(f"{path}: {name} is not a count: {value!r}")
    return value
