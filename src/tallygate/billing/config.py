"""The billing exports' environment variables and options, checked in one place.

STRIPE_API_KEY, STRIPE_API_BASE (default Stripe's own), OPENMETER_URL, OPENMETER_API_KEY
are the documented names; STRIPE_METER_EVENTS_BASE the v2 stream's host (default Stripe's
own), TALLYGATE_STRIPE_METER_API which endpoint carries the events (v1 or the v2 stream);
TALLYGATE_STRIPE_METER_EVENT and TALLYGATE_STRIPE_TOKENS_METER_EVENT
name the meters, TALLYGATE_OPENMETER_SOURCE / TALLYGATE_OPENMETER_EVENT_TYPE the CloudEvents'
source and type, TALLYGATE_BILLING_SETTLE how long a ledger row is given to commit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

DEFAULT_STRIPE_API_BASE = "https://api.stripe.com"
DEFAULT_METER_EVENTS_BASE = "https://meter-events.stripe.com"  # the v2 meter event stream's own host
METER_APIS = ("v1", "v2")
DEFAULT_COST_EVENT = "tallygate_cost_micro_usd"
DEFAULT_SETTLE_SECONDS = 60
STRIPE_MAX_AGE_DAYS = 35  # Stripe takes meter event timestamps of the past 35 days only
_DURATION = re.compile(r"(\d+)\s*([smhd])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_EVENT_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,100}")


class ExportError(Exception):
    """What stops an export, said plainly (no secret in it)."""


def duration_seconds(text: str, what: str) -> int:
    m = _DURATION.fullmatch(text.strip())
    if not m or int(m.group(1)) <= 0:
        raise ExportError(f"{what} must be a duration like 30s, 15m, 1h or 1d, not {text!r}")
    return int(m.group(1)) * _SECONDS[m.group(2)]


@dataclass(frozen=True)
class StripeConfig:
    api_key: str = field(repr=False)
    api_base: str = DEFAULT_STRIPE_API_BASE
    cost_event: str = DEFAULT_COST_EVENT
    tokens_event: str | None = None  # a second meter of total tokens, when set
    meter_api: str = "v1"  # v1: POST /v1/billing/meter_events; v2: the meter event stream
    meter_events_base: str = DEFAULT_METER_EVENTS_BASE


@dataclass(frozen=True)
class OpenMeterConfig:
    url: str
    api_key: str | None = field(default=None, repr=False)
    source: str = "tallygate"
    event_type: str = "tallygate.request"


@dataclass(frozen=True)
class ExportOptions:
    window_seconds: int = 3600
    since: datetime | None = None  # where a new export starts (created_at); default 35 days back
    settle_seconds: int = DEFAULT_SETTLE_SECONDS
    dry_run: bool = False
    batch: int = 500  # Stripe: windows accounted per transaction; OpenMeter: events per request


def _event_name(env: Mapping[str, str], name: str, default: str | None) -> str | None:
    value = env.get(name, "").strip() or default
    if value is not None and not _EVENT_NAME.fullmatch(value):
        raise ExportError(f"{name} must be 1-100 characters of A-Z a-z 0-9 _ . : -")
    return value


def _base_url(env: Mapping[str, str], name: str, default: str) -> str:
    base = env.get(name, "").strip().rstrip("/") or default
    if not base.startswith(("https://", "http://")):
        raise ExportError(f"{name} must be an http(s) URL")
    return base


def stripe_config(env: Mapping[str, str], need_key: bool = True) -> StripeConfig:
    key = env.get("STRIPE_API_KEY", "").strip()
    if not key and need_key:
        raise ExportError("STRIPE_API_KEY is not set (a Stripe secret or restricted key with meter event write access)")
    base = _base_url(env, "STRIPE_API_BASE", DEFAULT_STRIPE_API_BASE)
    meter_events_base = _base_url(env, "STRIPE_METER_EVENTS_BASE", DEFAULT_METER_EVENTS_BASE)
    meter_api = env.get("TALLYGATE_STRIPE_METER_API", "").strip().lower() or "v1"
    if meter_api not in METER_APIS:
        raise ExportError(
            "TALLYGATE_STRIPE_METER_API must be v1 (POST /v1/billing/meter_events) or v2 (the meter event stream)"
        )
    cost = _event_name(env, "TALLYGATE_STRIPE_METER_EVENT", DEFAULT_COST_EVENT)
    assert cost is not None
    tokens = _event_name(env, "TALLYGATE_STRIPE_TOKENS_METER_EVENT", None)
    if tokens == cost:
        raise ExportError("TALLYGATE_STRIPE_TOKENS_METER_EVENT must differ from TALLYGATE_STRIPE_METER_EVENT")
    return StripeConfig(key or "unset", base, cost, tokens, meter_api, meter_events_base)


def openmeter_config(env: Mapping[str, str], need_url: bool = True) -> OpenMeterConfig:
    url = env.get("OPENMETER_URL", "").strip().rstrip("/")
    if not url and need_url:
        raise ExportError("OPENMETER_URL is not set (e.g. https://openmeter.cloud)")
    if url and not url.startswith(("https://", "http://")):
        raise ExportError("OPENMETER_URL must be an http(s) URL")
    return OpenMeterConfig(
        url,
        env.get("OPENMETER_API_KEY", "").strip() or None,
        env.get("TALLYGATE_OPENMETER_SOURCE", "").strip() or "tallygate",
        env.get("TALLYGATE_OPENMETER_EVENT_TYPE", "").strip() or "tallygate.request",
    )


def settle_seconds(env: Mapping[str, str]) -> int:
    text = env.get("TALLYGATE_BILLING_SETTLE", "").strip()
    return duration_seconds(text, "TALLYGATE_BILLING_SETTLE") if text else DEFAULT_SETTLE_SECONDS
