"""Tenant keys through the admin API, and chat requests made with them."""

from __future__ import annotations

import uuid

from .http import admin_call, call_json

MESSAGES = [{"role": "user", "content": "hi"}]
REDIS = "redis://127.0.0.1:6379/0"  # the machine's Redis, for limits shared by two gateways


def unique(prefix: str) -> str:
    """A tenant id no other test (or earlier session on the same database) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def new_key(gw, tenant: str, **limits) -> dict:
    """POST /admin/keys; the created key's document (key, key_id, key_prefix, ...)."""
    status, _, doc = admin_call(gw.url + "/admin/keys", "POST", {"tenant_id": tenant, **limits})
    assert status == 201, doc
    return doc


def chat(gw, key: str, tenant: str | None = None, model: str = "gpt-4o-mini", **kw):
    """A chat completion with `key` (and X-Tenant-ID `tenant`); (status, headers, doc)."""
    return call_json(gw.base_url + "/chat/completions", "POST",
                     {"model": model, "messages": MESSAGES, **kw}, token=key,
                     headers={"X-Tenant-ID": tenant} if tenant else None)
