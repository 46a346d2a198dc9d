"""Small helpers for the fault, security and fuzz tests: raw HTTP over sockets, so a
test can send what no client library would, and hang up whenever it likes."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request


def post(url: str, body, headers: dict | None = None, timeout: float = 15.0) -> tuple[int, dict, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


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
            except socket.timeout:
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


def fake_stats(fake) -> dict:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{fake.port}/_fake/stats").read())


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)
