"""The ASGI application: dispatch, lifespan (pools, pipeline start and flush).

A plain ASGI callable with a dict dispatch: a framework's routing and request
objects cost more per request than the whole metering does.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

import orjson

from . import __version__
from .auth import Authenticator
from .errors import GatewayError, error_body, not_found
from .metering.pricing import PriceBook, load_overrides
from .proxy.body import ClientGone
from .proxy.formats import ENDPOINTS
from .proxy.handler import ProxyHandler
from .settings import Settings
from .sinks.jsonlog import JsonLogSink
from .sinks.metrics import MetricsSink
from .sinks.pipeline import LINGER, Pipeline
from .upstream import Router, client_session

log = logging.getLogger("tallygate")

_TRACE_RE = re.compile(rb"[0-9a-fA-F]{32}")
JSON = [(b"content-type", b"application/json")]


def _json_response_headers(body: bytes, extra=()) -> list:
    return [*JSON, (b"content-length", str(len(body)).encode()), *extra]


async def send_json(send, status: int, doc, extra=()) -> None:
    body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    await send({"type": "http.response.start", "status": status,
                "headers": _json_response_headers(body, extra)})
    await send({"type": "http.response.body", "body": body})


async def send_error(send, err: GatewayError) -> None:
    await send_json(send, err.status, err.body(), err.headers)


_SECRET_HEADER_RE = re.compile(r"key|token|auth|secret|password", re.I)
REDACTED = b"[redacted]"


def route_secrets(router) -> tuple[str, ...]:
    routes = [router.default, *router.exact.values(), *(r for _, r in router.prefixes)]
    found = [r.api_key for r in routes]
    found.extend(str(v) for r in routes for k, v in r.extra_headers.items() if _SECRET_HEADER_RE.search(str(k)))
    return tuple(dict.fromkeys(s for s in found if s))


def scrub(data: bytes, secrets: tuple[bytes, ...]) -> bytes:
    """An upstream error body without the upstream's keys in it (some quote the key they got)."""
    for secret in secrets:
        if secret in data:
            data = data.replace(secret, REDACTED)
    return data


# a header a request may carry once only: two would let two parts of a stack (a proxy in
# front, the gateway) each read a different one
_SINGLE = (b"authorization", b"x-tenant-id")


def refuse_duplicates(raw_headers) -> None:
    seen = [name for name, _ in raw_headers if name in _SINGLE]
    for name in _SINGLE:
        if seen.count(name) > 1:
            shown = "Authorization" if name == b"authorization" else "X-Tenant-ID"
            raise GatewayError(400, f"The {shown} header appears more than once: send it once.",
                               "invalid_request_error", "duplicate_header")


