"""Time to first token added by each gateway on a stream whose upstream waits before its
first chunk (what a user of a chat UI feels).

    .venv/bin/python bench/ttft.py [--delay 0.2] [--requests 40] [--systems direct,floor,tallygate-pg,litellm,portkey]

The upstream here is a small asyncio server on the benchmark's SSE port: it answers at once
with the headers, waits `--delay` seconds, then sends the same eight chunks, usage and
`[DONE]` the nginx upstream serves (chunked, keep-alive). Each system is started as in
`run.py` (pinned to core 0); this script and the upstream run on core 1. Requests are
sequential (c=1): the time from sending a request to the first content event is measured,
and the direct row (the upstream alone) is subtracted. A system whose smoke request fails
(Portkey's streams on Node 20) is reported with its error.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: the benchlib package

from benchlib.config import HOST, LITELLM_VENV, MODEL, NGINX_SSE, WORK  # noqa: E402
from benchlib.host import log  # noqa: E402
from benchlib.install import ensure_portkey  # noqa: E402
from benchlib.ledger import fresh_ledgers  # noqa: E402
from benchlib.processes import RUNNING  # noqa: E402
from benchlib.systems import make_system, smoke  # noqa: E402
from benchlib.upstream import SSE_BODY  # noqa: E402

EVENTS = [e + "\n\n" for e in SSE_BODY.split("\n\n") if e.strip()]
FIRST_CONTENT = b'"content":"Hello"'


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(delay)
            for event in EVENTS:
                data = event.encode()
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def start_upstream(delay: float) -> None:
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def main() -> None:
        await asyncio.start_server(lambda r, w: _serve(r, w, delay), HOST, NGINX_SSE)
        ready.set()
        await asyncio.Event().wait()

    threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True).start()
    if not ready.wait(5):
        sys.exit(f"the delayed upstream could not listen on {HOST}:{NGINX_SSE}")


def ttft_once(port: int, token: str, headers: dict | None) -> float:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True,
                       "stream_options": {"include_usage": True}})
    c = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        t0 = time.perf_counter()
        c.request("POST", "/v1/chat/completions", body=body, headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {token}", "X-Tenant-ID": "bench-ttft",
            **(headers or {})})
        r = c.getresponse()
        if r.status != 200:
            raise RuntimeError(f"status {r.status}: {r.read()[:200]!r}")
        first = None
        while True:
            line = r.fp.readline()
            if not line:
                break
            if first is None and FIRST_CONTENT in line:
                first = time.perf_counter() - t0
            if b"[DONE]" in line:  # the raw (chunked) body: the connection stays open
                break
        if first is None:
            raise RuntimeError("no content event")
        return first
    finally:
        c.close()


def measure(name: str, requests: int, run_id: str) -> dict:
    if name == "direct":
        port, token, headers, proc = NGINX_SSE, "x", None, None
    else:
        sysd = make_system(name, True, 1, run_id)
        proc = sysd["proc"]
        RUNNING.append(proc)
        proc.start()
        if proc.wait_healthy(sysd["port"], sysd["health"], timeout=120) is None:
            return {"system": name, "error": "never became healthy: " + proc.log_tail(500)}
        port, token, headers = sysd["port"], sysd["token"], sysd.get("headers")
        err = smoke(port, token, True, headers)
        if err:
            proc.stop(10)
            return {"system": name, "error": err}
    try:
        for _ in range(3):  # warm-up: connections, first-request imports
            ttft_once(port, token, headers)
        times = sorted(ttft_once(port, token, headers) for _ in range(requests))
    finally:
        if proc is not None:
            proc.stop(10)
    return {"system": name, "p50_ms": statistics.median(times) * 1000,
            "p90_ms": times[int(0.9 * (len(times) - 1))] * 1000, "max_ms": times[-1] * 1000}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delay", type=float, default=0.2, help="seconds the upstream waits before its first chunk")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--systems", default="direct,floor,tallygate-pg,litellm,portkey")
    a = ap.parse_args()
    os.sched_setaffinity(0, {1})  # the systems run on core 0
    WORK.mkdir(parents=True, exist_ok=True)
    systems = [s for s in a.systems.split(",") if s]
    if "portkey" in systems and ensure_portkey() is None:
        systems.remove("portkey")
    if "litellm" in systems and not (LITELLM_VENV / "bin" / "litellm").exists():
        log("LiteLLM row skipped: run bench/run.py once to install its venv")
        systems.remove("litellm")
    fresh_ledgers(systems)
    start_upstream(a.delay)
    run_id = "ttft-" + time.strftime("%m%d%H%M%S")
    rows = []
    try:
        for name in systems:
            rows.append(measure(name, a.requests, run_id))
            log(f"{name}: {rows[-1]}")
    finally:
        for p in RUNNING:
            p.stop(5)
    direct = next((r for r in rows if r["system"] == "direct" and "p50_ms" in r), None)
    print(f"\nTime to first token, upstream first chunk after {a.delay * 1000:.0f} ms, c=1, {a.requests} requests:\n")
    print("| system | TTFT p50 ms | p90 ms | added p50 ms | added p90 ms |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['system']} | error: {r['error'].splitlines()[0][:100]} | | | |")
            continue
        added = (f"{r['p50_ms'] - direct['p50_ms']:+.2f} | {r['p90_ms'] - direct['p90_ms']:+.2f}"
                 if direct and r is not direct else "- | -")
        print(f"| {r['system']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {added} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
