"""Upstreams: which base URL and key serve a model, and one pooled HTTP client.

The default route is OpenAI (`OPENAI_BASE_URL`, `OPENAI_API_KEY`). A TOML file
(`TALLYGATE_CONFIG`) adds routes for other OpenAI-compatible upstreams:

    [[routes]]
    model = "llama3"                       # exact name, or a prefix ending in "*"
    base_url = "http://127.0.0.1:11434/v1"
    api_key_env = "OLLAMA_API_KEY"         # the key is read from this variable
    provider = "ollama"                    # label + price lookup (genai-prices provider id)
    upstream_model = "llama3:8b"           # optional: name sent upstream
    stream_usage = true                    # inject stream_options.include_usage
    auth = "bearer"                        # bearer | api-key (Azure) | x-api-key | none
    query = { "api-version" = "2024-10-21" }
    fallbacks = ["gpt-4o-mini"]            # tried in order when this one fails

Reliability (docs/reliability.md): an attempt that fails with a connection error, 429
or a 5xx is retried with exponential backoff and jitter (`TALLYGATE_RETRIES`, default
2) while nothing has been sent to the client; when a route's attempts are used up (or
it timed out), the route's fallbacks are tried in order. Timeouts: connect
(`TALLYGATE_CONNECT_TIMEOUT`), first byte (`TALLYGATE_FIRST_BYTE_TIMEOUT`: until the
response headers) and read (`TALLYGATE_READ_TIMEOUT`: the longest silence on the
upstream socket, so also the idle time between stream chunks).

Anthropic's Messages API (`/v1/messages`, proxy/formats/anthropic.py) has routes of its
own: the default one is `ANTHROPIC_BASE_URL` + "/v1" with `ANTHROPIC_API_KEY`, and routes of
`provider = "anthropic"` in the file (base_url ending in /v1, like every route; `auth`
defaults to `x-api-key`, Anthropic's header) serve the models they name. A model name is
looked up among those only: an OpenAI-format route cannot answer Anthropic's wire format.
"""

from __future__ import annotations

import os
import random
import re
import tomllib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from .settings import Settings, SettingsError

if TYPE_CHECKING:
    import aiohttp
    import multidict
    import yarl

# response headers worth passing back to the client
PASS_HEADERS = frozenset(
    {
        b"content-type",
        b"x-request-id",
        b"openai-processing-ms",
        b"openai-version",
        b"openai-organization",
        b"openai-model",
        b"retry-after",
        b"retry-after-ms",
        b"request-id",  # Anthropic's
    }
)
# request headers a client may send on to the upstream (Authorization is always ours)
FORWARD_HEADERS = frozenset(
    {
        b"openai-organization",
        b"openai-project",
        b"openai-beta",
        b"idempotency-key",
        b"anthropic-version",  # the Messages API's version and betas are the client's choice
        b"anthropic-beta",
    }
)
PROVIDER_ANTHROPIC = "anthropic"
# sent to an Anthropic route when the client names no version (the SDKs always do)
ANTHROPIC_VERSION = "2023-06-01"


