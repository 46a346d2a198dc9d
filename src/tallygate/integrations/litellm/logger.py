"""TallygateLogger: the LiteLLM CustomLogger that meters every call tallygate's way.

One `litellm_request` line and one ledger row per call, success or failure, from the same
record (sinks/pipeline.py), priced exactly (metering/pricing.py). The hooks only build the
record and append it: no I/O on LiteLLM's request path. The proxy's shutdown flushes the
ledger (the logger wraps `litellm.proxy.proxy_server.proxy_shutdown_event`, which the
proxy's lifespan calls once its own callbacks have drained); outside the proxy, await
`aclose()` before the loop ends.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from ...settings import TENANT_RE
from .metering import LiteLLMMetering
from .record import record_from_call

log = logging.getLogger("tallygate.litellm")

SEEN_LIMIT = 10_000  # call ids remembered: a call handed over twice is metered once


class TallygateLogger(CustomLogger):
    def __init__(self, metering: LiteLLMMetering | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._metering = metering
        self._seen: dict[str, None] = {}
        self._hooked = False
        self._warned_sync = False

    @property
    def metering(self) -> LiteLLMMetering:
        if self._metering is None:
            self._metering = LiteLLMMetering()
        return self._metering

    # -- LiteLLM's hooks ---------------------------------------------------
    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        self._record(kwargs, response_obj, False)

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        self._record(kwargs, response_obj, True)

    def log_success_event(self, kwargs, response_obj, start_time, end_time):
        self._from_thread(kwargs, response_obj, False)

    def log_failure_event(self, kwargs, response_obj, start_time, end_time):
        self._from_thread(kwargs, response_obj, True)

    async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):
        """An X-Tenant-ID the ledger cannot hold is refused before the call, as the gateway
        refuses it (400), instead of being metered to another tenant."""
        meta = data.get("metadata") if isinstance(data, dict) else None
        if not isinstance(meta, dict) or not isinstance(meta.get("headers"), dict):
            meta = data.get("litellm_metadata") if isinstance(data, dict) else None
        headers = meta.get("headers") if isinstance(meta, dict) else None
        tenant = headers.get("x-tenant-id") if isinstance(headers, dict) else None
        if tenant is not None and not (isinstance(tenant, str) and TENANT_RE.fullmatch(tenant)):
            from fastapi import HTTPException

            raise HTTPException(
                status_code=400,
                detail={"error": "X-Tenant-ID must be 1-128 characters of [A-Za-z0-9._:@-]."},
            )
        return None

    # -- metering ------------------------------------------------------------
    def _record(self, kwargs: dict, response_obj: Any, failed: bool) -> None:
        try:
            metering = self.metering
            s = metering.settings
            record = record_from_call(kwargs, response_obj, failed, s.default_tenant, s.google_cloud_project)
            if record.request_id in self._seen:
                return
            self._seen[record.request_id] = None
            if len(self._seen) > SEEN_LIMIT:
                del self._seen[next(iter(self._seen))]
            metering.submit(record)
            if not self._hooked:
                self._hook_shutdown()
        except Exception:  # metering must never break the proxy's call
            log.exception("a LiteLLM call could not be metered")

    def _from_thread(self, kwargs: dict, response_obj: Any, failed: bool) -> None:
        """Synchronous hooks (litellm.completion outside the proxy) run in LiteLLM's threads:
        the record goes to the loop the metering runs on."""
        loop = self._metering.loop if self._metering is not None else None
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._record, kwargs, response_obj, failed)
            return
        if not self._warned_sync:
            self._warned_sync = True
            log.error("a synchronous LiteLLM call was not metered: meter async calls (acompletion) or the proxy")

    def _hook_shutdown(self) -> None:
        self._hooked = True
        proxy = sys.modules.get("litellm.proxy.proxy_server")
        original = getattr(proxy, "proxy_shutdown_event", None)
        if proxy is not None and callable(original) and not getattr(original, "tallygate_flush", False):

            async def proxy_shutdown_event(*args: Any, **kwargs: Any) -> None:
                try:
                    await self.aclose()
                finally:
                    await original(*args, **kwargs)

            proxy_shutdown_event.tallygate_flush = True  # type: ignore[attr-defined]
            proxy.proxy_shutdown_event = proxy_shutdown_event  # type: ignore[attr-defined]
        atexit.register(self._at_exit)

    async def aclose(self) -> None:
        """Flush the ledger (bounded by TALLYGATE_SHUTDOWN_GRACE)."""
        if self._metering is not None:
            await self._metering.close()

    def _at_exit(self) -> None:
        m = self._metering
        if m is not None and m.pipeline is not None and not m.closed:
            log.error(
                "the process ended without the proxy's shutdown: %d buffered ledger records were not "
                "written (their log lines hold them; rebuild with `tallygate ledger replay`)",
                m.ledger.depth,
            )


_shared: TallygateLogger | None = None
_lock = threading.Lock()


def shared() -> TallygateLogger:
    global _shared
    with _lock:
        if _shared is None:
            _shared = TallygateLogger()
        return _shared
