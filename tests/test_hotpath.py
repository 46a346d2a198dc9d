"""Helpers of the request path that were made cheaper keep their contracts."""

from __future__ import annotations

import re
import time

import pytest

from tallygate.auth import Authenticator
from tallygate.errors import GatewayError
from tallygate.routes.openai import elapsed_ms, new_request_id


def test_request_ids_are_unique_and_keep_their_format_across_refills():
    ids = [new_request_id() for _ in range(5000)]  # ~10 refills of the random buffer
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"req_[0-9a-f]{24}", i) for i in ids)


def test_elapsed_ms_is_milliseconds_to_the_microsecond():
    started = time.perf_counter() - 0.0123456
    ms = elapsed_ms(started)
    assert 12.3 < ms < 100
    assert ms == round(ms, 3)


def test_tenant_header_is_checked_every_time_it_is_bad_and_cached_when_good():
    auth = Authenticator("tok", None, None)
    for _ in range(2):
        with pytest.raises(GatewayError) as err:
            auth.authenticate(b"Bearer tok", b"bad tenant!")
        assert err.value.status == 400
    assert auth.authenticate(b"Bearer tok", b"acme").tenant_id == "acme"
    assert auth.authenticate(b"Bearer tok", b"acme").tenant_id == "acme"
    with pytest.raises(GatewayError):
        auth.authenticate(b"Bearer tok", None)  # no default tenant: still an error


def test_price_cache_stays_bounded_whatever_model_names_clients_send(monkeypatch):
    from tallygate.metering import pricing

    monkeypatch.setattr(pricing, "CACHE_LIMIT", 50)
    book = pricing.PriceBook({"known": pricing.Price(pricing.Decimal("1"), pricing.Decimal("2"), None, "override")})
    for i in range(500):
        assert book.price("openai", "known", f"snapshot-{i}").source == "override"
        assert len(book._cache) <= 50
    assert book.price("openai", "known", None).input_mtok == 1