@dataclass
class Route:
    name: str
    base_url: str
    provider: str
    api_key: str | None = None
    auth: str = "bearer"
    upstream_model: str | None = None
    stream_usage: bool = True
    query: dict = field(default_factory=dict)
    extra_headers: dict = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        if self.api_key and self.auth == "bearer":
            headers["Authorization"] = f"Bearer {self.api_key}"
        elif self.api_key and self.auth == "api-key":
            headers["api-key"] = self.api_key
        elif self.api_key and self.auth == "x-api-key":
            headers["x-api-key"] = self.api_key
        if self.provider == PROVIDER_ANTHROPIC:
            headers["anthropic-version"] = ANTHROPIC_VERSION  # a client's own replaces it
        headers.update(self.extra_headers)
        self.headers = headers  # built once, reused by every request
        self._urls: dict[str, str] = {}
        self._targets: dict = {}
        self._client_headers: multidict.CIMultiDict[str] | None = None

    def url(self, endpoint: str) -> str:
        """`endpoint` is the path after /v1, e.g. "/chat/completions"."""
        url = self._urls.get(endpoint)
        if url is None:
            url = self.base_url + endpoint
            if self.query:
                url += "?" + urlencode(self.query)
            self._urls[endpoint] = url
        return url

    # The HTTP client takes these as they are; given strings and a dict it parses the
    # URL and copies the headers into its own type on every request.
    def target(self, endpoint: str) -> yarl.URL:
        """url(endpoint) as the client's URL object, parsed once."""
        target = self._targets.get(endpoint)
        if target is None:
            from yarl import URL

            target = self._targets[endpoint] = URL(self.url(endpoint))
        return target

    def client_headers(self) -> multidict.CIMultiDict[str]:
        """The route's headers as the client's header type, built once."""
        if self._client_headers is None:
            from multidict import CIMultiDict

            self._client_headers = CIMultiDict(self.headers)
        return self._client_headers


def _route_from_table(entry: dict, where: str) -> tuple[str, Route]:
    model = entry.get("model")
    base_url = entry.get("base_url")
    if not isinstance(model, str) or not model:
        raise SettingsError(f"{where}: each route needs a 'model' name")
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise SettingsError(f"{where}: route {model!r} needs a base_url starting with http:// or https://")
    key = entry.get("api_key")
    key_env = entry.get("api_key_env")
    if key_env:
        key = os.environ.get(key_env)
        if not key:
            raise SettingsError(f"{where}: route {model!r} reads its key from {key_env}, which is not set")
    provider = str(entry.get("provider", "openai"))
    auth = entry.get("auth", "x-api-key" if provider == PROVIDER_ANTHROPIC else "bearer")
    if auth not in ("bearer", "api-key", "x-api-key", "none"):
        raise SettingsError(f"{where}: route {model!r}: auth must be bearer, api-key, x-api-key or none")
    fallbacks = entry.get("fallbacks", [])
    if not isinstance(fallbacks, list) or not all(isinstance(f, str) for f in fallbacks):
        raise SettingsError(f"{where}: route {model!r}: fallbacks must be a list of model names")
    return model, Route(
        name=model,
        base_url=base_url.rstrip("/"),
        provider=provider,
        api_key=key,
        auth=auth,
        upstream_model=entry.get("upstream_model"),
        stream_usage=bool(entry.get("stream_usage", True)),
        query=dict(entry.get("query", {})),
        extra_headers=dict(entry.get("headers", {})),
        fallbacks=fallbacks,
    )


