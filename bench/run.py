"""Side-by-side benchmark: tallygate vs the LiteLLM proxy vs a bare passthrough floor.

    make bench                      # full run, writes docs/benchmarks.md
    .venv/bin/python bench/run.py --quick [--no-litellm]

Layout (2 cores): the system under test is pinned to core 0 (`taskset -c 0`); the fake
upstream (nginx, one worker) and the load generator (wrk, one thread) share core 1.
Everything it installs or writes lives under bench/.work/ (gitignored); raw results go
to bench/results/ (gitignored). Every loop here is bounded; every socket is loopback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: the benchlib package

from benchlib.config import BENCH, PG_ENV, RESULTS, ROOT, VENV_PY, WORK  # noqa: E402
from benchlib.host import log  # noqa: E402
from benchlib.install import (  # noqa: E402
    ensure_litellm,
    ensure_portkey,
    ensure_tools,
    git_state,
    litellm_info,
    versions,
)
from benchlib.ledger import fresh_ledgers  # noqa: E402
from benchlib.measure import bench_system, paired_pass  # noqa: E402
from benchlib.processes import NICE, RUNNING, Nginx  # noqa: E402
from benchlib.report import evaluate, render, render_doc  # noqa: E402
from benchlib.systems import base_env, tallygate_available, tallygate_supports_workers  # noqa: E402


def render_saved(a) -> int:
    data = json.loads(Path(a.render).read_text())
    meta, results = data["meta"], data["results"]
    saved = meta.get("args") or {}
    quick = saved.get("quick", "-quick" in Path(a.render).name)
    a.quick = quick
    a.duration = saved.get("duration") or (3.0 if quick else 20.0)
    a.warmup = saved.get("warmup") or (1.0 if quick else 5.0)
    a.quiet_wait = saved.get("quiet_wait", a.quiet_wait if a.quiet_wait is not None else 0)
    NICE[0] = saved.get("nice", 0)
    table = render(results, meta, a)
    targets = evaluate(results, quick, meta.get("paired"))
    print(table)
    print()
    for t, v, d in targets:
        print(f"{v:4}  {t}: {d}")
    if a.docs:
        old = Path(a.docs).read_text() if Path(a.docs).exists() else ""
        Path(a.docs).write_text(render_doc(table, targets, meta, a, results, old))
        log(f"wrote {a.docs}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run: 1 s warm-up + 3 s, c=15 only")
    ap.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM rows (and its install)")
    ap.add_argument("--no-tallygate", action="store_true", help="skip the tallygate rows")
    ap.add_argument("--no-workers", action="store_true", help="skip the 2-worker scaling rows")
    ap.add_argument("--systems",
                    default="direct,floor,tallygate-pg,tallygate-sqlite,tallygate-noledger,litellm,litellm-tallygate,portkey",
                    help="comma-separated subset, in order")
    ap.add_argument("--modes", default="json,stream")
    ap.add_argument("--concurrency", default=None, help="comma list (default 1,15,64; quick: 15)")
    ap.add_argument("--duration", type=float, default=None, help="measured seconds per row (default 20; quick 3)")
    ap.add_argument("--warmup", type=float, default=None, help="warm-up seconds per row (default 5; quick 1)")
    ap.add_argument("--start-timeout", type=float, default=120.0)
    ap.add_argument("--stop-timeout", type=float, default=30.0)
    ap.add_argument("--quiet-wait", type=float, default=None,
                    help="before each row, wait up to this many seconds for other processes to go quiet "
                         "(default 120; quick 10; 0 disables)")
    ap.add_argument("--nice", type=int, default=0,
                    help="run the systems, nginx and wrk at this nice level (e.g. -10 on a shared machine; needs root)")
    ap.add_argument("--paired", type=int, default=None,
                    help="interleaved floor/tallygate rounds at c=15 per mode (default 5; quick 0; 0 disables)")
    ap.add_argument("--paired-seconds", type=float, default=10.0, help="seconds per paired row (default 10)")
    ap.add_argument("--no-ledger-throughput", action="store_true",
                    help="skip bench/ledger_throughput.py at the end of a full run")
    ap.add_argument("--render", metavar="RESULTS_JSON", default=None,
                    help="re-render the tables and docs from a saved bench/results/<run>.json, without running")
    ap.add_argument("--docs", default=None, help="markdown output (default docs/benchmarks.md on a full run, none on --quick)")
    a = ap.parse_args()
    if a.render:
        return render_saved(a)
    a.duration = a.duration if a.duration is not None else (3.0 if a.quick else 20.0)
    a.warmup = a.warmup if a.warmup is not None else (1.0 if a.quick else 5.0)
    NICE[0] = a.nice
    a.quiet_wait = a.quiet_wait if a.quiet_wait is not None else (10.0 if a.quick else 120.0)
    a.paired = a.paired if a.paired is not None else (0 if a.quick else 5)
    concs = [int(x) for x in (a.concurrency or ("15" if a.quick else "1,15,64")).split(",")]
    systems = [s for s in a.systems.split(",") if s]
    if a.no_litellm:
        systems = [s for s in systems if not s.startswith("litellm")]
    notes: list[str] = []
    if a.no_tallygate:
        systems = [s for s in systems if not s.startswith("tallygate")]
    else:
        ok, why = tallygate_available()
        if not ok:
            notes.append(f"tallygate rows skipped: {why}")
            systems = [s for s in systems if not s.startswith("tallygate")]
    modes = [m == "stream" for m in a.modes.split(",")]
    if (os.cpu_count() or 1) < 2:
        notes.append("fewer than 2 cores: pinning is not meaningful")

    t_start = time.time()
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    ensure_tools()
    fresh_ledgers(systems)
    li_info = None
    if any(s.startswith("litellm") for s in systems):
        if ensure_litellm():
            li_info = litellm_info()
        else:
            notes.append("LiteLLM rows skipped: install failed (bench/.work/litellm-install.log)")
            systems = [s for s in systems if not s.startswith("litellm")]
    pk_info = None
    if "portkey" in systems:
        pk_info = ensure_portkey()
        if pk_info is None:
            notes.append("Portkey rows skipped: install failed (bench/.work/portkey-install.log)")
            systems.remove("portkey")
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%m%d%H%M%S")
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
        "versions": versions(),
        "litellm": li_info,
        "portkey": pk_info,
        "run_id": run_id,
        "notes": notes,
        "git": git_state(),
        "args": {k: v for k, v in vars(a).items()},
    }
    log(f"run {run_id}: systems {systems}, modes {a.modes}, c={concs}, {a.warmup:g}+{a.duration:g} s per row")
    nginx = Nginx()
    results: list[dict] = []
    interrupted = False

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        nginx.start()
        for name in systems:
            for stream in modes:
                repeat = 15 if (name == "tallygate-pg" and not a.quick and 15 in concs) else None
                results.append(bench_system(name, stream, concs, a, run_id, repeat_c=repeat))
        if not a.no_workers:
            for name in ("floor", "tallygate-pg", "litellm"):
                if name not in systems:
                    continue
                if name == "tallygate-pg" and not tallygate_supports_workers():
                    notes.append("tallygate serve has no --workers option: 2-worker rows skipped")
                    continue
                wc = [c for c in concs if c >= 15] or concs
                for stream in modes:
                    results.append(bench_system(name, stream, wc, a, run_id, workers=2))
        if a.paired > 0 and {"floor", "tallygate-pg"} <= set(systems):
            meta["paired"] = [paired_pass(stream, a.paired, a, run_id) for stream in modes]
        if not a.quick and not a.no_ledger_throughput and "tallygate-pg" in systems:
            log("ledger throughput (bench/ledger_throughput.py)")
            env = {**base_env(), **PG_ENV}
            r = subprocess.run([str(VENV_PY), str(BENCH / "ledger_throughput.py"), "--rows", "50000", "--json"],
                               env=env, capture_output=True, text=True, timeout=600)
            try:
                meta["ledger_throughput"] = json.loads(r.stdout)
            except ValueError:
                notes.append("ledger_throughput.py failed: " + (r.stderr.strip().splitlines() or ["?"])[-1][:200])
    except KeyboardInterrupt:
        notes.append("interrupted: partial results")
        log("interrupted")
        interrupted = True
    finally:
        for p in RUNNING:
            if p.p is not None:
                p.stop(10)
        nginx.stop()

    # Is the upstream a bottleneck? Compare direct with the fastest proxied row, same mode and c.
    checks = []
    for r in results:
        if r["system"] == "direct":
            for row in r["rows"]:
                best = max((x for s in results if s["system"] != "direct" and s["mode"] == r["mode"] and not s.get("error")
                            for x in s["rows"] if x["c"] == row["c"]), key=lambda x: x["rps"], default=None)
                if best:
                    checks.append(f"{r['mode']} c={row['c']}: {row['rps']:,.0f} req/s, {row['rps'] / best['rps']:.1f}x the fastest proxy")
    meta["direct_check"] = ("; ".join(checks) + " (with wrk on the same core; the upstream has headroom when this is well above 1x).") if checks else "n/a"
    meta["elapsed_s"] = time.time() - t_start

    table = render(results, meta, a)
    targets = evaluate(results, a.quick, meta.get("paired"))
    (RESULTS / f"{run_id}{'-quick' if a.quick else ''}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print()
    print(table)
    print()
    for t, v, d in targets:
        print(f"{v:4}  {t}: {d}")
    docs = a.docs if a.docs is not None else (None if a.quick or interrupted else str(ROOT / "docs" / "benchmarks.md"))
    doc = render_doc(table, targets, meta, a, results, Path(docs).read_text() if docs and Path(docs).exists() else "")
    if docs:
        Path(docs).write_text(doc)
        log(f"wrote {docs}")
    (RESULTS / f"{run_id}{'-quick' if a.quick else ''}.md").write_text(doc)
    log(f"raw results in {RESULTS}/{run_id}*.json; done in {meta['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
