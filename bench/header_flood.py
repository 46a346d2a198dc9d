"""Unauthenticated memory and connection exhaustion, measured from outside.

Starts `tallygate serve` (SQLite ledger, no upstream needed), then opens N connections
that each send a request line and one header value of SIZE bytes that never ends (no
CRLF), as fast as the gateway reads; reports the gateway's RSS before and at its peak,
what each connection got back, and whether a slow (slowloris) header is cut.

    .venv/bin/python bench/header_flood.py                          # 100 x 16 MB
    .venv/bin/python bench/header_flood.py --connections 100 --size 16M --src /tmp/before/src
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def size_arg(text: str) -> int:
    text = text.strip().upper()
    for suffix, mult in (("K", 1024), ("M", 1024 ** 2), ("G", 1024 ** 3)):
        if text.endswith(suffix):
            return int(float(text[:-1]) * mult)
    return int(text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def flood(port: int, size: int) -> tuple[int, bytes]:
    """Send an unfinished head of `size` bytes; (bytes the gateway took, what it answered)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    block = b"a" * 65536
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: ")
        while sent < size:
            writer.write(block)
            sent += len(block)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    try:
        answer = await asyncio.wait_for(reader.read(4096), 5)
    except (asyncio.TimeoutError, ConnectionError, OSError):
        answer = b""
    return sent, answer


async def run(port: int, pid: int, n: int, size: int, hold: float) -> dict:
    peak = [rss_mb(pid)]

    async def sample():
        while True:
            peak.append(rss_mb(pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    results = await asyncio.gather(*(flood(port, size) for _ in range(n)))
    await asyncio.sleep(hold)
    sampler.cancel()
    statuses: dict[str, int] = {}
    for _, answer in results:
        key = answer.split(b"\r\n", 1)[0].decode(errors="replace") if answer else "(no answer)"
        statuses[key] = statuses.get(key, 0) + 1
    return {"peak_rss_mb": max(peak), "after_rss_mb": rss_mb(pid), "statuses": statuses,
            "max_sent_mb": max(s for s, _ in results) / 2 ** 20}


def slowloris(port: int, wait: float) -> str:
    """A head sent one byte at a time, a byte a second; how long the gateway kept it."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(1.0)
    started = time.monotonic()
    data = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
    for byte in data:
        try:
            s.sendall(bytes([byte]))
        except OSError:
            break
        try:
            got = s.recv(4096)
            line = got.split(b"\r\n", 1)[0]
            return f"cut after {time.monotonic() - started:.1f} s: {line!r}"
        except socket.timeout:
            pass
        except OSError:
            return f"reset after {time.monotonic() - started:.1f} s"
        if time.monotonic() - started > wait:
            return f"still open after {wait:.0f} s"
    return "head complete"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--size", type=size_arg, default=size_arg("16M"))
    ap.add_argument("--src", default=str(ROOT / "src"), help="source tree to run (A/B)")
    ap.add_argument("--slowloris", type=float, default=20.0, help="seconds to drip a slow head (0: skip)")
    args = ap.parse_args()
    port = free_port()
    tmp = tempfile.mkdtemp()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABASE_URL", "TALLYGATE_"))}
    env.update({"PYTHONPATH": args.src, "PROXY_GATEWAY_TOKEN": "bench-token", "OPENAI_API_KEY": "sk-x",
                "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "TALLYGATE_SQLITE_PATH": f"{tmp}/l.db"})
    proc = subprocess.Popen([sys.executable, "-m", "tallygate", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.5)
        before = rss_mb(proc.pid)
        out = asyncio.run(run(port, proc.pid, args.connections, args.size, hold=1.0))
        print(f"source: {args.src}")
        print(f"{args.connections} connections x {args.size / 2 ** 20:.1f} MB unfinished header")
        print(f"RSS before {before:.0f} MB, peak {out['peak_rss_mb']:.0f} MB, "
              f"after {out['after_rss_mb']:.0f} MB; most one connection could write before it was "
              f"closed {out['max_sent_mb']:.2f} MB (socket buffers included)")
        print(f"answers: {out['statuses']}")
        if args.slowloris:
            print(f"slowloris (1 byte/s): {slowloris(port, args.slowloris)}")
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
