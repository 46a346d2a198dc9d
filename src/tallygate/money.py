"""Amounts as text: exact, fixed point, never an exponent.

`str(Decimal("2E-8"))` is `2E-8`, which a person misreads and some billing systems
refuse. Every amount a person or another system reads goes through `usd_text`: the
exact value in plain digits (`0.00000002`), trailing zeros after the point removed,
no rounding at all (rounding rules, where there are any, live where amounts are
converted to integers: budgets count nano-dollars rounded up, see limits).
"""

from __future__ import annotations

from decimal import Decimal


def usd_text(value: Decimal) -> str:
    """`Decimal` -> plain fixed-point text, exact: 2E-8 -> "0.00000002", 1.50 -> "1.5"."""
    if not value:
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text
