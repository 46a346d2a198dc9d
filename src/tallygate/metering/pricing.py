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
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .usage import Usage, has_priced_parts

if TYPE_CHECKING:  # the price data is imported in a thread after start-up
    from genai_prices.data_snapshot import DataSnapshot

MILLION = Decimal(1_000_000)
ZERO = Decimal(0)


class PriceFileError(ValueError):
    pass


# Usage parts a provider bills at a rate of their own, and the price key of each: a request
# with one of them goes through the library's calculation, and is priced "partial" when the
# price has no rate for it (the part is then billed as the plain input or output it is part
# of, or, for a fee, not at all). Cache writes are not here: without a rate of their own
# they are input (OpenAI's rule); a 1-hour write is checked apart (`_unpriced_part`).
BILLED_APART = (
    ("audio_input_tokens", "input_audio_mtok"),
    ("audio_output_tokens", "output_audio_mtok"),
    ("image_input_tokens", "input_image_mtok"),
    ("image_output_tokens", "output_image_mtok"),
    ("web_search_calls", "web_searches_kcount"),
    ("file_search_calls", "storage_searches_kcount"),
)
# service tiers billed at the standard price (OpenAI answers "default" for the standard tier)
# The bound of a model whose price has a size tier at or past the data's context window
LONG_CONTEXT_WINDOW = 1_000_000
STANDARD_TIERS = frozenset({None, "", "default", "auto", "standard", "standard_only"})


def tier_context(tier: str | None) -> dict[str, str] | None:
    """The genai-prices price context of a service tier: batch work is its `processing`
    variant, flex and priority its `service_tier` variants."""
    if tier in STANDARD_TIERS:
        return None
    assert tier is not None
    return {"processing": "batch"} if tier == "batch" else {"service_tier": tier}


