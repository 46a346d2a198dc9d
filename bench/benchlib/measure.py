"""Rows: one system at each concurrency, and the paired passes (floor and tallygate in turn)."""

from __future__ import annotations

import time

from .config import GATEWAY_TOKEN, NGINX_JSON, NGINX_SSE
from .host import (
    _STATUS_CALLS,
    cpu_sample,
    log,
    other_cpu,
    port_free,
    rss_mb,
    tree_cpu_seconds,
    upstream_quiet,
    wait_quiet,
)
from .ledger import count_log_lines, count_pg, count_sqlite, empty_pg_ledger
from .load import run_wrk
from .processes import RUNNING, Proc
from .systems import make_system, smoke


def bench_system(name: str, stream: bool, concs: list[int], a, run_id: str, workers: int = 1,
                 repeat_c: int | None = None) -> dict:
    mode = "stream" if stream else "json"
    label = name if workers == 1 else f"{name} x{workers}"
    res: dict = {"system": name, "label": label, "mode": mode, "workers": workers, "rows": []}
    sysd = None
    if name != "direct":
        sysd = make_system(name, stream, workers, run_id)
        proc: Proc = sysd["proc"]
        for p in (sysd["port"],):
            if not port_free(p):
                res["error"] = f"port {p} busy"
                return res
        log(f"{label} {mode}: starting")
        RUNNING.append(proc)
        proc.start()
        res["start_s"] = proc.wait_healthy(sysd["port"], sysd["health"], timeout=a.start_timeout)
        if res["start_s"] is None:
            res["error"] = "never became healthy: " + proc.log_tail(1500)
            res.update(proc.stop(10))
            log(f"{label} {mode}: FAILED to start")
            return res
        time.sleep(0.5)
        res["rss_idle_mb"] = rss_mb(proc.p.pid)
        err = smoke(sysd["port"], sysd["token"], stream, sysd.get("headers"))
        if err:
            res["error"] = err + "\n" + proc.log_tail(1500)
            res.update(proc.stop(10))
            log(f"{label} {mode}: smoke failed: {err}")
            return res
        port, token, headers = sysd["port"], sysd["token"], sysd.get("headers")
        log(f"{label} {mode}: healthy in {res['start_s']} s, RSS idle {res['rss_idle_mb']} MB")
    else:
        port = NGINX_SSE if stream else NGINX_JSON
        token, headers = GATEWAY_TOKEN, None
    tenants = []
    plan = [(c, "") for c in concs] + ([(repeat_c, "-repeat")] if repeat_c else [])
    for c, suffix in plan:
        base = f"bench-{run_id}-{name}-w{workers}-{mode}-c{c}{suffix}"
        warm_t, meas_t = base + "-warm", base
        tenants += [warm_t, meas_t]
        run_wrk(port, c, a.warmup, warm_t, stream, token, warm_t, headers)
        h0 = upstream_quiet()
        waited = wait_quiet(a.quiet_wait) if a.quiet_wait > 0 else 0.0
        s0 = _STATUS_CALLS[0]
        cpu0 = cpu_sample()
        own0 = tree_cpu_seconds(sysd["proc"].p.pid) if sysd else 0.0
        r = run_wrk(port, c, a.duration, meas_t, stream, token, meas_t, headers)
        own = tree_cpu_seconds(sysd["proc"].p.pid) - own0 if sysd else 0.0
        other, steal = other_cpu(cpu0, cpu_sample())
        h1 = upstream_quiet()
        hits = h1 - h0 - (_STATUS_CALLS[0] - s0)
        row = {"c": c, "repeat": bool(suffix), "tenant": meas_t, **r, "upstream_hits": hits,
               "other_cpu_cores": other, "steal_cores": steal, "waited_for_quiet_s": waited}
        if sysd and r.get("requests"):
            # the system's own CPU a request (ledger writes after the row included only as far
            # as they happened inside it): what more cores or more instances multiply
            row["cpu_us_per_request"] = round(own * 1e6 / r["requests"], 1)
        if sysd:
            row["rss_after_mb"] = rss_mb(sysd["proc"].p.pid)
        res["rows"].append(row)
        lat = r["latency_us"]
        log(f"{label} {mode} c={c}{suffix}: {r['rps']:.0f} req/s p50 {lat['p50']/1000:.2f} ms "
            f"p99 {lat['p99']/1000:.2f} ms errors {sum(r['errors'].values())} rss {row.get('rss_after_mb', '-')} "
            f"other-cpu {other:.2f} steal {steal:.2f} cpu/req {row.get('cpu_us_per_request', '-')} us")
    if sysd:
        proc = sysd["proc"]
        res["rss_after_mb"] = rss_mb(proc.p.pid)
        res.update(proc.stop(a.stop_timeout))
        if sysd["ledger"]:
            kind, path = sysd["ledger"]
            counts = count_pg(tenants) if kind == "pg" else count_sqlite(path, tenants)
            if kind == "pg" and isinstance(counts, dict):
                empty_pg_ledger()
            logs = count_log_lines(proc.logfile, tenants)
            if isinstance(counts, str):
                res["ledger_error"] = counts
            for row in res["rows"]:
                t = row["tenant"]
                row["ledger_rows"] = counts.get(t, 0) if isinstance(counts, dict) else None
                row["log_lines"] = logs.get(t, 0)
            res["ledger_all"] = counts
            res["log_lines_all"] = logs
    return res


