"""CPU per request of each system in place: user and system microseconds per request of
the server process, measured at c=15 with the systems taking turns.

Throughput swings with the VM; the CPU a process spends per request swings less, and
measuring the systems alternately over several rounds cancels the slow drift. A system
may be a variant source tree (`tallygate-pg@/path/to/checkout`, whose `src/` goes first
on PYTHONPATH): an ablation (a sink switched off) or a candidate change, measured
beside the current build. This is how the in-place costs in docs/DESIGN.md were found.

    .venv/bin/python bench/cpu.py --mode stream floor tallygate-pg tallygate-pg@/tmp/variant
    .venv/bin/python bench/cpu.py --mode json --workers 1,2 floor tallygate-pg   # scaling

With `--workers 1,2` every system runs once per worker count (2 workers on both cores,
wrk and nginx still on core 1) and the CPU is that of its whole process tree (the
supervisor and each worker); each worker's share of it shows how evenly the kernel spread
the connections.
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
from benchlib.host import proc_tree, sh  # noqa: E402
from benchlib.ledger import fresh_ledgers  # noqa: E402
from benchlib.load import run_wrk  # noqa: E402
from benchlib.processes import Nginx  # noqa: E402
from benchlib.systems import make_system  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK, int(fields[12]) / CLK


def tree_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """(user, system) CPU seconds of each process of pid's tree (a process gone: left out)."""
    out = {}
    for q in proc_tree(pid):
        try:
            out[q] = cpu_seconds(q)
        except OSError:
            pass
    return out


def start(spec: str, index: int, stream: bool, workers: int) -> dict:
    name, _, src = spec.partition("@")
    label = re.sub(r"[^A-Za-z0-9._-]", "_", spec) + (f"-w{workers}" if workers > 1 else "")
    sysd = make_system(name, stream, workers, "cpu-" + label)
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
    ap.add_argument("--workers", default="1",
                    help="worker counts, comma-separated: each system runs at each (e.g. 1,2)")
    ap.add_argument("--c", type=int, default=15, help="wrk connections")
    a = ap.parse_args()
    stream = a.mode == "stream"
    counts = [int(w) for w in a.workers.split(",")]
    runs = [(spec, w) for spec in a.systems for w in counts]
    names = [spec if w == 1 else f"{spec} x{w}" for spec, w in runs]
    WORK.mkdir(parents=True, exist_ok=True)
    fresh_ledgers(a.systems)
    nginx = Nginx()
    nginx.start()
    systems: list[dict] = []
    results: dict[str, list[tuple]] = {n: [] for n in names}
    try:
        for i, (spec, w) in enumerate(runs):
            systems.append(start(spec, i, stream, w))
            run_wrk(systems[-1]["port"], a.c, 2, f"cpu-warm-{i}", stream, systems[-1]["token"], "warm")
        if a.ledger_rows:
            prefill(a.ledger_rows)
        for r in range(a.rounds):
            for name, sysd in zip(names, systems, strict=True):
                pid = sysd["proc"].p.pid
                before = tree_cpu(pid)
                t0 = time.monotonic()
                res = run_wrk(sysd["port"], a.c, a.seconds, f"cpu-{sysd['label']}-{r}", stream,
                              sysd["token"], "cpu")
                after = tree_cpu(pid)
                wall = time.monotonic() - t0
                used = {q: (u - before.get(q, (0, 0))[0], st - before.get(q, (0, 0))[1]) for q, (u, st) in after.items()}
                user, system = sum(u for u, _ in used.values()), sum(st for _, st in used.values())
                busy = (user + system) / wall
                n = res["requests"]
                if res.get("errors", {}).get("status"):
                    raise RuntimeError(f"{name}: {res['errors']['status']} error responses")
                # each process's share of the tree's CPU (workers: how evenly connections were spread)
                shares = sorted((u + st) / (user + system) for u, st in used.values() if u + st > 0.01 * (user + system))
                results[name].append((res["rps"], 1e6 * user / n, 1e6 * system / n, busy, res["latency_us"]["p99"] / 1000))
                split = "" if len(shares) < 2 else "  split " + "/".join(f"{x:.0%}" for x in shares)
                print(f"round {r + 1} {name:40s} {res['rps']:8.0f} req/s  user {results[name][-1][1]:6.1f} "
                      f"sys {results[name][-1][2]:5.1f} us/request  cores busy {busy:4.2f}  p99 {results[name][-1][4]:5.2f} ms{split}", flush=True)
    finally:
        for sysd in systems:
            sysd["proc"].stop(30)
        nginx.stop()
    print(f"\nmedians over {a.rounds} rounds ({a.mode}, c={a.c}):")
    for name, rows in results.items():
        total = median(x[1] + x[2] for x in rows)
        print(f"{name:40s} {median(x[0] for x in rows):8.0f} req/s  user {median(x[1] for x in rows):6.1f} "
              f"sys {median(x[2] for x in rows):5.1f} total {total:6.1f} us/request  "
              f"cores busy {median(x[3] for x in rows):4.2f}  p99 {median(x[4] for x in rows):5.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
