"""An optional second listener that serves only /metrics, without authentication.

Cloud Run routes outside traffic to one port only, so a Prometheus sidecar in the
same instance can scrape this port while the public port keeps /metrics behind
the master key (`TALLYGATE_METRICS_PORT`, bound to 127.0.0.1 by default).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class MetricsServer:
    def __init__(self, render: Callable[[], bytes], host: str, port: int) -> None:
        self.render = render
        self.host = host
        self.port = port
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            request_line = head.split(b"\r\n", 1)[0].split(b" ")
            path = request_line[1].split(b"?", 1)[0] if len(request_line) >= 2 else b""
            if request_line[0] == b"GET" and path == b"/metrics":
                body = self.render()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
                )
            else:
                writer.write(_NOT_FOUND)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