class Router:
    def __init__(
        self, default: Route, exact: dict[str, Route] | None = None, prefixes: list[tuple[str, Route]] | None = None
    ) -> None:
        self.default = default
        self.exact = exact or {}
        self.prefixes = sorted(prefixes or [], key=lambda p: -len(p[0]))  # longest first
        self.anthropic: Router | None = None  # the Messages API's routes (from_settings)

    @classmethod
    def from_settings(cls, settings: Settings) -> Router:
        default = Route("default", settings.openai_base_url, "openai", settings.openai_api_key)
        anthropic = Route(
            "anthropic",
            settings.anthropic_base_url + "/v1",
            PROVIDER_ANTHROPIC,
            settings.anthropic_api_key,
            auth="x-api-key",
        )
        exact: dict[str, Route] = {}
        prefixes: list[tuple[str, Route]] = []
        if settings.config_file:
            path = settings.config_file
            try:
                with open(path, "rb") as fh:
                    doc = tomllib.load(fh)
            except OSError as exc:
                raise SettingsError(f"TALLYGATE_CONFIG: cannot read {path}: {exc.strerror}") from None
            except tomllib.TOMLDecodeError as exc:
                raise SettingsError(f"TALLYGATE_CONFIG: {path} is not valid TOML: {exc}") from None
            for i, entry in enumerate(doc.get("routes", [])):
                if not isinstance(entry, dict):
                    raise SettingsError(f"{path}: routes[{i}] must be a table")
                model, route = _route_from_table(entry, path)
                if model.endswith("*"):
                    prefixes.append((model[:-1], route))
                else:
                    exact[model] = route
        router = cls(default, exact, prefixes)
        router.anthropic = cls(
            anthropic,
            {m: r for m, r in exact.items() if r.provider == PROVIDER_ANTHROPIC},
            [(p, r) for p, r in prefixes if r.provider == PROVIDER_ANTHROPIC],
        )
        return router

    def for_wire(self, wire: str) -> Router:
        """The routes that speak a wire format: "openai" (this router) or "anthropic"."""
        if wire == PROVIDER_ANTHROPIC:
            assert self.anthropic is not None  # made by from_settings
            return self.anthropic
        return self

    def resolve(self, model: str) -> Route:
        route = self.exact.get(model)
        if route is not None:
            return route
        for prefix, route in self.prefixes:
            if model.startswith(prefix):
                return route
        return self.default

    def models(self) -> list[str]:
        return sorted(self.exact)

    def chain(self, model: str) -> list[tuple[str, Route]]:
        """The model's route, then its fallbacks in order: [(model name, route), ...].
        Fallbacks are not followed transitively, and a name is tried once."""
        route = self.resolve(model)
        if not route.fallbacks:
            return [(model, route)]
        out = [(model, route)]
        seen = {model}
        for name in route.fallbacks:
            if name not in seen:
                seen.add(name)
                out.append((name, self.resolve(name)))
        return out


# statuses worth another attempt: rate limited, or the upstream failed
def retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


def retry_after(headers) -> float | None:
    """Seconds the upstream asked us to wait (`retry-after-ms` or `retry-after` in
    seconds); None when absent or not a number (HTTP dates are ignored)."""
    raw = headers.get("retry-after-ms")
    if raw:
        try:
            return max(0.0, float(raw) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            return None
    return None


def backoff_delay(
    attempt: int, base: float, cap: float, asked: float | None = None, rng: random.Random | None = None
) -> float | None:
    """Delay before retry number `attempt + 1`: exponential (base * 2**attempt, at most
    `cap`) with jitter (between half and all of it). An upstream's Retry-After is
    honoured when it is within `cap`; a longer one returns None: do not retry this
    route (a fallback, or the upstream's own answer, is better than a long wait)."""
    if asked is not None and asked > cap:
        return None
    ceiling = min(cap, base * (2**attempt))
    delay = ceiling * (0.5 + (rng or random).random() / 2)
    return max(delay, asked or 0.0)


def client_session(settings: Settings) -> aiohttp.ClientSession:
    """One pooled keep-alive client for every upstream."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300)
    # sock_connect bounds new connections; a pool-wide `connect` timeout would add a timer
    # to every request, and with no pool limit there is no queue to wait in
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout, sock_read=settings.read_timeout)
    # no cookie jar: one client serves every tenant, and an upstream's cookies (OpenAI sets
    # Cloudflare ones) must not travel from one tenant's request to another's
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
        raise_for_status=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


_SECRET_HEADER_RE = re.compile(r"key|token|auth|secret|password", re.I)
REDACTED = b"[redacted]"


def route_secrets(router: Router) -> tuple[str, ...]:
    """The routes' upstream keys and secret-looking extra header values."""
    routes = [router.default, *router.exact.values(), *(r for _, r in router.prefixes)]
    if router.anthropic is not None:
        routes.append(router.anthropic.default)
    found = [r.api_key for r in routes]
    found.extend(str(v) for r in routes for k, v in r.extra_headers.items() if _SECRET_HEADER_RE.search(str(k)))
    return tuple(dict.fromkeys(s for s in found if s))


def scrub(data: bytes, secrets: tuple[bytes, ...]) -> bytes:
    """An upstream error body without the upstream's keys in it (some quote the key they got)."""
    for secret in secrets:
        if secret in data:
            data = data.replace(secret, REDACTED)
    return data
