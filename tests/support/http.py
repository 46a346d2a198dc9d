"""HTTP for tests: JSON calls through urllib, and raw bytes over sockets, so a test can
send what no client library would, and hang up whenever it likes."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import openai

from .processes import MASTER


def request(method: str, url: str, body=None, headers: dict | None = None,
            timeout: float = 15.0) -> tuple[int, dict, bytes]:
    """One request; `body` is bytes as they are, None for none, anything else as JSON.
    Returns (status, headers with lower-case names, body bytes); an HTTP error is a status too."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def post(url: str, body, headers: dict | None = None, timeout: float = 15.0) -> tuple[int, dict, bytes]:
    return request("POST", url, body, headers, timeout)


def bearer(token: str | None, headers: dict | None = None) -> dict:
    """`headers` plus an Authorization header for `token` (none when token is None)."""
    return {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}


def call(url: str, method: str = "GET", body=None, token: str | None = None, headers: dict | None = None,
         timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """`request` with a bearer token."""
    return request(method, url, body, bearer(token, headers), timeout)


def call_json(url: str, method: str = "GET", body=None, token: str | None = None, headers: dict | None = None,
              timeout: float = 10.0) -> tuple[int, dict, Any]:
    """`call`, the answer parsed as JSON (None for an empty body)."""
    status, h, data = call(url, method, body, token, headers, timeout)
    return status, h, json.loads(data or b"null")


def admin_call(url: str, method: str = "GET", body=None, token: str | None = MASTER,
               headers: dict | None = None) -> tuple[int, dict, Any]:
    """`call_json` with the master key unless `token` names another credential (None: none)."""
    return call_json(url, method, body, token, headers)


def sdk_client(gw, tenant: str | None = "acme", **kw) -> openai.OpenAI:
    """The official openai client for gateway `gw`: its token, X-Tenant-ID `tenant`, no retries."""
    return openai.OpenAI(base_url=gw.base_url, api_key=gw.token, max_retries=0,
                         default_headers={"X-Tenant-ID": tenant} if tenant else None, **kw)


def metrics_text(url: str, token: str | None = MASTER) -> str:
    """The Prometheus text of `url` (a gateway's /metrics or a private metrics port)."""
    status, _, data = call(url, token=token)
    assert status == 200, (status, data[:300])
    return data.decode()


def metric(text: str, name: str, **labels) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- raw bytes over a socket ----------------------------------------------------

def request_bytes(method: str, path: str, body: bytes = b"", headers: dict | None = None,
                  host: str = "127.0.0.1") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def raw_exchange(port: int, data: bytes, timeout: float = 3.0, read_until_close: bool = True) -> bytes:
    """Send bytes as they are; return whatever comes back before the server closes or
    `timeout` passes (b"" when it only closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            except OSError:
                break
            if not chunk:
                break
            out += chunk
            if not read_until_close and b"\r\n\r\n" in out:
                head, _, rest = out.partition(b"\r\n\r\n")
                length = _content_length(head)
                if length is not None and len(rest) >= length:
                    break
        return out


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


def status_of(response: bytes) -> int | None:
    """The status code of a raw HTTP response, None when there was no response."""
    if not response.startswith(b"HTTP/"):
        return None
    try:
        return int(response.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def body_of(response: bytes) -> bytes:
    head, _, rest = response.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        out, data = b"", rest
        while data:
            size_line, _, data = data.partition(b"\r\n")
            try:
                size = int(size_line.split(b";")[0], 16)
            except ValueError:
                break
            if size == 0:
                break
            out += data[:size]
            data = data[size + 2:]
        return out
    return rest


class StreamReader:
    """A streaming POST over a raw socket that the test can abandon at any point."""

    def __init__(self, port: int, path: str, body: dict, headers: dict) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        raw = json.dumps(body).encode()
        self.sock.sendall(request_bytes("POST", path, raw, {"Content-Type": "application/json", **headers}))
        self.data = b""

    def read_until(self, marker: bytes, count: int = 1, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while self.data.count(marker) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited for {count} x {marker!r}, got {self.data[-500:]!r}")
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.data += chunk
        return self.data

    def read_all(self, timeout: float = 15.0) -> bytes:
        self.sock.settimeout(timeout)
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return self.data
            self.data += chunk
            if self.data.endswith(b"0\r\n\r\n"):
                return self.data

    def hang_up(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
