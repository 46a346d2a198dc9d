"""Load and faults together, then count every request in the ledger.

Drives a gateway (Postgres ledger on a private cluster) at a steady rate on loopback while
the upstream answers 5xx on a share of calls, Postgres is stopped for a while, some
clients hang up mid-stream, and at the end the gateway gets SIGTERM with streams in
flight. Then it reports: requests sent, answered by status, ledger rows, rows missing
(must be 0), duplicates (must be 0), and the gateway's RSS before and after.

    .venv/bin/python bench/faults.py                 # 60 s at 40 req/s (the documented run)
    .venv/bin/python bench/faults.py --seconds 20 --rate 20 --json

Bounded: at most --rate x --seconds requests, loopback only; everything it starts
(fake upstream, gateway, Postgres cluster in a temporary folder) is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository root: the devtools package

from devtools.pgcluster import PrivatePostgres  # noqa: E402

TOKEN = "bench-faults-token-7f3a"
MESSAGES = [{"role": "user", "content": "Count to five, slowly."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(url)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Load:
    def __init__(self, base: str, disconnect_rate: float, stream_rate: float, seed: int) -> None:
        self.base = base
        self.disconnect_rate = disconnect_rate
        self.stream_rate = stream_rate
        self.rng = random.Random(seed)
        self.outcomes: collections.Counter = collections.Counter()
        self.ids: set[str] = set()  # request ids the clients saw (x-tallygate-request-id)
        self.sent = 0
        self.tasks: set[asyncio.Task] = set()

    def launch(self, session, kind: str | None = None) -> None:
        r = self.rng.random()
        if kind is None:
            kind = ("disconnect" if r < self.disconnect_rate else
                    "stream" if r < self.disconnect_rate + self.stream_rate else "json")
        self.sent += 1
        task = asyncio.ensure_future(self.one(session, kind))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def one(self, session, kind: str) -> None:
        import aiohttp

        body = {"model": "gpt-4o-mini", "messages": MESSAGES,
                "fake": {"prompt_tokens": 50, "completion_tokens": 5}}
        if kind == "disconnect":
            body.update(stream=True, fake={"chunks": 40, "chunk_delay": 0.05})
        elif kind == "slow":
            body.update(stream=True, fake={"chunks": 10, "chunk_delay": 0.2})
        elif kind == "stream":
            body.update(stream=True, fake={"chunks": 5, "chunk_delay": 0.01})
        try:
            async with session.post(self.base + "/chat/completions", json=body, headers={
                    "Authorization": f"Bearer {TOKEN}", "X-Tenant-ID": f"t{self.rng.randint(1, 20)}"}) as resp:
                rid = resp.headers.get("x-tallygate-request-id")
                if rid:
                    self.ids.add(rid)
                if kind == "disconnect" and resp.status == 200:
                    await resp.content.readany()  # the first event, then hang up
                    resp.close()
                    self.outcomes["client hung up mid-stream"] += 1
                    return
                data = await resp.read()
                if resp.status == 200 and body.get("stream") and b"[DONE]" not in data:
                    self.outcomes["200 (stream cut)"] += 1
                else:
                    self.outcomes[str(resp.status)] += 1
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            self.outcomes[f"no answer ({type(exc).__name__})"] += 1


async def drive(args, gw_port: int, gw_proc: subprocess.Popen, pg: PrivatePostgres, report: dict) -> Load:
    import aiohttp

    base = f"http://127.0.0.1:{gw_port}/v1"
    load = Load(base, args.disconnect_rate, args.stream_rate, args.seed)
    connector = aiohttp.TCPConnector(limit=500)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # warm-up (counted): the RSS "before" is taken after it
        for _ in range(20):
            load.launch(session, "json")
        await asyncio.gather(*list(load.tasks))
        report["rss_before_mb"] = round(rss_mb(gw_proc.pid), 1)
        started = time.monotonic()
        interval = 1.0 / args.rate
        pg_task = None
        n = 0
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= args.seconds:
                break
            if pg_task is None and elapsed >= args.pg_stop_at:
                pg_task = asyncio.ensure_future(pg_outage(pg, args.pg_stop_for, report, started))
            load.launch(session)
            n += 1
            await asyncio.sleep(max(0.0, started + n * interval - time.monotonic()))
        # the end: slow streams in flight, then SIGTERM
        for _ in range(args.final_streams):
            load.launch(session, "slow")
        await asyncio.sleep(0.5)
        report["rss_after_mb"] = round(rss_mb(gw_proc.pid), 1)
        report["sigterm_in_flight"] = len(load.tasks)
        gw_proc.send_signal(signal.SIGTERM)
        t = time.monotonic()
        await asyncio.gather(*list(load.tasks), return_exceptions=True)
        report["in_flight_finished_s"] = round(time.monotonic() - t, 2)
        if pg_task is not None:
            await pg_task
    return load


async def pg_outage(pg: PrivatePostgres, seconds: float, report: dict, started: float) -> None:
    report["postgres_stopped_at_s"] = round(time.monotonic() - started, 1)
    await asyncio.to_thread(pg.stop)
    await asyncio.sleep(seconds)
    await asyncio.to_thread(pg.start)
    report["postgres_restarted_at_s"] = round(time.monotonic() - started, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=40.0, help="requests per second")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the steady phase")
    p.add_argument("--fail-rate", type=float, default=0.1, help="share of upstream calls answered 500")
    p.add_argument("--disconnect-rate", type=float, default=0.05, help="share of clients that hang up mid-stream")
    p.add_argument("--stream-rate", type=float, default=0.3, help="share of (complete) streamed requests")
    p.add_argument("--pg-stop-at", type=float, default=15.0, help="seconds into the run")
    p.add_argument("--pg-stop-for", type=float, default=10.0)
    p.add_argument("--final-streams", type=int, default=10, help="slow streams in flight at SIGTERM")
    p.add_argument("--retries", type=int, default=2, help="TALLYGATE_RETRIES for the gateway")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    if args.rate * args.seconds > 20_000:
        p.error("bounded run: rate x seconds must stay under 20000 requests")

    work = Path(tempfile.mkdtemp(prefix="tallygate-faults-"))
    pg = PrivatePostgres(free_port())
    fake = gw = None
    report: dict = {"rate": args.rate, "seconds": args.seconds, "upstream_fail_rate": args.fail_rate,
                    "retries": args.retries}
    try:
        pg.start()
        fport = free_port()
        fake = subprocess.Popen([sys.executable, "-m", "tallygate", "fake-upstream", "--port", str(fport),
                                 "--fail-rate", str(args.fail_rate)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{fport}/v1/models")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PG", "PROXY_", "TALLYGATE_", "OPENAI_", "DATABASE_URL", "REDIS_URL"))}
        env.update(pg.env(), OPENAI_BASE_URL=f"http://127.0.0.1:{fport}/v1", OPENAI_API_KEY="sk-bench",
                   PROXY_GATEWAY_TOKEN=TOKEN, TALLYGATE_RETRIES=str(args.retries), PYTHONUNBUFFERED="1")
        gport = free_port()
        log_path = work / "gateway.log"
        with open(log_path, "wb") as log:
            gw = subprocess.Popen([sys.executable, "-m", "tallygate", "serve", "--host", "127.0.0.1",
                                   "--port", str(gport)], env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{gport}/ready")
        load = asyncio.run(drive(args, gport, gw, pg, report))
        try:
            report["gateway_exit_code"] = gw.wait(20)
        except subprocess.TimeoutExpired:
            gw.kill()
            report["gateway_exit_code"] = "killed after 20 s"
        stats = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{fport}/_fake/stats").read())

        import psycopg

        with psycopg.connect(" ".join(f"{k}={v}" for k, v in {
                "host": "127.0.0.1", "port": pg.port, "user": "postgres", "dbname": "postgres"}.items())) as conn:
            rows = conn.execute("SELECT request_id, status FROM litellm_usage").fetchall()
            dup_rows = conn.execute("SELECT count(*) FROM (SELECT request_id FROM litellm_usage "
                                    "GROUP BY request_id HAVING count(*) > 1) d").fetchone()[0]
        ledger_ids = collections.Counter(r[0] for r in rows)
        lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
        logged = collections.Counter(l["request_id"] for l in lines if l.get("message") == "litellm_request")
        report.update({
            "requests_sent": load.sent,
            "answered_by_status": dict(sorted(load.outcomes.items())),
            "ledger_rows": len(rows),
            "ledger_rows_by_status": dict(collections.Counter(r[1] for r in rows)),
            "log_records": sum(logged.values()),
            "rows_missing": len(load.ids - set(ledger_ids)),
            "log_records_missing_from_ledger": len(set(logged) - set(ledger_ids)),
            "duplicates": dup_rows + sum(1 for c in logged.values() if c > 1),
            "metered_without_client_visible_id": len(set(ledger_ids) - load.ids),
            "upstream_calls": stats["calls"], "upstream_500s": stats["failed"],
            "retries_logged": sum(1 for l in lines if l.get("message") == "upstream attempt failed, retrying"),
            "ledger_write_failures_logged": sum(1 for l in lines if l.get("message", "").startswith("ledger write failed")),
            "upstream_saw_disconnects": len(stats["disconnects"]),
        })
    finally:
        for proc in (gw, fake):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        pg.destroy()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    ok = report["rows_missing"] == 0 and report["duplicates"] == 0 and report["gateway_exit_code"] == 0
    return 0 if ok else 1


def print_report(r: dict) -> None:
    print(f"\ntallygate load-and-fault run: {r['rate']:g} req/s for {r['seconds']:g} s, upstream 500 on "
          f"{r['upstream_fail_rate']:.0%} of calls, retries {r['retries']}")
    print(f"Postgres stopped at {r.get('postgres_stopped_at_s')} s, back at {r.get('postgres_restarted_at_s')} s; "
          f"SIGTERM with {r['sigterm_in_flight']} requests in flight (finished in {r['in_flight_finished_s']} s), "
          f"gateway exit code {r['gateway_exit_code']}\n")
    print("| figure | value |\n|---|---|")
    rows = [("requests sent", r["requests_sent"])]
    rows += [(f"answered {k}", v) for k, v in r["answered_by_status"].items()]
    rows += [("ledger rows", r["ledger_rows"]), ("ledger rows by status", r["ledger_rows_by_status"]),
             ("log records (litellm_request)", r["log_records"]),
             ("rows missing (client saw an id, no row)", r["rows_missing"]),
             ("log records missing from the ledger", r["log_records_missing_from_ledger"]),
             ("duplicates (ledger or log)", r["duplicates"]),
             ("upstream calls / of which 500", f"{r['upstream_calls']} / {r['upstream_500s']}"),
             ("retries logged", r["retries_logged"]),
             ("ledger write failures logged (while Postgres was down)", r["ledger_write_failures_logged"]),
             ("streams the upstream saw closed early", r["upstream_saw_disconnects"]),
             ("gateway RSS before / after (MB)", f"{r['rss_before_mb']} / {r['rss_after_mb']}")]
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    raise SystemExit(main())