def _library_usage(usage: Any) -> Any:
    from genai_prices.types import Usage as LibUsage

    writes = usage.cache_write_tokens
    values = {
        "input_tokens": usage.prompt_tokens,
        "cache_read_tokens": usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_write_tokens": writes,
        # the library needs the 1-hour part stated inside the total it belongs to
        "cache_write_1h_tokens": min(usage.cache_write_1h_tokens, writes),
        "input_audio_tokens": usage.audio_input_tokens,
        "output_audio_tokens": usage.audio_output_tokens,
        "input_image_tokens": usage.image_input_tokens,
        "output_image_tokens": usage.image_output_tokens,
        "web_searches": usage.web_search_calls,
        "storage_searches": usage.file_search_calls,
    }
    return LibUsage(**values)


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens for the common case (input, cache reads, output: a few
    microseconds of Decimal arithmetic), and the library's `ModelPrice` for the rest:
    tiered prices, cache writes, audio and image tokens, per-call tool fees."""

    input_mtok: Decimal
    output_mtok: Decimal
    cache_read_mtok: Decimal | None
    source: str
    library_price: Any = None  # a genai-prices ModelPrice (overrides are turned into one too)
    context_window: int | None = None  # the model's largest input (bounds plausible usage)
    tiered: bool = False  # a rate depends on the request's size: always the library's calculation
    tier_priced: bool = True  # False: the reported service tier has no price of its own here
    # the name the price is known by (the price file's entry, the price data's model id): the
    # model's metric label, bounded by the data whatever name a client sent
    model: str | None = None
    # USD per image: quality -> size -> price (the price file's `images` table; metering/media.py)
    image_prices: dict[str, dict[str, Decimal]] | None = None

    def cost(self, usage: Any) -> Decimal:
        # without a library price (a file of plain rates), extra parts are billed as the
        # input or output they are part of: the arithmetic below, and source_for says partial
        if self.tiered or (self.library_price is not None and has_priced_parts(usage)):
            return self.library_price.calc_price(_library_usage(usage))["total_price"]
        cached = usage.cached_tokens
        cache_rate = self.cache_read_mtok if self.cache_read_mtok is not None else self.input_mtok
        total = (
            (usage.prompt_tokens - cached) * self.input_mtok
            + cached * cache_rate
            + usage.completion_tokens * self.output_mtok
        )
        return total / MILLION

    def source_for(self, usage: Any) -> str:
        """`source`, or `source:partial` when the usage has a part this price has no rate for."""
        if self.source == "unknown":
            return self.source
        if not self.tier_priced or (has_priced_parts(usage) and _unpriced_part(self.library_price, usage)):
            return self.source + ":partial"
        return self.source


# OpenAI's Batch API bills every rate at half the standard one (input, cache reads, output and
# the parts priced apart). Batch work is priced at the price data's batch variant where it has
# one (`processing: batch`: the source stays "genai-prices"); without one (most models in
# genai-prices 0.2.3, and a price file without a `batch` tier) at the standard price times
# BATCH_FACTOR, exact in Decimal, with ":batch50" added to the source so a row says which.
BATCH_TIER = "batch"
BATCH_FACTOR = Decimal("0.5")
BATCH_RULE = ":batch50"


@dataclass(frozen=True, slots=True)
class HalfPrice(Price):
    """The standard price of a model, billed at BATCH_FACTOR (the 50% rule above)."""

    def cost(self, usage: Any) -> Decimal:
        return Price.cost(self, usage) * BATCH_FACTOR


def batch_rule(price: Price) -> Price:
    """A batch-tier price the data or the file did not give: the standard one at 50%."""
    if price.source == "unknown":
        return price
    fields = {name: getattr(price, name) for name in Price.__dataclass_fields__}
    return HalfPrice(**{**fields, "source": price.source + BATCH_RULE, "tier_priced": True})


def _unpriced_part(price: Any, usage: Any) -> bool:
    def rate(key: str) -> Any:
        return None if price is None else getattr(price, key)

    # a 1-hour write billed at the 5-minute rate would be under-billed
    if usage.cache_write_1h_tokens and rate("cache_write_mtok") is not None and rate("cache_write_1h_mtok") is None:
        return True
    return any(getattr(usage, field) and rate(key) is None for field, key in BILLED_APART)


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


# the rates the fast arithmetic uses: a file with only these never imports the library
PLAIN_KEYS = frozenset({"input_mtok", "output_mtok", "cache_read_mtok"})


def _price_key(key: str) -> bool:
    """Whether genai-prices knows the price name (its ModelPrice answers None for a known
    name it has no value for, and raises for any other)."""
    from genai_prices.types import ModelPrice

    try:
        getattr(ModelPrice(), key)
    except AttributeError:
        return False
    return True


def _rates(table: dict, where: str) -> dict[str, Decimal]:
    rates = {}
    for key, value in table.items():
        if key in ("context_window", "tiers", "images"):
            continue
        if key not in PLAIN_KEYS and not _price_key(key):
            raise PriceFileError(
                f"{where}: unknown price {key!r} (genai-prices price keys: input_mtok, cache_write_mtok, input_audio_mtok, web_searches_kcount, ...)"
            )
        rates[key] = _decimal(value, f"{where}.{key}")
    return rates


def _image_prices(table: object, where: str) -> dict[str, dict[str, Decimal]] | None:
    """`images = {standard = {"1024x1024" = 0.04, ...}, hd = {...}}`: USD per image."""
    if table is None:
        return None
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise PriceFileError(f"{where}.images must be a table of qualities, each a table of sizes")
    return {
        str(q): {str(size): _decimal(v, f"{where}.images.{q}.{size}") for size, v in sizes.items()}
        for q, sizes in table.items()
    }


# rates that price a media request by its own unit: a model with only these (and `images`)
# needs no token rates
MEDIA_KEYS = frozenset({"input_audio_hours", "audio_hours", "input_mchars"})


def _override_price(
    rates: dict[str, Decimal],
    window: int | None,
    name: str,
    images: dict[str, dict[str, Decimal]] | None = None,
) -> Price:
    rates = {"input_mtok": ZERO, "output_mtok": ZERO, **rates}
    library_price = None
    if not rates.keys() <= PLAIN_KEYS:  # ~0.35 s to import: only for files that need it
        from genai_prices.types import ModelPrice

        library_price = ModelPrice(**rates)
    return Price(
        input_mtok=rates["input_mtok"],
        output_mtok=rates["output_mtok"],
        cache_read_mtok=rates.get("cache_read_mtok"),
        source="override",
        library_price=library_price,
        context_window=window,
        model=name,
        image_prices=images,
    )


def load_overrides(path: str) -> dict[str, Price]:
    """Override file, TOML or JSON: a table per model name, USD per million tokens (per
    thousand calls for `_kcount` fees), keyed by genai-prices' own price names.

    [models."gpt-4o"]
    input_mtok = 2.25
    output_mtok = 9
    cache_read_mtok = 1.125      # optional; defaults to input_mtok
    cache_write_mtok = 2.8125    # optional; cache writes default to the input rate
    cache_write_1h_mtok = 4.5    # optional: 1-hour cache writes (Anthropic)
    input_audio_mtok = 40        # optional: audio tokens (else billed as text, "partial")
    output_audio_mtok = 80
    web_searches_kcount = 10     # optional: USD per 1,000 web search calls
    context_window = 128000      # optional: bounds plausible usage and the budget's worst case
    [models."gpt-4o".tiers.flex]  # optional: a service tier's rates (flex, priority, batch)
    input_mtok = 1.125
    output_mtok = 4.5

    Tiers are stored under the name "<model>@<tier>".

    Images and audio (metering/media.py) are priced in their own units; such a model needs
    no token rates:

    [models."dall-e-3".images]   # USD per image: quality -> size
    standard = {"1024x1024" = 0.04, "1024x1792" = 0.08, "1792x1024" = 0.08}
    hd = {"1024x1024" = 0.08, "1024x1792" = 0.12, "1792x1024" = 0.12}
    [models."whisper-1"]
    input_audio_hours = 0.36     # USD per hour of audio ($0.006 a minute)
    [models."tts-1"]
    input_mchars = 15            # USD per million characters of input
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
        media_only = isinstance(entry, dict) and ("images" in entry or not MEDIA_KEYS.isdisjoint(entry))
        if not isinstance(entry, dict) or not media_only and ("input_mtok" not in entry or "output_mtok" not in entry):
            raise PriceFileError(
                f"{path}: model {name!r} needs input_mtok and output_mtok (or, for images and audio, "
                "images, input_audio_hours or input_mchars)"
            )
        window = entry.get("context_window")
        if window is not None and (type(window) is not int or window < 1):
            raise PriceFileError(f"{path}: {name}.context_window must be a positive integer")
        rates = _rates(entry, name)
        images = _image_prices(entry.get("images"), name)
        prices[name] = _override_price(rates, window, name, images)
        tiers = entry.get("tiers", {})
        if not isinstance(tiers, dict):
            raise PriceFileError(f"{path}: {name}.tiers must be a table of tiers")
        for tier, table in tiers.items():
            if not isinstance(table, dict):
                raise PriceFileError(f"{path}: {name}.tiers.{tier} must be a table")
            tier_rates = rates | _rates(table, f"{name}.tiers.{tier}")
            prices[f"{name}@{tier}"] = _override_price(tier_rates, window, name, images)
    return prices


