"""CPU per request of each system in place: user and system microseconds per request of
the server process, measured at c=15 with the systems taking turns.

Throughput swings with the VM; the CPU a process spends per request swings less, and
measuring the systems alternately over several rounds cancels the slow drift. A system
may be a variant source tree (`tallygate-pg@/path/to/checkout`, whose `src/` goes first
on PYTHONPATH): an ablation (a sink switched off) or a candidate change, measured
beside the current build. This is how the in-place costs in docs/DESIGN.md were found.

    .venv/bin/python bench/cpu.py --mode stream floor tallygate-pg tallygate-pg@/tmp/variant
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib.config import BENCH_DB, HOST, WORK  # noqa: E402  (the benchmark's library)
from benchlib.host import sh  # noqa: E402
from benchlib.ledger import fresh_ledgers  # noqa: E402
from benchlib.load import run_wrk  # noqa: E402
from benchlib.processes import Nginx  # noqa: E402
from benchlib.systems import make_system  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK, int(fields[12]) / CLK


def start(spec: str, index: int, stream: bool) -> dict:
    name, _, src = spec.partition("@")
    label = re.sub(r"[^A-Za-z0-9._-]", "_", spec)
    sysd = make_system(name, stream, 1, "cpu-" + label)
    proc = sysd["proc"]
    if src:
        proc.env["PYTHONPATH"] = str(Path(src).resolve() / "src")
    sysd["port"] += index  # every system runs for the whole measurement: one port each
    proc.cmd[proc.cmd.index("--port") + 1] = str(sysd["port"])
    proc.start()
    if proc.wait_healthy(sysd["port"], sysd["health"], 120) is None:
        raise RuntimeError(f"{spec} did not start: {proc.log_tail()}")
    sysd["label"] = label
    return sysd


def prefill(rows: int) -> None:
    """Synthetic rows in the benchmark's ledger table (created by the gateway at start-up)."""
    sql = ("INSERT INTO litellm_usage (request_id, created_at, tenant_id, model, provider, endpoint, status_code, "
           "status, price_source, usage_source, latency_ms) SELECT 'req_' || left(md5(i::text), 24), "
           "now() - i * interval '1 second', 'bench-prefill-' || (i % 100), 'gpt-4o-mini', 'openai', "
           f"'/v1/chat/completions', 200, 'ok', 'genai-prices', 'provider', 1.5 FROM generate_series(1, {rows}) i")
    r = sh(["psql", "-h", HOST, "-U", "postgres", "-d", BENCH_DB, "-v", "ON_ERROR_STOP=1", "-qc", sql])
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    sh(["psql", "-h", HOST, "-U", "postgres", "-d", BENCH_DB, "-qc", "VACUUM ANALYZE litellm_usage"])
    print(f"ledger table holds {rows:,} rows", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("systems", nargs="+", help="floor, tallygate-pg, tallygate-sqlite, optionally @SRC")
    ap.add_argument("--mode", choices=("json", "stream"), default="stream")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--ledger-rows", type=int, default=0,
                    help="rows put into the Postgres ledger table before measuring (a ledger that has grown)")
    a = ap.parse_args()
    stream = a.mode == "stream"
    WORK.mkdir(parents=True, exist_ok=True)
    fresh_ledgers(a.systems)
    nginx = Nginx()
    nginx.start()
    systems: list[dict] = []
    results: dict[str, list[tuple[float, float, float]]] = {s: [] for s in a.systems}
    try:
        for i, spec in enumerate(a.systems):
            systems.append(start(spec, i, stream))
            run_wrk(systems[-1]["port"], 15, 2, f"cpu-warm-{i}", stream, systems[-1]["token"], "warm")
        if a.ledger_rows:
            prefill(a.ledger_rows)
        for r in range(a.rounds):
            for spec, sysd in zip(a.systems, systems):
                pid = sysd["proc"].p.pid
                u0, s0 = cpu_seconds(pid)
                t0 = time.monotonic()
                res = run_wrk(sysd["port"], 15, a.seconds, f"cpu-{sysd['label']}-{r}", stream,
                                sysd["token"], "cpu")
                u1, s1 = cpu_seconds(pid)
                busy = (u1 - u0 + s1 - s0) / (time.monotonic() - t0)
                n = res["requests"]
                if res.get("errors", {}).get("status"):
                    raise RuntimeError(f"{spec}: {res['errors']['status']} error responses")
                results[spec].append((res["rps"], 1e6 * (u1 - u0) / n, 1e6 * (s1 - s0) / n, busy))
                print(f"round {r + 1} {spec:40s} {res['rps']:8.0f} req/s  user {results[spec][-1][1]:6.1f} "
                      f"sys {results[spec][-1][2]:5.1f} us/request  core busy {busy:4.2f}", flush=True)
    finally:
        for sysd in systems:
            sysd["proc"].stop(30)
        nginx.stop()
    print(f"\nmedians over {a.rounds} rounds ({a.mode}, c=15):")
    for spec, rows in results.items():
        print(f"{spec:40s} {median(x[0] for x in rows):8.0f} req/s  user {median(x[1] for x in rows):6.1f} "
              f"sys {median(x[2] for x in rows):5.1f} us/request  core busy {median(x[3] for x in rows):4.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
