"""Soak: a steady load for minutes, sampling the gateway's memory, to show it stays flat.

    .venv/bin/python bench/soak.py --minutes 10            # 50 req/s, SQLite ledger
    .venv/bin/python bench/soak.py --minutes 3 --rate 100

Mixes non-streamed requests, full streams and streams the client abandons, against the
built-in fake upstream on loopback. Prints RSS every --sample seconds, and at the end the
RSS at the start (after a warm-up minute's first sample) and at the end, and the ledger
row count against the requests sent. Bounded by --minutes x --rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faults import Load, free_port, rss_mb, wait_http  # noqa: E402

TOKEN = "bench-faults-token-7f3a"  # faults.Load sends this one


async def soak(args, port: int, proc: subprocess.Popen) -> tuple[Load, list]:
    import aiohttp

    load = Load(f"http://127.0.0.1:{port}/v1", args.disconnect_rate, args.stream_rate, 7)
    samples = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=500),
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        started = time.monotonic()
        interval = 1.0 / args.rate
        next_sample = 0.0
        n = 0
        end = args.minutes * 60
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= next_sample:
                if proc.poll() is not None:
                    raise SystemExit(f"the gateway exited (code {proc.returncode}) during the soak")
                samples.append((round(elapsed), load.sent, round(rss_mb(proc.pid), 1)))
                print(f"  t={samples[-1][0]:>5} s  sent={samples[-1][1]:>7}  rss={samples[-1][2]:>6} MB", flush=True)
                next_sample += args.sample
            if elapsed >= end:
                break
            load.launch(session)
            n += 1
            await asyncio.sleep(max(0.0, started + n * interval - time.monotonic()))
        await asyncio.gather(*list(load.tasks), return_exceptions=True)
        samples.append((round(time.monotonic() - started), load.sent, round(rss_mb(proc.pid), 1)))
    return load, samples


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--sample", type=float, default=30.0, help="seconds between RSS samples")
    p.add_argument("--stream-rate", type=float, default=0.3)
    p.add_argument("--disconnect-rate", type=float, default=0.05)
    args = p.parse_args(argv)
    if args.minutes * 60 * args.rate > 200_000:
        p.error("bounded run: minutes x 60 x rate must stay under 200000 requests")
    work = Path(tempfile.mkdtemp(prefix="tallygate-soak-"))
    fport, gport = free_port(), free_port()
    fake = subprocess.Popen([sys.executable, "-m", "tallygate", "fake-upstream", "--port", str(fport)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PG", "PROXY_", "TALLYGATE_", "OPENAI_", "DATABASE_URL", "REDIS_URL"))}
    env.update(OPENAI_BASE_URL=f"http://127.0.0.1:{fport}/v1", OPENAI_API_KEY="sk-bench",
               PROXY_GATEWAY_TOKEN=TOKEN, TALLYGATE_SQLITE_PATH=str(work / "ledger.db"))
    gw = None
    try:
        wait_http(f"http://127.0.0.1:{fport}/v1/models")
        with open(work / "gateway.log", "wb") as log:
            gw = subprocess.Popen([sys.executable, "-m", "tallygate", "serve", "--host", "127.0.0.1",
                                   "--port", str(gport)], env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{gport}/ready")
        print(f"soak: {args.rate:g} req/s for {args.minutes:g} min, gateway pid {gw.pid}")
        load, samples = asyncio.run(soak(args, gport, gw))
        gw.send_signal(signal.SIGTERM)
        code = gw.wait(20)
        with sqlite3.connect(work / "ledger.db") as conn:
            rows = conn.execute("SELECT count(*) FROM litellm_usage").fetchone()[0]
    finally:
        for proc in (gw, fake):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    start = samples[1][2] if len(samples) > 2 else samples[0][2]  # after the first interval (warm)
    end = samples[-1][2]
    print("\n| figure | value |\n|---|---|")
    print(f"| requests sent | {load.sent} |")
    for k, v in sorted(load.outcomes.items()):
        print(f"| answered {k} | {v} |")
    print(f"| ledger rows | {rows} |")
    print(f"| RSS at start (t={samples[0][0]} s) / after warm-up (t={samples[1][0] if len(samples) > 2 else 0} s)"
          f" / end (t={samples[-1][0]} s) | {samples[0][2]} / {start} / {end} MB |")
    print(f"| RSS change, warm-up to end | {end - start:+.1f} MB ({(end - start) / start:+.1%}) |")
    print(f"| gateway exit code | {code} |")
    return 0 if rows == load.sent and code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