def _data_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return "genai-prices " + version("genai-prices")
    except PackageNotFoundError:  # pragma: no cover - installed with tallygate
        return "genai-prices"


UNKNOWN = Price(ZERO, ZERO, None, "unknown")
CACHE_LIMIT = 10_000  # resolved (provider, model, upstream model, tier) prices kept


class PriceBook:
    def __init__(self, overrides: dict[str, Price] | None = None) -> None:
        self._overrides = overrides or {}
        self.version = _data_version()  # written with each record, so an old bill can be explained
        self._cache: dict[tuple[str | None, str, str | None, str | None], Price] = {}
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

    def price(
        self, provider: str | None, model: str, upstream_model: str | None = None, tier: str | None = None
    ) -> Price:
        """The price of a model at a service tier (None: standard), resolved once."""
        if tier in STANDARD_TIERS:
            tier = None
        key = (provider, model, upstream_model, tier)
        cached = self._cache.get(key)
        if cached is None:
            if len(self._cache) >= CACHE_LIMIT:  # model names come from clients: stay bounded
                self._cache.clear()
            cached = self._cache[key] = self._resolve(provider, model, upstream_model, tier)
        return cached

    def cost(self, provider: str | None, model: str, upstream_model: str | None, usage: Usage) -> tuple[Decimal, str]:
        price = self.price(provider, model, upstream_model, usage.service_tier)
        return price.cost(usage), price.source_for(usage)

    def _resolve(self, provider: str | None, model: str, upstream_model: str | None, tier: str | None) -> Price:
        for name in (model, upstream_model):
            if name and name in self._overrides:
                if tier is None:
                    return self._overrides[name]
                tiered = self._overrides.get(f"{name}@{tier}")
                if tiered is not None:
                    return tiered
                if tier == BATCH_TIER:
                    return batch_rule(self._overrides[name])
                # a tier the file does not price: its standard rates, marked partial (the
                # library's tier rate would mix two sources)
                return replace(self._overrides[name], tier_priced=False)
        self.warm()
        # the upstream's own name is the most precise (e.g. a dated snapshot)
        for name in (upstream_model, model):
            if not name:
                continue
            price = self._from_library(provider, name, tier)
            if price is not None:
                if tier == BATCH_TIER and not price.tier_priced:  # no batch variant: the 50% rule
                    return batch_rule(self._from_library(provider, name, None) or price)
                return price
        return UNKNOWN

    def _from_library(self, provider: str | None, name: str, tier: str | None) -> Price | None:
        from genai_prices.types import TieredPrices

        snapshot = self._snapshot
        if snapshot is None:  # not loaded (yet): overrides only
            return None
        context = tier_context(tier)
        for provider_id in (provider, None) if provider else (None,):
            try:
                _, model_info = snapshot.find_provider_model(name, None, provider_id, None)
            except (LookupError, ValueError):
                continue
            mp = model_info.get_prices(datetime.now(UTC), context)
            tier_priced = context is None or any(
                all(context.get(k) == v for k, v in variant.when.items()) for variant in model_info.price_variants or ()
            )
            inp, out, cache = mp.input_mtok, mp.output_mtok, mp.cache_read_mtok
            window = model_info.context_window
            known = model_info.id  # the data's own name for it (a metric label, bounded)
            tiered = any(isinstance(v, TieredPrices) for v in mp.__dict__.values())
            if tiered:
                starts = [t.start for v in mp.__dict__.values() if isinstance(v, TieredPrices) for t in v.tiers]
                if window is not None and starts and max(starts) >= window:
                    # priced past its window: the model takes longer inputs than the data says
                    # (Anthropic's 1M-token context beta); bounded at the longest such window
                    window = max(window, LONG_CONTEXT_WINDOW)
                return Price(ZERO, ZERO, None, "genai-prices", mp, window, True, tier_priced, model=known)
            assert not isinstance(inp, TieredPrices) and not isinstance(out, TieredPrices)
            assert not isinstance(cache, TieredPrices)
            return Price(
                inp or ZERO, out or ZERO, cache, "genai-prices", mp, window, tier_priced=tier_priced, model=known
            )
        return None
