"""A fake of the providers' admin reports, on a loopback port in a thread of the test:

- OpenAI: GET /v1/organization/usage/completions, /v1/organization/usage/embeddings and
  /v1/organization/costs (`Authorization: Bearer <admin key>`; start_time / end_time in
  unix seconds, bucket_width, group_by[], limit, page; pages of {"object": "page", "data":
  [buckets], "has_more", "next_page"}, buckets of {"object": "bucket", "start_time",
  "end_time", "results"}; cost amounts as JSON numbers written exactly as given).
- Anthropic: GET /v1/organizations/usage_report/messages and /v1/organizations/cost_report
  (`x-api-key`, `anthropic-version`; starting_at / ending_at in RFC 3339, group_by[]; pages
  of {"data": [{"starting_at", "ending_at", "results"}], "has_more", "next_page"}; cost
  amounts as decimal strings in cents).

The test sets the results of the day (`openai_completions`, `openai_embeddings`,
`openai_costs`, `anthropic_usage`, `anthropic_costs`). The real APIs page by buckets; with
one day there is one bucket, so the fake splits a bucket's results over pages of
`page_size` (2 pages or more) to exercise the cursor. The first request of all is answered
429 with the provider's error shape and a Retry-After (`rate_limit_once`); `fail_next`
lists 5xx statuses to answer before that.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
from datetime import UTC, datetime
from decimal import Decimal

from aiohttp import web

from .processes import free_port

DAY = 86400
OPENAI_GROUPS = {"project_id", "user_id", "api_key_id", "model", "batch", "service_tier"}
OPENAI_COST_GROUPS = {"project_id", "user_id", "line_item", "api_key_id"}
ANTHROPIC_GROUPS = {"api_key_id", "workspace_id", "model", "service_tier", "context_window", "inference_geo",
                    "speed", "account_id", "service_account_id"}
ANTHROPIC_COST_GROUPS = {"workspace_id", "description"}
_NUMBER = re.compile(r'"__number__([-0-9.eE+]+)__"')


def _dumps(doc) -> bytes:
    """JSON with Decimal values written as the exact JSON numbers they are."""
    text = json.dumps(doc, default=lambda v: f"__number__{v}__" if isinstance(v, Decimal) else str(v))
    return _NUMBER.sub(r"\1", text).encode()


class FakeUsageApi:
    def __init__(self, admin_key: str = "sk-admin-test-0123456789", page_size: int = 2,
                 rate_limit_once: bool = True, retry_after: str = "1") -> None:
        self.admin_key = admin_key
        self.page_size = page_size
        self.rate_limit_once = rate_limit_once
        self.retry_after = retry_after
        self.openai_completions: list[dict] = []
        self.openai_embeddings: list[dict] = []
        self.openai_costs: list[dict] = []
        self.anthropic_usage: list[dict] = []
        self.anthropic_costs: list[dict] = []
        self.calls: list[tuple[str, list[tuple[str, str]], int]] = []  # (path, query, status)
        self.fail_next: list[int] = []  # statuses (5xx) answered first, one a request
        self.port = free_port()
        self.openai_base_url = f"http://127.0.0.1:{self.port}/v1"
        self.anthropic_base_url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake usage API did not start")

    # -- the server -------------------------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/v1/organization/usage/completions", self._openai_usage("completions"))
        app.router.add_get("/v1/organization/usage/embeddings", self._openai_usage("embeddings"))
        app.router.add_get("/v1/organization/costs", self._openai_costs)
        app.router.add_get("/v1/organizations/usage_report/messages", self._anthropic_usage)
        app.router.add_get("/v1/organizations/cost_report", self._anthropic_costs)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        async def down() -> None:
            await self._runner.cleanup()
        asyncio.run_coroutine_threadsafe(down(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def reset_calls(self, rate_limit_once: bool = True) -> None:
        self.calls.clear()
        self.rate_limit_once = rate_limit_once

    # -- shared -------------------------------------------------------------------------------
    def _answer(self, request: web.Request, status: int, doc, headers: dict | None = None) -> web.Response:
        self.calls.append((request.path, list(request.query.items()), status))
        return web.Response(status=status, body=_dumps(doc), content_type="application/json", headers=headers)

    def _throttled(self) -> bool:
        """The 429 once (or a failure from `fail_next`): checked after authentication."""
        if self.rate_limit_once:
            self.rate_limit_once = False
            return True
        return False

    def _page(self, request: web.Request, results: list[dict]) -> tuple[list[dict], bool, str | None]:
        page = request.query.get("page")
        offset = int(base64.urlsafe_b64decode(page.encode()).decode()) if page else 0
        chunk = results[offset : offset + self.page_size]
        more = offset + self.page_size < len(results)
        token = base64.urlsafe_b64encode(str(offset + self.page_size).encode()).decode() if more else None
        return chunk, more, token

    # -- OpenAI -------------------------------------------------------------------------------
    def _openai_error(self, request, status: int, message: str, code: str | None = None, headers=None):
        kind = "rate_limit_exceeded" if status == 429 else "invalid_request_error"
        return self._answer(request, status, {"error": {"message": message, "type": kind, "param": None,
                                                        "code": code}}, headers)

    def _openai_window(self, request, groups: set[str]):
        if request.headers.get("Authorization") != f"Bearer {self.admin_key}":
            return None, self._openai_error(request, 401, "Incorrect API key provided.", "invalid_api_key")
        if self.fail_next:
            status = self.fail_next.pop(0)
            return None, self._openai_error(request, status, "The server had an error processing your request.")
        if self._throttled():
            return None, self._openai_error(request, 429, "Rate limit reached for requests.", "rate_limit_exceeded",
                                            {"retry-after": self.retry_after})
        q = request.query
        try:
            start = int(q["start_time"])
            end = int(q.get("end_time", start + DAY))
        except (KeyError, ValueError):
            return None, self._openai_error(request, 400, "start_time is required (unix seconds).")
        if q.get("bucket_width", "1d") != "1d" or start % DAY or end - start != DAY:
            return None, self._openai_error(request, 400, "the fake serves one whole UTC day in a 1d bucket")
        # a list as the official SDK sends it (group_by[]=a&group_by[]=b) or repeated (group_by=a&group_by=b)
        asked = set(q.getall("group_by[]", [])) | set(q.getall("group_by", []))
        if asked - groups:
            return None, self._openai_error(request, 400, f"Invalid group_by: {sorted(asked - groups)}")
        return (start, end, asked), None

    def _openai_usage(self, kind: str):
        async def handler(request: web.Request) -> web.Response:
            window, error = self._openai_window(request, OPENAI_GROUPS)
            if error is not None:
                return error
            start, end, groups = window
            source = self.openai_completions if kind == "completions" else self.openai_embeddings
            results = []
            for r in source:
                item = {"object": f"organization.usage.{kind}.result", **r}
                for g in ("project_id", "user_id", "api_key_id", "model", "batch"):
                    item[g] = r.get(g) if g in groups else None
                results.append(item)
            chunk, more, token = self._page(request, results)
            return self._answer(request, 200, {
                "object": "page",
                "data": [{"object": "bucket", "start_time": start, "end_time": end, "results": chunk}],
                "has_more": more, "next_page": token})
        return handler

    async def _openai_costs(self, request: web.Request) -> web.Response:
        window, error = self._openai_window(request, OPENAI_COST_GROUPS)
        if error is not None:
            return error
        start, end, groups = window
        results = [{"object": "organization.costs.result", "amount": r["amount"],
                    "line_item": r.get("line_item") if "line_item" in groups else None,
                    "project_id": r.get("project_id") if "project_id" in groups else None,
                    "api_key_id": r.get("api_key_id") if "api_key_id" in groups else None}
                   for r in self.openai_costs]
        chunk, more, token = self._page(request, results)
        return self._answer(request, 200, {
            "object": "page",
            "data": [{"object": "bucket", "start_time": start, "end_time": end, "results": chunk}],
            "has_more": more, "next_page": token})

    # -- Anthropic ----------------------------------------------------------------------------
    def _anthropic_error(self, request, status: int, kind: str, message: str, headers=None):
        return self._answer(request, status, {"type": "error", "error": {"type": kind, "message": message}}, headers)

    def _anthropic_window(self, request, groups: set[str]):
        if request.headers.get("x-api-key") != self.admin_key:
            return None, self._anthropic_error(request, 401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return None, self._anthropic_error(request, 400, "invalid_request_error",
                                               "anthropic-version: header is required")
        if self.fail_next:
            status = self.fail_next.pop(0)
            kind = "overloaded_error" if status == 529 else "api_error"
            return None, self._anthropic_error(request, status, kind, "Internal server error")
        if self._throttled():
            return None, self._anthropic_error(request, 429, "rate_limit_error", "Number of requests has exceeded "
                                               "your rate limit.", {"retry-after": self.retry_after})
        q = request.query
        try:
            start = datetime.fromisoformat(q["starting_at"].replace("Z", "+00:00"))
            end = datetime.fromisoformat(q.get("ending_at", "").replace("Z", "+00:00"))
        except (KeyError, ValueError):
            return None, self._anthropic_error(request, 400, "invalid_request_error",
                                               "starting_at and ending_at must be RFC 3339 times")
        if q.get("bucket_width", "1d") != "1d" or (end - start).total_seconds() != DAY or start.hour or start.minute:
            return None, self._anthropic_error(request, 400, "invalid_request_error",
                                               "the fake serves one whole UTC day in a 1d bucket")
        asked = set(q.getall("group_by[]", []))
        if asked - groups:
            return None, self._anthropic_error(request, 400, "invalid_request_error",
                                               f"invalid group_by[]: {sorted(asked - groups)}")
        return (start.astimezone(UTC), end.astimezone(UTC), asked), None

    def _anthropic_bucket(self, request, start, end, results):
        chunk, more, token = self._page(request, results)
        stamp = "%Y-%m-%dT%H:%M:%SZ"
        return self._answer(request, 200, {
            "data": [{"starting_at": start.strftime(stamp), "ending_at": end.strftime(stamp), "results": chunk}],
            "has_more": more, "next_page": token})

    async def _anthropic_usage(self, request: web.Request) -> web.Response:
        window, error = self._anthropic_window(request, ANTHROPIC_GROUPS)
        if error is not None:
            return error
        start, end, groups = window
        results = []
        for r in self.anthropic_usage:
            item = {
                "uncached_input_tokens": r.get("uncached_input_tokens", 0),
                "cache_creation": {"ephemeral_5m_input_tokens": r.get("ephemeral_5m_input_tokens", 0),
                                   "ephemeral_1h_input_tokens": r.get("ephemeral_1h_input_tokens", 0)},
                "cache_read_input_tokens": r.get("cache_read_input_tokens", 0),
                "output_tokens": r.get("output_tokens", 0),
                "server_tool_use": {"web_search_requests": r.get("web_search_requests", 0)},
            }
            for g in ("api_key_id", "workspace_id", "model", "service_tier", "context_window"):
                item[g] = r.get(g) if g in groups else None
            results.append(item)
        return self._anthropic_bucket(request, start, end, results)

    async def _anthropic_costs(self, request: web.Request) -> web.Response:
        window, error = self._anthropic_window(request, ANTHROPIC_COST_GROUPS)
        if error is not None:
            return error
        start, end, groups = window
        results = [{"currency": "USD", "amount": str(r["amount_cents"]),
                    "workspace_id": r.get("workspace_id") if "workspace_id" in groups else None,
                    "description": None, "cost_type": None, "context_window": None, "model": None,
                    "service_tier": None, "token_type": None}
                   for r in self.anthropic_costs]
        return self._anthropic_bucket(request, start, end, results)
