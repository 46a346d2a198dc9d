"""Amounts as people and billing systems read them: exact fixed-point text."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tallygate.metering.record import UsageRecord
from tallygate.money import usd_text
from tallygate.reports import format_table
from tallygate.sinks.jsonlog import log_entry


@pytest.mark.parametrize("value, text", [
    ("2E-8", "0.00000002"), ("1.50", "1.5"), ("1E+2", "100"), ("0", "0"), ("0E-12", "0"),
    ("0.0000106500", "0.00001065"), ("123456789.000000001", "123456789.000000001"),
])
def test_usd_text_is_exact_fixed_point(value, text):
    assert usd_text(Decimal(value)) == text
    assert Decimal(usd_text(Decimal(value))) == Decimal(value)


def test_log_line_and_report_never_print_an_exponent():
    rec = UsageRecord(request_id="req_1", created_at=datetime.now(UTC), tenant_id="t",
                      model="m", endpoint="/v1/chat/completions", stream=False,
                      cost_usd=Decimal("2E-8"))
    assert log_entry(rec)["cost_usd_exact"] == "0.00000002"
    table = format_table([{"tenant_id": "t", "requests": 1, "prompt_tokens": 1, "completion_tokens": 0,
                           "total_tokens": 1, "cached_tokens": 0, "cost_usd": "0.00000002"},
                          {"tenant_id": "u", "requests": 1, "prompt_tokens": 1, "completion_tokens": 0,
                           "total_tokens": 1, "cached_tokens": 0, "cost_usd": "0.00000001"}])
    assert "0.00000003" in table and "E-" not in table
