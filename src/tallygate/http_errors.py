"""uvicorn's httptools protocol, answering requests it cannot parse with an OpenAI-style
JSON 400 (instead of plain text), so every error the gateway sends has the same shape."""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import STATUS_LINE
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HttpToolsProtocol

from .errors import error_body

_BODY = error_body("Invalid HTTP request: it could not be parsed.", "invalid_request_error", "invalid_http")


class HttpToolsProtocol(_HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        content = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: application/json\r\n",
                        b"content-length: " + str(len(_BODY)).encode("ascii") + b"\r\n",
                        b"connection: close\r\n", b"\r\n", _BODY])
        self.transport.write(b"".join(content))
        self.transport.close()
