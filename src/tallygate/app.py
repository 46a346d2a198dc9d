"""Assembly: the parts built once (in start-up, with what each uses), the lifespan,
and the dispatch table (path -> handler). The endpoints live in routes/.

A plain ASGI callable with a dict dispatch: a framework's routing and request
objects cost more per request than the whole metering does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from typing import TYPE_CHECKING
from urllib.parse import unquote

from .auth import Authenticator, api_key_credential
from .errors import GatewayError, error_body, not_found
from .http import ClientGone, send_error, send_json
from .metering.pricing import PriceBook, load_overrides
from .proxy.formats import ENDPOINTS
from .proxy.handler import ProxyHandler
from .settings import Settings
from .sinks.jsonlog import JsonLogSink
from .sinks.metrics import MetricsSink
from .sinks.pipeline import Pipeline
from .upstream import Router, client_session, route_secrets, scrub

if TYPE_CHECKING:
    import aiohttp

    from .batches.settle import BatchBilling
    from .console import Console
    from .credits.store import CreditStore
    from .limits.guard import Guard
    from .routes.admin import Admin
    from .routes.media import Media
    from .routes.models import Models
    from .routes.objects import Objects
    from .sinks.ledger import LedgerWriter
    from .sinks.metrics_server import MetricsServer
    from .store.postgres import PostgresStore
    from .store.sqlite import SqliteStore
    from .tenants.cache import KeyCache
    from .tenants.owners import Owners
    from .tenants.store import KeyStore

log = logging.getLogger("tallygate")

_TRACE_RE = re.compile(rb"[0-9a-fA-F]{32}")
# the GET endpoints outside the proxy and the admin API (routes/service.py, routes/models.py)
# the stateful and free endpoints (routes/objects.py)
OBJECT_PATHS = (b"/v1/responses/", b"/v1/conversations", b"/v1/moderations", b"/v1/files", b"/v1/batches")
# images and audio, metered by their units (routes/media.py)
MEDIA_PATHS = (b"/v1/images/", b"/v1/audio/")
GET_PATHS = (b"/health", b"/live", b"/ready", b"/metrics", b"/openapi.json", b"/v1/models", b"/v1/balance")


# a header a request may carry once only: two would let two parts of a stack (a proxy in
# front, the gateway) each read a different one
_SINGLE = (b"authorization", b"x-tenant-id", b"x-api-key")
_SHOWN = {b"authorization": "Authorization", b"x-tenant-id": "X-Tenant-ID", b"x-api-key": "x-api-key"}


def refuse_duplicates(raw_headers) -> None:
    seen = [name for name, _ in raw_headers if name in _SINGLE]
    for name in _SINGLE:
        if seen.count(name) > 1:
            shown = _SHOWN[name]
            raise GatewayError(
                400,
                f"The {shown} header appears more than once: send it once.",
                "invalid_request_error",
                "duplicate_header",
            )


class Gateway:
    """Everything a request needs, built once: what needs no I/O here, the rest in
    startup() (uvicorn runs the lifespan start-up before it accepts a connection)."""

    # built in startup()
    store: PostgresStore | SqliteStore
    ledger: LedgerWriter
    metrics: MetricsSink
    keystore: KeyStore
    credits: CreditStore
    keys: KeyCache
    guard: Guard
    pipeline: Pipeline
    admin: Admin
    models: Models
    owners: Owners
    objects: Objects
    media: Media
    batches: BatchBilling
    loop: asyncio.AbstractEventLoop
    client_ready: asyncio.Event

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
        self.auth = Authenticator(settings.gateway_token, settings.master_key, settings.default_tenant)
        self.session: aiohttp.ClientSession | None = (
            None  # the upstream client, opened once aiohttp is imported (start_client)
        )
        self.ledger_ready = False
        self.metrics_server: MetricsServer | None = None
        # the GET endpoints (method, path) -> handler; filled by startup()
        self.routes: dict = {}
        self.proxy: ProxyHandler  # built in startup (before any request), with the parts it uses
        self._background: list[asyncio.Task] = []
        self.started = False
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

    # -- lifespan ----------------------------------------------------------
    async def startup(self) -> None:
        from .batches.settle import BatchBilling
        from .batches.store import BatchStore
        from .credits.store import CreditStore
        from .limits.counters import MemoryCounters
        from .limits.guard import Guard
        from .routes.admin import Admin
        from .routes.media import Media
        from .routes.models import Models
        from .routes.objects import Objects
        from .routes.service import Service
        from .sinks.ledger import LedgerWriter
        from .store import open_store
        from .tenants.cache import KeyCache
        from .tenants.owners import Owners
        from .tenants.store import KeyStore

        s = self.settings
        self.loop = asyncio.get_running_loop()
        self.client_ready = asyncio.Event()
        self._background.append(asyncio.create_task(self.start_client()))
        self.store = open_store(s)
        self.ledger = LedgerWriter.from_settings(self.store, s)
        self.metrics = MetricsSink(s.metrics_tenant_cap, ledger_stats=self.ledger_stats)
        self.keystore = KeyStore(self.store)
        self.credits = CreditStore(self.store)
        self.keys = KeyCache(self.keystore, s.keys_refresh, self.credits)
        self.auth.keys = self.keys
        if s.redis_url:
            from .limits.redis import RedisCounters

            counters: RedisCounters | MemoryCounters = RedisCounters(s.redis_url)
        else:
            counters = MemoryCounters()
        self.guard = Guard(
            self.keys,
            self.keystore,
            self.prices,
            counters,
            default_max_tokens=s.default_max_output_tokens,
            unpriced_reserve_mtok=s.unpriced_reserve_mtok,
            on_redis_down=s.limits_on_redis_down,
            on_db_down=s.limits_on_db_down,
            failed_open=self.metrics.failed_open,
            credit_low_usd=s.credit_low_usd,
        )
        if s.metrics_port:
            from .sinks.metrics_server import MetricsServer

            self.metrics_server = MetricsServer(self.metrics.render, s.metrics_host, s.metrics_port)
            await self.metrics_server.start()
        if s.ledger == "off":
            log.warning(
                "TALLYGATE_LEDGER=off: no ledger rows are written; the log lines are the only "
                "record of usage, and budgets count only what this process saw since it started"
            )
        self.owners = Owners(self.store)  # also a sink: the response ids of metered records
        self.pipeline = Pipeline(
            self.prices,
            [JsonLogSink(), self.metrics, self.owners],
            self.ledger if s.ledger == "on" else None,
            [self.guard],
            wait_for_commit=s.ledger_mode == "sync",
            commit_timeout=s.sync_commit_timeout,
            default_max_output_tokens=s.default_max_output_tokens,
            default_context_tokens=s.default_context_tokens,
        )
        self.pipeline.start()
        self.batches = BatchBilling(
            batches=BatchStore(self.store), pipeline=self.pipeline, router=self.router, client=self.client
        )
        self.objects = Objects(
            auth=self.auth,
            router=self.router,
            client=self.client,
            guard=self.guard,
            pipeline=self.pipeline,
            owners=self.owners,
            secrets=self.upstream_secrets_b,
            trace_for=self.trace_for,
            max_body_bytes=s.max_body_bytes,
            max_file_bytes=s.max_file_bytes,
            batches=self.batches,
        )
        self.media = Media(
            auth=self.auth,
            router=self.router,
            client=self.client,
            guard=self.guard,
            pipeline=self.pipeline,
            prices=self.prices,
            secrets=self.upstream_secrets_b,
            trace_for=self.trace_for,
            max_body_bytes=s.max_body_bytes,
            max_file_bytes=s.max_file_bytes,
        )
        self.proxy = ProxyHandler(
            router=self.router,
            guard=self.guard,
            pipeline=self.pipeline,
            client=self.client,
            loop=self.loop,
            max_body_bytes=s.max_body_bytes,
            sse_max_event_bytes=s.sse_max_event_bytes,
            retries=s.retries,
            retry_backoff=s.retry_backoff,
            retry_max_backoff=s.retry_max_backoff,
            first_byte_timeout=s.first_byte_timeout,
            trace_for=self.trace_for,
            secrets=self.upstream_secrets_b,
            scrub=scrub,
            references=self.objects.require_references,
        )
        from .routes.credits import Credits

        credits = Credits(self.auth, self.credits, self.keys, self.guard, lambda: self.ledger_ready)
        self.admin = Admin(self.auth, self.keystore, self.keys, self.store, lambda: self.ledger_ready, credits)
        service = Service(self.auth, s.metrics_mode, self.metrics.render, self.is_ready)
        models = Models(self.auth, self.router, self.client, self.upstream_secrets_b)
        self.routes = {
            **service.routes(),
            (b"GET", b"/v1/models"): models.handle,
            (b"GET", b"/v1/balance"): credits.balance,
        }
        self.models = models
        self.started = True
        import gc

        # fewer, larger young-generation passes: a request's garbage is short-lived, and
        # the default (700) runs the collector every few requests
        gc.set_threshold(20_000, 50, 100)
        gc.freeze()  # what start-up built lives forever: no collection needs to scan it again
        # the database connects in the background: /health answers at once, /ready
        # (Cloud Run's startup probe) once the ledger is reachable and migrated
        self._background.append(asyncio.create_task(self._connect_store_until_ready()))
        if os.environ.get("TALLYGATE_BILLING_EXPORT"):  # the billing export's loop, off the request path
            from .billing.export import start_in_gateway

            start_in_gateway(s, os.environ)

    def is_ready(self) -> bool:
        return self.ledger_ready and self.session is not None

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
                raise RuntimeError(
                    f"the ledger schema is missing or old in {self.store.description} "
                    "and TALLYGATE_AUTO_MIGRATE is off: run `tallygate db init`"
                )
            applied = await self.store.migrate()
            log.info("ledger schema applied", extra={"fields": {"migrations": applied}})
        await self.keys.refresh()
        self.keys.start()
        if self.store.dialect == "postgres":  # partitions ahead, retention: hourly, one instance of many
            from .store.partitions import maintenance_loop

            self._background.append(
                asyncio.create_task(maintenance_loop(self.store, self.settings.ledger_retention_days))
            )
        from .batches.poller import poll_loop

        self._background.append(
            asyncio.create_task(
                poll_loop(self.batches, self.batches.batches, self.settings, self.settings.batch_poll_interval)
            )
        )
        self.ledger_ready = True
        log.info(
            "ledger ready",
            extra={"fields": {"ledger": self.store.description, "ledger_mode": self.settings.ledger_mode}},
        )

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
                    log.error(
                        "ledger unavailable; serving, records are buffered and /ready "
                        "answers 503 until it is reachable: %s",
                        exc,
                    )
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
        if self.started:
            self.keys.stop()
            if self.metrics_server is not None:
                await self.metrics_server.close()
            await self.batches.close()
            await self.pipeline.close(deadline)
            await self.owners.close()
            await self.guard.close()
        if self.session is not None:
            await self.session.close()
        if self.started:
            try:
                await self.store.close()
            except Exception:
                pass
            log.info(
                "shutdown complete",
                extra={
                    "fields": {
                        "ledger_rows_written": self.ledger.rows_written,
                        "ledger_records_not_written": self.ledger.records_dropped,
                    }
                },
            )

    def ledger_stats(self) -> dict:
        w = self.ledger
        if self.settings.ledger == "off":
            return {}
        return {
            "depth": w.depth,
            "rows_written": w.rows_written,
            "rows_duplicate": w.rows_duplicate,
            "records_dropped": w.records_dropped,
            "write_failures": w.write_failures,
        }


class App:
    """The ASGI callable."""

    def __init__(self, settings: Settings) -> None:
        self.g = Gateway(settings)
        self._allowed: dict[bytes, list[bytes]] = {path: [b"GET"] for path in GET_PATHS}
        for path in ENDPOINTS:
            self._allowed[path] = [b"POST"]
        # path -> (upstream path, wire format, the routes that speak it)
        router = self.g.router
        self.endpoints = {path: (up, fmt, router.for_wire(fmt.wire)) for path, (up, fmt) in ENDPOINTS.items()}
        self._console: Console | None = None

    def console(self) -> Console:
        """The web console, built (and its code imported) when /ui is first asked for."""
        if self._console is None:
            from .console import Console

            g = self.g
            self._console = Console(
                settings=g.settings,
                auth=g.auth,
                keystore=g.keystore,
                keys=g.keys,
                store=g.store,
                admin=g.admin,
                ledger_ready=lambda: g.ledger_ready,
            )
        return self._console

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
        endpoint = self.endpoints.get(path)
        try:
            if endpoint is not None and scope["method"] == "POST":
                raw = scope["headers"]
                headers = dict(raw)
                if len(headers) != len(raw):  # a name repeated: maybe one that must come once
                    refuse_duplicates(raw)
                authorization = headers.get(b"authorization")
                if authorization is None and endpoint[1].api_key_header is not None:
                    # Anthropic's SDKs send their key as x-api-key (on the OpenAI endpoints: a 401)
                    authorization = api_key_credential(headers.get(endpoint[1].api_key_header))
                principal = self.g.auth.authenticate(authorization, headers.get(b"x-tenant-id"))
                await self.g.proxy.handle(scope, receive, send, endpoint, principal, headers)
                return
            refuse_duplicates(scope["headers"])
            method = scope["method"].encode()
            handler = self.g.routes.get((method, path))
            if handler is not None:
                await handler(scope, receive, send)
                return
            if path.startswith(b"/admin/") or path == b"/v1/usage":
                await self.g.admin.handle(scope, receive, send, method, path)
                return
            if path.startswith(OBJECT_PATHS):  # responses by id, conversations, moderations, files
                await self.g.objects.handle(scope, receive, send, method, path)
                return
            if path.startswith(MEDIA_PATHS):  # images and audio
                await self.g.media.handle(scope, receive, send, method, path)
                return
            if method == b"GET" and path.startswith(b"/v1/models/"):
                await self.g.models.retrieve(scope, receive, send, unquote(path[11:].decode("utf-8", "replace")))
                return
            if path.startswith(b"/ui") and (len(path) == 3 or path[3] == 47):  # /ui or /ui/...
                await self.console().handle(scope, receive, send, method, path)
                return
            allowed = self._allowed.get(path)
            if allowed:
                raise GatewayError(
                    405,
                    f"Method {method.decode()} not allowed on {path.decode()}.",
                    "invalid_request_error",
                    "method_not_allowed",
                    [(b"allow", b", ".join(allowed))],
                )
            raise not_found(f"Unknown path {scope['path'][:200]!r}.")
        except GatewayError as err:
            if endpoint is not None:
                if self.g.started:
                    self.g.metrics.rejected(err.code or str(err.status))
                await send_json(send, err.status, endpoint[1].error_body(err), err.headers)  # the format's shape
                return
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


def create_app(settings: Settings | None = None) -> App:
    from . import settings as settings_module

    return App(settings or settings_module.load())


__all__ = ["App", "Gateway", "create_app", "error_body"]
