"""tallygate's own request path, in one process, with a canned upstream answer: what the
gateway's code costs per request without the HTTP server and client around it.

The ASGI app handles requests whose upstream call returns the benchmark's fixed JSON or
SSE body at once (no sockets); then the pipeline prices, logs (to /dev/null) and counts
the records. `--instructions` runs it twice under callgrind (valgrind) and prints the
difference per request: deterministic, for an A/B of two source trees where timings
move by +-5% between runs.

    .venv/bin/python bench/handler.py --mode stream [--src /path/to/checkout]
    .venv/bin/python bench/handler.py --mode json --instructions [--src ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


class _Content:
    """The relay's view of a response body that arrived in one read."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.eof = False

    def iter_any(self):
        return self

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        if self.eof:
            raise StopAsyncIteration
        self.eof = True
        return self.data

    def at_eof(self) -> bool:
        return self.eof


class _Response:
    def __init__(self, body: bytes, stream: bool) -> None:
        ctype = b"text/event-stream" if stream else b"application/json"
        self.status = 200
        self.raw_headers = ((b"Server", b"nginx"), (b"Date", b"Fri, 27 Nov 2026 17:00:00 GMT"),
                            (b"Content-Type", ctype), (b"Connection", b"keep-alive"))
        self.headers = {"Content-Type": ctype.decode()}
        self.body = body
        self.content = _Content(body)

    async def read(self) -> bytes:
        return self.body

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Session:
    def __init__(self, body: bytes, stream: bool) -> None:
        self.body, self.stream = body, stream

    async def post(self, url, data, headers, **options):  # allow_redirects=False etc.
        return _Response(self.body, self.stream)


async def measure(stream: bool, n: int, warm: int, pipeline: bool) -> tuple[float, float]:
    from benchlib.config import MODEL  # the benchmark's request and upstream bodies
    from benchlib.upstream import CHAT_JSON, SSE_BODY

    from tallygate.app import App
    from tallygate.settings import load

    app = App(load())
    g = app.g
    await g.startup()
    await g.client_ready.wait()  # the HTTP client library loads in the background first
    await g.session.close()  # the canned session below replaces the real one
    g.session = _Session((SSE_BODY if stream else CHAT_JSON).encode(), stream)
    doc = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello from the benchmark."}]}
    if stream:
        doc.update(stream=True, stream_options={"include_usage": True})
    body = json.dumps(doc).encode()
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "raw_path": b"/v1/chat/completions",
             "headers": [(b"host", b"127.0.0.1"), (b"authorization", b"Bearer bench"),
                         (b"x-tenant-id", b"bench-handler"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        pass

    records: list = []
    # the pipeline is timed on its own below; submit(record, wait=...) returns None (async mode)
    g.pipeline.submit = lambda record, wait=False: records.append(record)
    for _ in range(warm):
        await app(scope, receive, send)
    records.clear()
    started = time.process_time()
    for _ in range(n):
        await app(scope, receive, send)
    handler_us = (time.process_time() - started) / n * 1e6
    pipeline_us = 0.0
    if pipeline:
        from tallygate.sinks.jsonlog import JsonLogSink

        sinks = getattr(g.pipeline, "sinks", None) or [g.pipeline.jsonlog]  # older trees: .jsonlog
        for sink in sinks:
            if isinstance(sink, JsonLogSink):
                sink.stream = open(os.devnull, "w")
        g.pipeline.ledger = None  # the ledger's cost is bench/ledger_throughput.py's
        await g.prices.ensure_warm()
        batches = [[(r, None) for r in records[i:i + 35]] for i in range(0, len(records), 35)]
        for batch in batches[:20]:
            g.pipeline._process(batch)
        started = time.process_time()
        for batch in batches:
            g.pipeline._process(batch)
        pipeline_us = (time.process_time() - started) / n * 1e6
    return handler_us, pipeline_us


def instructions(a) -> int:
    """Instructions per request of the handler: two runs under callgrind, differenced."""
    totals = []
    for n in (1000, 6000):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "callgrind.out"
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                   __file__, "--mode", a.mode, "--n", str(n), "--warm", "500", "--no-pipeline"]
            if a.src:
                cmd += ["--src", a.src]
            subprocess.run(cmd, check=True, capture_output=True)
            for line in out.read_text().splitlines():
                if line.startswith(("summary:", "totals:")):
                    totals.append(int(line.split()[1]))
                    break
    return (totals[1] - totals[0]) // 5000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("json", "stream"), default="stream")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--warm", type=int, default=2000)
    ap.add_argument("--src", default=None, help="a checkout whose src/ is measured instead of this one")
    ap.add_argument("--no-pipeline", action="store_true")
    ap.add_argument("--instructions", action="store_true", help="instructions per request under callgrind")
    a = ap.parse_args()
    if a.instructions:
        print(f"{a.mode}: {instructions(a) / 1000:.1f}k instructions/request (handler, {a.src or 'this checkout'})")
        return 0
    sys.path.insert(0, str(BENCH))
    if a.src:
        sys.path.insert(0, str(Path(a.src).resolve() / "src"))
    os.environ.update(OPENAI_BASE_URL="http://127.0.0.1:9/v1", OPENAI_API_KEY="bench", PROXY_GATEWAY_TOKEN="bench",
                      TALLYGATE_SQLITE_PATH=str(Path(tempfile.gettempdir()) / "tallygate-handler-bench.db"))
    for k in [k for k in os.environ if k.startswith("PG")]:
        del os.environ[k]  # the SQLite default: the ledger is not part of this measurement
    sys.stdout.flush()
    real_stdout = os.fdopen(os.dup(1), "w")
    sys.stdout = open(os.devnull, "w")  # start-up log lines
    import uvloop

    handler_us, pipeline_us = uvloop.run(measure(a.mode == "stream", a.n, a.warm, not a.no_pipeline))
    print(f"{a.mode}: handler {handler_us:.2f} us/request"
          + ("" if a.no_pipeline else f", pipeline {pipeline_us:.2f} us/record (pricing, log line, metrics)"),
          file=real_stdout, flush=True)
    os._exit(0)  # the app's background tasks and pools end with the process


if __name__ == "__main__":
    sys.exit(main())
