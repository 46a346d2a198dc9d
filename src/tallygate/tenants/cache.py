"""Every key and tenant limit in memory, refreshed from the database by polling.

Each instance polls for changes (`TALLYGATE_KEYS_REFRESH`, default 2 s), so a lookup
never costs a database round trip and a revocation reaches every instance within a
refresh interval. What this instance changes itself is in force here at once.
Prepaid tenants' credit accounts (credits/) are polled with them.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from ..auth import hash_key
from .model import Limits, TenantKey
from .store import KeyStore

log = logging.getLogger("tallygate.keys")


class KeyCache:
    """All keys and tenant limits in memory; refreshed from the database by polling."""

    def __init__(self, keystore: KeyStore, refresh_interval: float = 2.0, credits=None) -> None:
        self.keystore = keystore
        self.credits = credits  # credits.store.CreditStore, or None: nobody is prepaid
        self.prepaid: dict = {}  # tenant_id -> credits.model.CreditAccount; read it, change it through set_prepaid
        self.refresh_interval = refresh_interval
        self._by_hash: dict[str, TenantKey] = {}
        self.tenants: dict[str, Limits] = {}  # read it; change it through set_tenant
        self.loaded = False
        self._task: asyncio.Task | None = None

    def lookup(self, secret: str) -> TenantKey | None:
        key = self._by_hash.get(hash_key(secret))
        if key is None or key.revoked_at is not None:
            return None
        if key.expires_at is not None and key.expires_at <= datetime.now(UTC):
            return None
        return key

    def add(self, secret: str, key: TenantKey) -> None:
        """A key created by this instance works here at once."""
        self._by_hash[hash_key(secret)] = key

    def set_tenant(self, tenant_id: str, limits: Limits) -> None:
        """Tenant limits stored by this instance are in force here at once."""
        self.tenants[tenant_id] = limits

    def set_prepaid(self, account) -> None:
        """A top-up stored by this instance is in force here at once."""
        self.prepaid = {**self.prepaid, account.tenant_id: account}

    def revoke_local(self, key_id: str) -> None:
        for key in self._by_hash.values():
            if key.key_id == key_id and key.revoked_at is None:
                key.revoked_at = datetime.now(UTC)

    async def refresh(self) -> None:
        keys = {k.key_id: k for k in await self.keystore.keys()}
        by_hash = {}
        for key_hash, key_id, _active in await self.keystore.key_hashes():
            key = keys.get(key_id)
            if key is not None:
                by_hash[key_hash] = key
        self._by_hash = by_hash
        self.tenants = await self.keystore.tenants()
        if self.credits is not None:
            self.prepaid = await self.credits.accounts()
        self.loaded = True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll(), name="key-cache")

    async def _poll(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.refresh()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning(
                        "key refresh failed; serving the keys already loaded: %s",
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                    )

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
