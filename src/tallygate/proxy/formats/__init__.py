"""Wire formats: what the proxy must know about a provider API's request and response bodies.

The handler, the retry loop and the relay see a format only through `WireFormat`; a second
API (Anthropic Messages, anthropic.py) is a second implementation and its entries in `ENDPOINTS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from .anthropic import ANTHROPIC, ANTHROPIC_COUNT_TOKENS
from .openai import OPENAI

if TYPE_CHECKING:
    from ...errors import GatewayError
    from ...metering.anthropic_sse import AnthropicStreamMeter
    from ...metering.sse import SSEMeter
    from ...metering.usage import Usage
    from ...upstream import Route


class WireFormat(Protocol):
    # request path -> the upstream path it is sent to (appended to the route's base_url)
    endpoints: dict[bytes, str]
    # the routes that serve it: "openai" or "anthropic" (upstream.Router.for_wire)
    wire: str
    # a request header read as the bearer token when there is no Authorization (None: none)
    api_key_header: bytes | None

    def parse(self, body: bytes) -> tuple[dict, str, bool]:
        """(document, model, stream) of a request body, or a 400 that says what is wrong."""

    def caps(self, doc: dict) -> tuple[int, int]:
        """(output cap per choice the request names, 0 if none; choices generated)."""

    def prepare(
        self, route: Route, name: str, model: str, endpoint: str, doc: dict, body: bytes, stream: bool
    ) -> tuple[bytes, bool]:
        """(payload for the route, strip_usage): the client's bytes unless something changed."""

    def usage(self, body: bytes) -> tuple[Usage | None, str | None]:
        """(usage, upstream model) of a non-streamed response body."""

    def meter(self, strip_usage: bool, endpoint: str, max_event: int) -> SSEMeter | AnthropicStreamMeter:
        """The meter a stream's response bytes go through (`endpoint` as recorded: /v1/...)."""

    def error_event(self, code: str, message: str) -> bytes:
        """An error as one stream event: SDKs raise it instead of taking a cut stream as complete."""

    def error_body(self, err: GatewayError) -> bytes:
        """The gateway's own error (auth, parse, limits, Relay.fail) as the format's JSON body."""


def _registry(*formats: WireFormat) -> dict[bytes, tuple[str, WireFormat]]:
    return {path: (upstream, fmt) for fmt in formats for path, upstream in fmt.endpoints.items()}


# request path -> (upstream path, format): the proxy's part of the app's dispatch
ENDPOINTS = _registry(OPENAI, ANTHROPIC, ANTHROPIC_COUNT_TOKENS)
