"""OpenAI-shaped error bodies: {"error": {"message", "type", "code"}}."""

from __future__ import annotations

import orjson


class GatewayError(Exception):
    """An error answered to the client as OpenAI-style JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        code: str | None,
        headers: list[tuple[bytes, bytes]] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.headers = headers or []
        self.param = param  # the request field at fault, when one is

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def unauthorized(message: str) -> GatewayError:
    return GatewayError(
        401, message, "invalid_request_error", "invalid_api_key", [(b"www-authenticate", b'Bearer realm="tallygate"')]
    )


def forbidden(message: str, code: str = "forbidden") -> GatewayError:
    return GatewayError(403, message, "permission_error", code)


def bad_request(message: str, code: str = "invalid_request", param: str | None = None) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", code, param=param)


def not_found(message: str) -> GatewayError:
    return GatewayError(404, message, "invalid_request_error", "not_found")


def unavailable(message: str, code: str, retry_after: int = 2) -> GatewayError:
    """A dependency (the database, Redis) is down: a 503 the client may retry."""
    return GatewayError(503, message, "service_unavailable", code, [(b"retry-after", str(retry_after).encode())])