class Gateway:
    """Everything a request needs, built once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.router = Router.from_settings(settings)
        # upstream keys (and secret-looking route headers): scrubbed from logs and from the
        # upstream error bodies relayed to tenants
        self.upstream_secrets = route_secrets(self.router)
        from . import logs

        logs.add_secrets(self.upstream_secrets)
        self.upstream_secrets_b = tuple(s.encode() for s in logs.scrub_forms(self.upstream_secrets))
        overrides = load_overrides(settings.prices_file) if settings.prices_file else {}
        self.prices = PriceBook(overrides)
        self.keys = None  # tenant keys (KeyCache), set up in startup when the store has them
        self.guard = None  # limits and budgets
        self.auth = Authenticator(settings.gateway_token, settings.master_key,
                                  settings.default_tenant)
        self.sync_ledger = settings.ledger_mode == "sync"
        self.session = None
        self.loop: asyncio.AbstractEventLoop | None = None  # set in startup
        self.client_ready: asyncio.Event | None = None
        self.store = None
        self.ledger = None
        self.pipeline: Pipeline | None = None
        self.metrics: MetricsSink | None = None
        self.ledger_ready = False
        self.proxy: ProxyHandler | None = None  # built in startup, with the parts it uses
        self._background: list[asyncio.Task] = []
        self.admin = None
        self.metrics_server = None
        self.started_at = time.monotonic()
        self.shutdown_started: float | None = None

    # -- tracing -----------------------------------------------------------
    def trace_for(self, headers: dict) -> str | None:
        project = self.settings.google_cloud_project
        if not project:
            return None
        raw = headers.get(b"x-cloud-trace-context")
        trace_id = None
        if raw:
            candidate = raw.split(b"/", 1)[0]
            if _TRACE_RE.fullmatch(candidate):
                trace_id = candidate
        if trace_id is None:
            raw = headers.get(b"traceparent")
            if raw:
                parts = raw.split(b"-")
                if len(parts) >= 3 and _TRACE_RE.fullmatch(parts[1]):
                    trace_id = parts[1]
        if trace_id is None:
            return None
        return f"projects/{project}/traces/{trace_id.decode().lower()}"

    async def commit(self, record) -> None:
        """Sync ledger mode: wait (bounded) until the record's row committed. Past the
        bound the response goes out anyway; the row stays buffered and is retried."""
        fut = self.pipeline.submit_and_wait(record)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.settings.sync_commit_timeout)
        except asyncio.TimeoutError:
            log.warning("ledger commit is slow; answering before the row committed",
                        extra={"fields": {"request_id": record.request_id}})

    # -- lifespan ----------------------------------------------------------
    async def startup(self) -> None:
        from .sinks.ledger import LedgerWriter
        from .store import open_store

        s = self.settings
        self.loop = asyncio.get_running_loop()
        self.client_ready = asyncio.Event()
        self._background.append(asyncio.create_task(self.start_client()))
        self.store = open_store(s)
        self.ledger = LedgerWriter(self.store, batch_size=s.ledger_batch_size,
                                   flush_interval=s.ledger_flush_interval,
                                   buffer_limit=s.ledger_buffer_limit)
        self.metrics = MetricsSink(s.metrics_tenant_cap, ledger_stats=self.ledger_stats)
        from .limits.counters import MemoryCounters
        from .limits.guard import Guard
        from .tenants.cache import KeyCache
        from .tenants.store import KeyStore

        self.keystore = KeyStore(self.store)
        self.keys = KeyCache(self.keystore, s.keys_refresh)
        self.auth.keys = self.keys
        if s.redis_url:
            from .limits.redis import RedisCounters

            counters = RedisCounters(s.redis_url)
        else:
            counters = MemoryCounters()
        self.guard = Guard(self.keys, self.keystore, self.prices, counters,
                           default_max_tokens=s.default_max_output_tokens,
                           unpriced_reserve_mtok=s.unpriced_reserve_mtok,
                           on_redis_down=s.limits_on_redis_down, on_db_down=s.limits_on_db_down,
                           failed_open=self.metrics.failed_open)
        hooks = [self.guard]
        if s.metrics_port:
            from .sinks.metrics_server import MetricsServer

            self.metrics_server = MetricsServer(self.metrics.render, s.metrics_host, s.metrics_port)
            await self.metrics_server.start()
        self.pipeline = Pipeline(self.prices, JsonLogSink(), self.metrics, self.ledger, hooks,
                                 linger=0.0 if self.sync_ledger else LINGER,
                                 default_max_output_tokens=s.default_max_output_tokens,
                                 default_context_tokens=s.default_context_tokens)
        self.pipeline.start()
        self.proxy = ProxyHandler(
            router=self.router, guard=self.guard, pipeline=self.pipeline, client=self.client, loop=self.loop,
            max_body_bytes=s.max_body_bytes, sse_max_event_bytes=s.sse_max_event_bytes, retries=s.retries,
            retry_backoff=s.retry_backoff, retry_max_backoff=s.retry_max_backoff,
            first_byte_timeout=s.first_byte_timeout, sync_ledger=self.sync_ledger, commit=self.commit,
            trace_for=self.trace_for, secrets=self.upstream_secrets_b, scrub=scrub)
        from .routes.admin import Admin

        self.admin = Admin(self)
        import gc

        # fewer, larger young-generation passes: a request's garbage is short-lived, and
        # the default (700) runs the collector every few requests
        gc.set_threshold(20_000, 50, 100)
        gc.freeze()  # what start-up built lives forever: no collection needs to scan it again
        # the database connects in the background: /health answers at once, /ready
        # (Cloud Run's startup probe) once the ledger is reachable and migrated
        self._background.append(asyncio.create_task(self._connect_store_until_ready()))

    async def start_client(self) -> None:
        """Import the HTTP client in a thread after the server listens, then open the pool."""
        import importlib

        await asyncio.get_running_loop().run_in_executor(None, importlib.import_module, "aiohttp")
        self.session = client_session(self.settings)
        self.client_ready.set()

    async def client(self):
        if self.session is None:
            await self.client_ready.wait()
        return self.session

    async def _connect_store(self) -> None:
        await self.store.connect()
        if await self.store.needs_migration():
            if not self.settings.auto_migrate:
                raise RuntimeError(f"the ledger schema is missing or old in {self.store.description} "
                                   "and TALLYGATE_AUTO_MIGRATE is off: run `tallygate db init`")
            applied = await self.store.migrate()
            log.info("ledger schema applied", extra={"fields": {"migrations": applied}})
        await self.keys.refresh()
        self.keys.start()
        self.ledger_ready = True
        log.info("ledger ready", extra={"fields": {"ledger": self.store.description,
                                                   "ledger_mode": self.settings.ledger_mode}})

    async def _connect_store_until_ready(self) -> None:
        delay = 0.5
        first = True
        while not self.ledger_ready:
            try:
                await self._connect_store()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if first:
                    log.error("ledger unavailable; serving, records are buffered and /ready "
                              "answers 503 until it is reachable: %s", exc)
                    first = False
                else:
                    log.warning("ledger still unavailable: %s", exc)
                await asyncio.sleep(delay)
                # capped at 5 s: until the first load, requests needing tenant data are refused
                delay = min(delay * 2, 5.0)

    async def shutdown(self) -> None:
        # Cloud Run sends SIGKILL 10 s after SIGTERM: finish inside that window
        began = self.shutdown_started or time.monotonic()
        deadline = max(began + 9.5, time.monotonic() + 0.5)
        for task in self._background:
            task.cancel()
        if self.keys is not None:
            self.keys.stop()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        if self.pipeline is not None:
            await self.pipeline.close(deadline)
        if self.guard is not None:
            await self.guard.close()
        if self.session is not None:
            await self.session.close()
        if self.store is not None:
            try:
                await self.store.close()
            except Exception:
                pass
        if self.ledger is not None:
            log.info("shutdown complete", extra={"fields": {
                "ledger_rows_written": self.ledger.rows_written,
                "ledger_records_not_written": self.ledger.records_dropped}})

    def ledger_stats(self) -> dict:
        w = self.ledger
        if w is None:
            return {}
        return {"depth": w.depth, "rows_written": w.rows_written, "rows_duplicate": w.rows_duplicate,
                "records_dropped": w.records_dropped, "write_failures": w.write_failures}


class App:
    """The ASGI callable."""

    def __init__(self, settings: Settings) -> None:
        self.g = Gateway(settings)
        self._health = orjson.dumps({"status": "ok", "version": __version__})
        self._routes = {
            (b"GET", b"/health"): self.health,
            (b"GET", b"/live"): self.health,
            (b"GET", b"/ready"): self.ready,
            (b"GET", b"/metrics"): self.metrics,
            (b"GET", b"/openapi.json"): self.openapi,
            (b"GET", b"/v1/models"): self.models,
        }
        self._allowed: dict[bytes, list[bytes]] = {}
        for (method, path) in self._routes:
            self._allowed.setdefault(path, []).append(method)
        for path in ENDPOINTS:
            self._allowed[path] = [b"POST"]

    async def __call__(self, scope, receive, send) -> None:
        """HTTP requests are dispatched here directly: a coroutine layer per request is
        measurable at these rates."""
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.lifespan(receive, send)
            return
        path = scope["raw_path"] or scope["path"].encode()
        if path.find(b"?") >= 0:  # uvicorn's raw_path has no query; other servers' may
            path = path.split(b"?", 1)[0]
        endpoint = ENDPOINTS.get(path)
        try:
            if endpoint is not None and scope["method"] == "POST":
                raw = scope["headers"]
                headers = dict(raw)
                if len(headers) != len(raw):  # a name repeated: maybe one that must come once
                    refuse_duplicates(raw)
                principal = self.g.auth.authenticate(headers.get(b"authorization"),
                                                     headers.get(b"x-tenant-id"))
                await self.g.proxy.handle(scope, receive, send, endpoint, principal, headers)
                return
            refuse_duplicates(scope["headers"])
            method = scope["method"].encode()
            handler = self._routes.get((method, path))
            if handler is not None:
                await handler(scope, receive, send)
                return
            if path.startswith(b"/admin/") or path == b"/v1/usage":
                await self.g.admin.handle(scope, receive, send, method, path)
                return
            allowed = self._allowed.get(path)
            if allowed:
                raise GatewayError(405, f"Method {method.decode()} not allowed on {path.decode()}.",
                                   "invalid_request_error", "method_not_allowed",
                                   [(b"allow", b", ".join(allowed))])
            raise not_found(f"Unknown path {scope['path'][:200]!r}.")
        except GatewayError as err:
            if endpoint is not None and self.g.metrics is not None:
                self.g.metrics.rejected(err.code or str(err.status))
            await send_error(send, err)
        except ClientGone:
            return

    async def lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.g.startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.g.shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return

    # -- small endpoints ---------------------------------------------------
    async def health(self, scope, receive, send) -> None:
        await send_json(send, 200, self._health)

    async def ready(self, scope, receive, send) -> None:
        g = self.g
        # unauthenticated: no error text, no host or database name
        if g.ledger_ready and g.session is not None:
            await send_json(send, 200, {"status": "ready"})
        else:
            await send_json(send, 503, {"status": "starting", "detail": "the ledger is not reachable yet"})

    async def metrics(self, scope, receive, send) -> None:
        g = self.g
        mode = g.settings.metrics_mode
        if mode == "off":
            raise not_found("Metrics are turned off (TALLYGATE_METRICS=off).")
        if mode == "auth":
            headers = dict(scope["headers"])
            authz = headers.get(b"authorization")
            if not g.auth.is_master(authz):
                from .errors import forbidden, unauthorized

                if not g.auth.is_known(authz):
                    raise unauthorized("/metrics needs the master key (or TALLYGATE_METRICS=public).")
                raise forbidden("/metrics needs the master key.")
        body = g.metrics.render()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def openapi(self, scope, receive, send) -> None:
        from .openapi import spec

        await send_json(send, 200, spec())

    async def models(self, scope, receive, send) -> None:
        g = self.g
        headers = dict(scope["headers"])
        g.auth.authenticate(headers.get(b"authorization"), headers.get(b"x-tenant-id"))
        route = g.router.default
        session = await g.client()
        import aiohttp

        try:
            async with session.get(route.url("/models"), headers=route.headers) as resp:
                data = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise GatewayError(502, f"Could not reach the upstream: {type(exc).__name__}.",
                               "upstream_error", "upstream_unreachable") from None
        if status >= 400:
            data = scrub(data, g.upstream_secrets_b)
        extra = g.router.models()
        if status == 200 and extra:
            try:
                doc = orjson.loads(data)
                known = {m.get("id") for m in doc.get("data", []) if isinstance(m, dict)}
                for name in extra:
                    if name not in known:
                        doc["data"].append({"id": name, "object": "model", "created": 0,
                                            "owned_by": g.router.exact[name].provider})
                data = orjson.dumps(doc)
            except (orjson.JSONDecodeError, AttributeError, TypeError):
                pass
        await send({"type": "http.response.start", "status": status,
                    "headers": _json_response_headers(data)})
        await send({"type": "http.response.body", "body": data})


def create_app(settings: Settings | None = None) -> App:
    from . import settings as settings_module

    return App(settings or settings_module.load())


__all__ = ["App", "Gateway", "create_app", "error_body"]
