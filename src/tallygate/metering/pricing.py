"""USD cost of a request, exact (Decimal), from the genai-prices data.

A model's prices are resolved once and cached: the generic library call costs
hundreds of microseconds, the cached arithmetic a few. The library itself takes
~0.3 s to import, so it is loaded in a thread after start-up (`warm`), never on
the request path. An override file sets negotiated prices and prices for models
the data does not know; unknown models cost 0 with price_source "unknown".
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .usage import Usage

if TYPE_CHECKING:  # the price data is imported in a thread after start-up
    from genai_prices.data_snapshot import DataSnapshot

MILLION = Decimal(1_000_000)
ZERO = Decimal(0)


class PriceFileError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens. `library_price` is set for tiered prices the simple
    formula cannot express; those go through the library's own calculation."""

    input_mtok: Decimal
    output_mtok: Decimal
    cache_read_mtok: Decimal | None
    source: str
    library_price: Any = None
    context_window: int | None = None  # the model's largest input (bounds plausible usage)

    def cost(self, usage: Usage) -> Decimal:
        if self.library_price is not None:
            from genai_prices.types import Usage as LibUsage

            calc = self.library_price.calc_price(
                LibUsage(
                    input_tokens=usage.prompt_tokens,
                    cache_read_tokens=usage.cached_tokens,
                    output_tokens=usage.completion_tokens,
                )
            )
            return calc["total_price"]
        cached = usage.cached_tokens
        cache_rate = self.cache_read_mtok if self.cache_read_mtok is not None else self.input_mtok
        total = (
            (usage.prompt_tokens - cached) * self.input_mtok
            + cached * cache_rate
            + usage.completion_tokens * self.output_mtok
        )
        return total / MILLION


def _decimal(value: object, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PriceFileError(f"{where}: expected a number, got {value!r}")
    try:
        result = Decimal(str(value))
    except Exception:
        raise PriceFileError(f"{where}: not a number: {value!r}") from None
    if not result.is_finite() or result < 0:
        raise PriceFileError(f"{where}: must be a non-negative number, got {value!r}")
    return result


def load_overrides(path: str) -> dict[str, Price]:
    """Override file, TOML or JSON: a table per model name, USD per million tokens.

    [models."gpt-4o"]
    input_mtok = 2.25
    output_mtok = 9
    cache_read_mtok = 1.125   # optional; defaults to input_mtok
    context_window = 128000   # optional: bounds plausible usage and the budget's worst case
    """
    raw = Path(path).read_bytes()
    try:
        doc = json.loads(raw) if path.endswith(".json") else tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise PriceFileError(f"{path}: cannot parse: {exc}") from None
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, dict):
        raise PriceFileError(f"{path}: expected a [models] table")
    prices = {}
    for name, entry in models.items():
        if not isinstance(entry, dict) or "input_mtok" not in entry or "output_mtok" not in entry:
            raise PriceFileError(f"{path}: model {name!r} needs input_mtok and output_mtok")
        cache = entry.get("cache_read_mtok")
        window = entry.get("context_window")
        if window is not None and (type(window) is not int or window < 1):
            raise PriceFileError(f"{path}: {name}.context_window must be a positive integer")
        prices[name] = Price(
            input_mtok=_decimal(entry["input_mtok"], f"{name}.input_mtok"),
            output_mtok=_decimal(entry["output_mtok"], f"{name}.output_mtok"),
            cache_read_mtok=None if cache is None else _decimal(cache, f"{name}.cache_read_mtok"),
            source="override",
            context_window=window,
        )
    return prices


UNKNOWN = Price(ZERO, ZERO, None, "unknown")
CACHE_LIMIT = 10_000  # resolved (provider, model, upstream model) prices kept


class PriceBook:
    def __init__(self, overrides: dict[str, Price] | None = None) -> None:
        self._overrides = overrides or {}
        self._cache: dict[tuple[str | None, str, str | None], Price] = {}
        self._snapshot: DataSnapshot | None = None
        self._warming: asyncio.Future[None] | None = None
        self._lock = threading.Lock()

    async def ensure_warm(self) -> None:
        """Load the price data in a thread, once; callers on the event loop await this
        instead of importing the library on the loop."""
        if self._snapshot is not None:
            return
        if self._warming is None:
            self._warming = asyncio.get_running_loop().run_in_executor(None, self.warm)
        await self._warming

    def warm(self) -> None:
        """Load the price data (slow import); safe to call from a thread, more than once."""
        with self._lock:
            if self._snapshot is None:
                from genai_prices import data_snapshot

                self._snapshot = data_snapshot.get_snapshot()
                # ~60,000 long-lived objects: keep them out of every later garbage
                # collection (a full pass over them takes ~40 ms, a latency spike)
                gc.freeze()

    def price(self, provider: str | None, model: str, upstream_model: str | None = None) -> Price:
        key = (provider, model, upstream_model)
        cached = self._cache.get(key)
        if cached is None:
            if len(self._cache) >= CACHE_LIMIT:  # model names come from clients: stay bounded
                self._cache.clear()
            cached = self._cache[key] = self._resolve(provider, model, upstream_model)
        return cached

    def cost(self, provider: str | None, model: str, upstream_model: str | None, usage: Usage) -> tuple[Decimal, str]:
        price = self.price(provider, model, upstream_model)
        return price.cost(usage), price.source

    def _resolve(self, provider: str | None, model: str, upstream_model: str | None) -> Price:
        for name in (model, upstream_model):
            if name and name in self._overrides:
                return self._overrides[name]
        self.warm()
        # the upstream's own name is the most precise (e.g. a dated snapshot)
        for name in (upstream_model, model):
            if not name:
                continue
            price = self._from_library(provider, name)
            if price is not None:
                return price
        return UNKNOWN

    def _from_library(self, provider: str | None, name: str) -> Price | None:
        from genai_prices.types import TieredPrices

        snapshot = self._snapshot
        if snapshot is None:  # not loaded (yet): overrides only
            return None
        for provider_id in (provider, None) if provider else (None,):
            try:
                _, model_info = snapshot.find_provider_model(name, None, provider_id, None)
            except (LookupError, ValueError):
                continue
            mp = model_info.get_prices(datetime.now(UTC))
            inp, out, cache = mp.input_mtok, mp.output_mtok, mp.cache_read_mtok
            window = model_info.context_window
            if isinstance(inp, TieredPrices) or isinstance(out, TieredPrices) or isinstance(cache, TieredPrices):
                return Price(ZERO, ZERO, None, "genai-prices", library_price=mp, context_window=window)
            return Price(inp or ZERO, out or ZERO, cache, "genai-prices", context_window=window)
        return None