def paired_pass(stream: bool, rounds: int, a, run_id: str) -> dict:
    """floor and tallygate-pg started side by side (both on core 0; the idle one costs
    nothing) and measured alternately at c=15, `rounds` times each. This VM has slow and
    fast phases that move a whole 20 s row by up to a third; the ratio of two adjacent
    rows cancels them, and the median of the rounds is the throughput ratio reported
    against the floor target."""
    mode = "stream" if stream else "json"
    out: dict = {"mode": mode, "rounds": []}
    sysds = {"floor": make_system("floor", stream, 1, run_id + "-paired"),
             "tallygate-pg": make_system("tallygate-pg", stream, 1, run_id + "-paired")}
    for name, sysd in sysds.items():
        if not port_free(sysd["port"]):
            out["error"] = f"port {sysd['port']} busy"
            return out
        RUNNING.append(sysd["proc"])
        sysd["proc"].start()
        if sysd["proc"].wait_healthy(sysd["port"], sysd["health"], timeout=a.start_timeout) is None:
            out["error"] = f"{name} never became healthy: " + sysd["proc"].log_tail(1500)
            for s2 in sysds.values():
                s2["proc"].stop(10)
            return out
        err = smoke(sysd["port"], sysd["token"], stream)
        if err:
            out["error"] = f"{name}: {err}"
            for s2 in sysds.values():
                s2["proc"].stop(10)
            return out
    log(f"paired {mode}: floor and tallygate-pg side by side, {rounds} rounds of {a.paired_seconds:g} s each")
    tenants = []
    for name, sysd in sysds.items():
        warm = f"bench-{run_id}-paired-{name}-{mode}-warm"
        tenants.append(warm)
        run_wrk(sysd["port"], 15, a.warmup, warm, stream, sysd["token"], warm)
    for i in range(rounds):
        pair = {}
        order = ("floor", "tallygate-pg") if i % 2 == 0 else ("tallygate-pg", "floor")
        for name in order:
            sysd = sysds[name]
            tenant = f"bench-{run_id}-paired-{name}-{mode}-r{i}"
            tenants.append(tenant)
            h0 = upstream_quiet()
            if a.quiet_wait > 0:
                wait_quiet(min(a.quiet_wait, 10))
            s0 = _STATUS_CALLS[0]
            cpu0 = cpu_sample()
            r = run_wrk(sysd["port"], 15, a.paired_seconds, tenant, stream, sysd["token"], tenant)
            other, _ = other_cpu(cpu0, cpu_sample())
            hits = upstream_quiet() - h0 - (_STATUS_CALLS[0] - s0)
            pair[name] = {"tenant": tenant, **r, "upstream_hits": hits, "other_cpu_cores": other}
        pair["ratio"] = pair["tallygate-pg"]["rps"] / pair["floor"]["rps"] if pair["floor"]["rps"] else 0.0
        out["rounds"].append(pair)
        log(f"paired {mode} round {i + 1}: floor {pair['floor']['rps']:.0f}, tallygate {pair['tallygate-pg']['rps']:.0f} "
            f"req/s: {100 * pair['ratio']:.0f}%")
    tg = sysds["tallygate-pg"]["proc"]
    out["rss_after_mb"] = rss_mb(tg.p.pid)
    for sysd in sysds.values():
        sysd["proc"].stop(a.stop_timeout)
    counts = count_pg(tenants)
    if isinstance(counts, dict):
        empty_pg_ledger()
    logs = count_log_lines(tg.logfile, tenants)
    for pair in out["rounds"]:
        row = pair["tallygate-pg"]
        row["ledger_rows"] = counts.get(row["tenant"], 0) if isinstance(counts, dict) else None
        row["log_lines"] = logs.get(row["tenant"], 0)
    ratios = sorted(p["ratio"] for p in out["rounds"])
    out["median_ratio"] = ratios[len(ratios) // 2] if len(ratios) % 2 else (ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2]) / 2
    return out
