"""The results as tables, the targets' verdicts, and docs/benchmarks.md."""

from __future__ import annotations

from .config import (
    BENCH_DB,
    FLOOR_PORT,
    LEDGER_TABLE,
    LITELLM_PORT,
    NGINX_JSON,
    NGINX_SSE,
    PORTKEY_PORT,
    TG_PORT,
)
from .host import OTHER_CPU_LIMIT
from .processes import NICE


def ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def find_row(results: list[dict], system: str, mode: str, c: int, workers: int = 1) -> dict | None:
    for r in results:
        if r["system"] == system and r["mode"] == mode and r["workers"] == workers and not r.get("error"):
            for row in r["rows"]:
                if row["c"] == c and not row["repeat"]:
                    return row
    return None


def find_res(results, system, mode, workers=1):
    for r in results:
        if r["system"] == system and r["mode"] == mode and r["workers"] == workers:
            return r
    return None


def ratio(a, b) -> str:
    if a is None or b is None or not b.get("rps"):
        return "n/a"
    return f"{a['rps'] / b['rps']:.2f}x" if a["rps"] / b["rps"] < 10 else f"{a['rps'] / b['rps']:.0f}x"


def _noise(*rows) -> str:
    worst = max((r.get("other_cpu_cores", 0) for r in rows if r), default=0)
    return f"; other load {worst:.2f} cores during a row used" if worst > OTHER_CPU_LIMIT else ""


def evaluate(results: list[dict], quick: bool, paired: list | None = None) -> list[tuple[str, str, str]]:
    """Targets (docs/benchmarks.md), checked on tallygate-pg (one core unless said). Returns (target, verdict, detail).
    The floor ratio is taken from the paired rounds when they ran (see paired_pass)."""
    out = []
    paired_by_mode = {p["mode"]: p for p in (paired or []) if not p.get("error") and p.get("rounds")}
    tg = "tallygate-pg"
    cref = 15
    for mode in ("json", "stream"):
        t, l, f = find_row(results, tg, mode, cref), find_row(results, "litellm", mode, cref), find_row(results, "floor", mode, cref)
        if t and l:
            x = t["rps"] / l["rps"]
            out.append((f"{mode} c=15 throughput >= 100x LiteLLM", "PASS" if x >= 100 else "FAIL", f"{x:.0f}x ({t['rps']:.0f} vs {l['rps']:.1f} req/s){_noise(t, l)}"))
        else:
            out.append((f"{mode} c=15 throughput >= 100x LiteLLM", "N/A", "row missing"))
        single = f"{100 * t['rps'] / f['rps']:.0f}% ({t['rps']:.0f} vs {f['rps']:.0f} req/s){_noise(t, f)}" if t and f else None
        pm = paired_by_mode.get(mode)
        if pm:
            x = pm["median_ratio"]
            rounds = ", ".join(f"{100 * r['ratio']:.0f}%" for r in pm["rounds"])
            out.append((f"{mode} c=15 throughput >= 85% of floor", "PASS" if x >= 0.85 else "FAIL",
                        f"median {100 * x:.0f}% over {len(pm['rounds'])} interleaved rounds ({rounds})"
                        + (f"; the single rows above: {single}" if single else "")))
        elif t and f:
            x = t["rps"] / f["rps"]
            out.append((f"{mode} c=15 throughput >= 85% of floor", "PASS" if x >= 0.85 else "FAIL", single))
        else:
            out.append((f"{mode} c=15 throughput >= 85% of floor", "N/A", "row missing"))
        if t and f:
            added = (t["latency_us"]["p99"] - f["latency_us"]["p99"]) / 1000
            out.append((f"{mode} c=15 p99 within 1.5 ms of the floor's", "PASS" if added <= 1.5 else "FAIL",
                        f"{added:+.2f} ms ({ms(t['latency_us']['p99'])} vs {ms(f['latency_us']['p99'])}){_noise(t, f)}"))
    t, p = find_row(results, tg, "json", cref), find_row(results, "portkey", "json", cref)
    if t and p:
        x = t["rps"] / p["rps"]
        out.append(("json c=15 throughput >= 5x Portkey (tallygate with its ledger, Portkey without)",
                    "PASS" if x >= 5 else "FAIL", f"{x:.1f}x ({t['rps']:.0f} vs {p['rps']:.0f} req/s){_noise(t, p)}"))
    else:
        out.append(("json c=15 throughput >= 5x Portkey", "N/A", "row missing"))
    for mode in ("json", "stream"):
        one, two = find_row(results, tg, mode, cref), find_row(results, tg, mode, cref, workers=2)
        if one and two and one.get("cpu_us_per_request") and two.get("cpu_us_per_request"):
            x = two["cpu_us_per_request"] / one["cpu_us_per_request"]
            out.append((f"{mode} c=15 CPU a request at 2 workers within 10% of 1 worker's", "PASS" if x <= 1.1 else "FAIL",
                        f"{two['cpu_us_per_request']:.0f} vs {one['cpu_us_per_request']:.0f} us ({100 * (x - 1):+.0f}%)"))
    for mode in ("json", "stream"):
        t, d = find_row(results, tg, mode, 1), find_row(results, "direct", mode, 1)
        if t and d:
            p50 = (t["latency_us"]["p50"] - d["latency_us"]["p50"]) / 1000
            p99 = (t["latency_us"]["p99"] - d["latency_us"]["p99"]) / 1000
            out.append((f"{mode} added latency at c=1: p50 <= 0.5 ms", "PASS" if p50 <= 0.5 else "FAIL", f"{p50:.3f} ms{_noise(t, d)}"))
            out.append((f"{mode} added latency at c=1: p99 <= 2 ms", "PASS" if p99 <= 2 else "FAIL", f"{p99:.3f} ms{_noise(t, d)}"))
        else:
            out.append((f"{mode} added latency at c=1", "N/A", "c=1 rows not run" if quick else "row missing"))
    starts = [r["start_s"] for r in results if r["system"] == tg and r["workers"] == 1 and r.get("start_s")]
    if starts:
        out.append(("start-up to healthy <= 0.5 s", "PASS" if max(starts) <= 0.5 else "FAIL", "max of " + ", ".join(f"{s:.3f} s" for s in starts)))
    else:
        out.append(("start-up to healthy <= 0.5 s", "N/A", "tallygate not run"))
    tgres = [r for r in results if r["system"] == tg and r["workers"] == 1 and not r.get("error")]
    if tgres:
        idle = max(r["rss_idle_mb"] for r in tgres)
        after = max(r["rss_after_mb"] for r in tgres)
        out.append(("RSS idle <= 60 MB", "PASS" if idle <= 60 else "FAIL", f"{idle} MB"))
        out.append(("RSS after the run <= 80 MB", "PASS" if after <= 80 else "FAIL", f"{after} MB"))
        flat = []
        for r in tgres:
            reps = [row for row in r["rows"] if row["repeat"]]
            if reps:
                before = [row for row in r["rows"] if not row["repeat"]][-1]["rss_after_mb"]
                flat.append((r["mode"], before, reps[-1]["rss_after_mb"]))
        if flat:
            ok = all(b2 - b1 <= 2.0 for _, b1, b2 in flat)
            out.append(("RSS flat across a repeated pass (growth <= 2 MB)", "PASS" if ok else "FAIL",
                        "; ".join(f"{m}: {b1} -> {b2} MB" for m, b1, b2 in flat)))
        else:
            out.append(("RSS flat across a repeated pass", "N/A", "no repeat pass in --quick"))
    else:
        out.append(("memory", "N/A", "tallygate not run"))
    missing_total, checked = 0, 0
    detail = []
    for r in results:
        if r["system"] in ("tallygate-pg", "tallygate-sqlite") and not r.get("error"):
            for row in r["rows"]:
                if row.get("ledger_rows") is None:
                    detail.append(f"{r['label']} {r['mode']} c={row['c']}: not counted ({r.get('ledger_error', '?')})")
                    missing_total += 1
                    continue
                checked += 1
                miss = row["upstream_hits"] - row["ledger_rows"]
                if miss != 0:
                    missing_total += 1
                    detail.append(f"{r['label']} {r['mode']} c={row['c']}: {row['ledger_rows']} rows for {row['upstream_hits']} upstream calls")
                if row.get("log_lines") != row["ledger_rows"]:
                    detail.append(f"{r['label']} {r['mode']} c={row['c']}: {row.get('log_lines')} log lines vs {row['ledger_rows']} rows")
                    missing_total += 1
    for pm in paired_by_mode.values():
        for i, pair in enumerate(pm["rounds"]):
            row = pair["tallygate-pg"]
            checked += 1
            if row.get("ledger_rows") != row["upstream_hits"] or row.get("log_lines") != row.get("ledger_rows"):
                missing_total += 1
                detail.append(f"paired {pm['mode']} round {i + 1}: {row.get('ledger_rows')} rows, "
                              f"{row['upstream_hits']} upstream calls, {row.get('log_lines')} log lines")
    if checked or detail:
        out.append(("ledger: zero rows missing (rows == upstream calls == log lines, every row)", "PASS" if missing_total == 0 else "FAIL",
                    "; ".join(detail) if detail else f"{checked} rows checked, all equal"))
    else:
        out.append(("ledger: zero rows missing", "N/A", "tallygate not run"))
    return out


def render(results: list[dict], meta: dict, a) -> str:
    L = []
    L.append("| system | mode | c | req/s | p50 ms | p90 ms | p99 ms | errors | added p50/p99 @c=1 ms | RSS after MB | ledger rows / upstream calls / sent | other CPU |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if r.get("error"):
            L.append(f"| {r['label']} | {r['mode']} | - | error | | | | | | | {r['error'].splitlines()[0][:120]} | |")
            continue
        for row in r["rows"]:
            lat = row["latency_us"]
            errs = sum(row["errors"].values())
            added = ""
            if row["c"] == 1 and r["system"] != "direct":
                d = find_row(results, "direct", r["mode"], 1)
                if d:
                    added = f"{(lat['p50'] - d['latency_us']['p50']) / 1000:+.2f} / {(lat['p99'] - d['latency_us']['p99']) / 1000:+.2f}"
            led = ""
            if "ledger_rows" in row:
                led = f"{row['ledger_rows']} / {row['upstream_hits']} / {row['sent']}"
            c = f"{row['c']}" + (" (repeat)" if row["repeat"] else "")
            L.append(
                f"| {r['label']} | {r['mode']} | {c} | {fmt_rate(row['rps'])} | {ms(lat['p50'])} | {ms(lat['p90'])} | {ms(lat['p99'])} | "
                f"{errs} | {added} | {row.get('rss_after_mb', '')} | {led} | "
                f"{row.get('other_cpu_cores', 0):.2f}{' (noisy)' if row.get('other_cpu_cores', 0) > OTHER_CPU_LIMIT else ''} |"
            )
    L.append("")
    L.append("| system | mode | start to healthy s | RSS idle MB | RSS after MB | exit on SIGTERM |")
    L.append("|---|---|---|---|---|---|")
    for r in results:
        if r["system"] == "direct":
            continue
        L.append(f"| {r['label']} | {r['mode']} | {r.get('start_s', '-')} | {r.get('rss_idle_mb', '-')} | {r.get('rss_after_mb', '-')} | "
                 f"{r.get('exit_code', '-')} ({r.get('stop_s', '-')} s) |")
    L.append("")
    L.append("Ratios (requests/s at the same concurrency, same run):")
    L.append("")
    L.append("| mode | c | tallygate/LiteLLM | tallygate/floor | tallygate-sqlite/floor | tallygate/Portkey | "
             "tallygate-noledger/Portkey | floor/LiteLLM | direct/floor |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for mode in ("json", "stream"):
        for c in sorted({row["c"] for r in results for row in r["rows"]}):
            t = find_row(results, "tallygate-pg", mode, c)
            L.append(
                f"| {mode} | {c} | {ratio(t, find_row(results, 'litellm', mode, c))} | {ratio(t, find_row(results, 'floor', mode, c))} | "
                f"{ratio(find_row(results, 'tallygate-sqlite', mode, c), find_row(results, 'floor', mode, c))} | "
                f"{ratio(t, find_row(results, 'portkey', mode, c))} | "
                f"{ratio(find_row(results, 'tallygate-noledger', mode, c), find_row(results, 'portkey', mode, c))} | "
                f"{ratio(find_row(results, 'floor', mode, c), find_row(results, 'litellm', mode, c))} | "
                f"{ratio(find_row(results, 'direct', mode, c), find_row(results, 'floor', mode, c))} |"
            )
    for pm in meta.get("paired") or []:
        L.append("")
        if pm.get("error"):
            L.append(f"Paired rounds, {pm['mode']}: error: {pm['error'].splitlines()[0][:200]}")
            continue
        L.append(f"Paired rounds, {pm['mode']} c=15: floor and tallygate-pg running side by side, measured alternately "
                 f"({len(pm['rounds'])} x {pm['rounds'][0]['floor']['duration_us'] / 1e6:.0f} s each); "
                 f"median tallygate/floor **{100 * pm['median_ratio']:.0f}%**:")
        L.append("")
        L.append("| round | floor req/s | tallygate req/s | tallygate/floor | tallygate p50 / p99 ms | ledger rows / upstream calls / sent |")
        L.append("|---|---|---|---|---|---|")
        for i, pair in enumerate(pm["rounds"]):
            t = pair["tallygate-pg"]
            L.append(f"| {i + 1} | {fmt_rate(pair['floor']['rps'])} | {fmt_rate(t['rps'])} | {100 * pair['ratio']:.0f}% | "
                     f"{ms(t['latency_us']['p50'])} / {ms(t['latency_us']['p99'])} | "
                     f"{t.get('ledger_rows')} / {t['upstream_hits']} / {t['sent']} |")
    w2 = [r for r in results if r["workers"] > 1 and not r.get("error")]
    if w2:
        L.append("")
        L.append("Scaling, 2 workers on both cores (wrk and nginx still on core 1) vs 1 worker on core 0:")
        L.append("")
        L.append("| system | mode | c | 1 worker req/s | 2 workers req/s | scale | CPU us a request, 1 / 2 workers |")
        L.append("|---|---|---|---|---|---|---|")
        for r in w2:
            for row in r["rows"]:
                one = find_row(results, r["system"], r["mode"], row["c"])
                cpu = f"{one.get('cpu_us_per_request', '-') if one else '-'} / {row.get('cpu_us_per_request', '-')}"
                scale = f"{(row['rps'] / one['rps']):.2f}x" if one else "n/a"
                L.append(f"| {r['system']} | {r['mode']} | {row['c']} | {fmt_rate(one['rps']) if one else 'n/a'} | "
                         f"{fmt_rate(row['rps'])} | {scale} | {cpu} |")
    return "\n".join(L)


# Sections of docs/benchmarks.md written by other benchmarks (bench/scale.py) or by hand from
# load-insensitive measurements (callgrind, CPU a request): a run keeps them
KEPT_SECTIONS = ("## Ledger at scale", "## Request path: instructions and CPU a request")


def kept_sections(old: str) -> list[str]:
    """The KEPT_SECTIONS of an existing docs/benchmarks.md, each up to the next `## ` heading."""
    out = []
    for title in KEPT_SECTIONS:
        start = old.find("\n" + title)
        if start >= 0:
            end = old.find("\n## ", start + 1)
            out.append(old[start + 1 : end if end >= 0 else len(old)].rstrip("\n"))
    return out


def render_doc(table: str, targets, meta: dict, a, results, old: str = "") -> str:
    v = meta["versions"]
    li = meta.get("litellm") or {}
    pk = meta.get("portkey") or {}
    rust_flags = li.get("rust_env_flags") or []
    rust_line = (
        f"Rust mode: **{'on' if li.get('rust_enabled') else 'off'}** (`rust_bridge.configuration.rust_enabled()` = "
        f"{li.get('rust_enabled')}; switch {', '.join(rust_flags) or 'LITELLM_RUST'} "
        f"{'set to ' + str(li.get('rust_env_set')) if li.get('rust_env_set') else 'unset, and it is opt-in'}; "
        f"native extension shipped: {li.get('rust_extension')}). Its rollout catalog routes chat completions "
        f"as {'/'.join(li.get('chat_rules') or ['?'])}, so the chat path measured here runs in Python either way."
        if li else "LiteLLM not run."
    )
    d = meta["direct_check"]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `bench/run.py` on {meta['date']} ({'quick' if a.quick else 'full'} run, {meta['elapsed_s']:.0f} s). "
        "Absolute numbers move between runs on shared machines (a row varied by up to 35% between passes "
        "in earlier measurements): compare the ratios inside one run.",
        "",
        "## Machine and versions",
        "",
        f"- {v['nproc']} cores, `{v['cpu']}`, {v['mem_gb']} GB RAM, {v['os']}, kernel {v['kernel']}",
        f"- Python {v['project']['python']}; tallygate {v['project'].get('tallygate')}, uvicorn {v['project'].get('uvicorn')}, "
        f"aiohttp {v['project'].get('aiohttp')}, uvloop {v['project'].get('uvloop')}, httptools {v['project'].get('httptools')}, "
        f"orjson {v['project'].get('orjson')}, psycopg {v['project'].get('psycopg')}",
        f"- PostgreSQL {v['postgres']} (local, 127.0.0.1:5432), nginx {v['nginx']}, wrk {v['wrk']}",
        f"- tallygate source: commit {meta.get('git', '?')}",
        f"- LiteLLM proxy {li.get('litellm', 'not run')} (own venv `bench/.work/litellm-venv`, from `bench/litellm-requirements.txt`), "
        f"uvicorn {li.get('uvicorn')}, fastapi {li.get('fastapi')}, httpx {li.get('httpx')}, aiohttp {li.get('aiohttp')}, 1 worker, no DB, "
        f"master key set, `LITELLM_LOCAL_MODEL_COST_MAP=True`, `LITELLM_LOG=ERROR`. {rust_line}",
        f"- Portkey AI gateway {pk.get('gateway', 'not run')} (npm `@portkey-ai/gateway`, installed by `npm ci` from "
        f"`bench/portkey/package-lock.json` into `bench/.work/portkey`; hono {pk.get('hono')}, @hono/node-server "
        f"{pk.get('@hono/node-server')}, Node {pk.get('node')}), one process, started with `--port`, proxying through its "
        "`x-portkey-provider: openai` and `x-portkey-custom-host: <upstream>` headers; it keeps no ledger, so "
        "`tallygate-noledger` (`TALLYGATE_LEDGER=off`: log line and metrics, no rows) is its like-for-like row.",
        "",
        "## Setup",
        "",
        "- System under test pinned to core 0 (`taskset -c 0`); nginx (1 worker) and wrk (`-t1`, Lua script "
        "`bench/post.lua`) on core 1. Rows run one after another.",
        f"- Fake upstream: nginx returning a fixed `chat.completion` JSON (with usage) on :{NGINX_JSON}, and a fixed SSE body "
        f"(8 chunks, a usage chunk, `data: [DONE]`) on :{NGINX_SSE}; each system is started once per mode with its upstream base URL "
        "pointing at the matching port. Start-up, RSS idle and the ledger are measured per start.",
        f"- Per row: {a.warmup:g} s warm-up then {a.duration:g} s measured at the same concurrency; latency is wrk's "
        "(p50/p90/p99 of its histogram); errors = socket errors + HTTP status > 399.",
        "- Paired rounds (the floor target): this VM has slow and fast phases that move a whole row by up to a third, so "
        "a floor row and a tallygate row measured a minute apart can differ for reasons neither caused. After the rows, "
        "floor and tallygate-pg are started side by side (both on core 0; the idle one costs nothing) and measured "
        f"alternately at c=15 ({getattr(a, 'paired', 0)} rounds of {getattr(a, 'paired_seconds', 10):g} s each, the order "
        "swapped every round); the median of the per-round ratios is what the 85%-of-floor target is checked against. "
        "The single rows stay in the tables and in the verdict's detail.",
        "- Clients send `Authorization: Bearer <token>` and `X-Tenant-ID: bench-<run>-<system>-<mode>-c<N>` (unique per row). "
        "`floor` is `bench/floor_proxy.py` (uvicorn + httptools + uvloop, aiohttp client, bearer check, usage found in the tail).",
        "- tallygate-pg: auth, metering, JSON log line (stdout to a file), Postgres ledger in async mode "
        f"(`PGHOST=127.0.0.1 PGUSER=postgres PGDATABASE={BENCH_DB} PGSSL=disable`; the database is dropped and created "
        "empty at the start of the run). tallygate-sqlite: the SQLite default "
        "(`TALLYGATE_SQLITE_PATH=bench/.work/tallygate-bench.db`).",
        "- Start to healthy: spawn to the first 200 from `/health` (LiteLLM: `/health/liveliness`), polled every 2 ms. "
        "RSS: VmRSS of the process and all its children from /proc.",
        "- Ledger: after the last row the gateway gets SIGTERM and is waited for; then rows per tenant are counted in "
        f"`{LEDGER_TABLE}` and compared with the upstream calls counted by nginx (`stub_status`) during that row "
        "and with the requests wrk wrote (`sent`, which includes the few in flight when wrk stops).",
        f"- Upstream check: direct nginx served {d}",
        "- The machine is shared: `other CPU` is the CPU (in cores) used during the row by processes outside the "
        "benchmark's own process tree (from /proc/stat minus our processes' utime+stime); before each row the "
        f"script waits (up to {a.quiet_wait:g} s) for it to drop under {OTHER_CPU_LIMIT} cores. Rows above that are marked `(noisy)`. "
        f"Everything the benchmark started ran at nice {NICE[0]}.",
        "",
        "## Commands",
        "",
        "```",
        meta["command"],
        "```",
        "",
        "wrk, per row (env `BENCH_TOKEN`, `BENCH_TENANT`, `BENCH_STREAM`, `BENCH_OUT` feed the Lua script):",
        "",
        "```",
        f"taskset -c 1 wrk -t1 -c<C> -d{a.duration:g}s --timeout 30s -s bench/post.lua http://127.0.0.1:<port>/v1/chat/completions",
        "taskset -c 1 nginx -p bench/.work/nginx -c bench/.work/nginx/nginx.conf",
        f"taskset -c 0 .venv/bin/python bench/floor_proxy.py --port {FLOOR_PORT}",
        f"taskset -c 0 .venv/bin/tallygate serve --host 127.0.0.1 --port {TG_PORT}",
        f"taskset -c 0 node bench/.work/portkey/node_modules/@portkey-ai/gateway/build/start-server.js --port={PORTKEY_PORT}",
        f"taskset -c 0 bench/.work/litellm-venv/bin/litellm --config bench/.work/litellm-<mode>.yaml --host 127.0.0.1 --port {LITELLM_PORT} --num_workers 1 --telemetry False",
        "```",
        "",
        "## Results",
        "",
        table,
        "",
        "## Targets (tallygate-pg, one core unless said)",
        "",
        "| target | verdict | measured |",
        "|---|---|---|",
    ]
    lines += [f"| {t} | **{v_}** | {d_} |" for t, v_, d_ in targets]
    lt = meta.get("ledger_throughput")
    if lt:
        lines += ["", "## Ledger write throughput", "",
                  "`bench/ledger_throughput.py`: one process, the gateway's `LedgerWriter` over its Postgres store, "
                  "records added in bursts of 15, then flushed and counted back.", "",
                  "| store | batch size | rows | rows in DB | seconds | rows/s |", "|---|---|---|---|---|---|"]
        for r in lt:
            lines.append(f"| {r['store']} | {r['batch_size']} | {r['rows']:,} | {r['rows_in_db']:,} | {r['seconds']} | {r['rows_per_s']:,.0f} |")
    for section in kept_sections(old):
        lines += ["", section]
    lines += [
        "", "## How to read this", "",
        "- `sent` is wrk's count of requests written; it is one more than the upstream calls in every row "
        "(wrk prepares one request it never sends), so the ledger is checked against nginx's count of upstream calls.",
        "- `exit on SIGTERM` -15 is uvicorn's behaviour with one process (it re-raises the signal after a graceful "
        "shutdown); the floor and LiteLLM show it, tallygate exits 0.",
        "- LiteLLM's `/health` calls the models, so its start-up is timed on `/health/liveliness`.",
        "- The verdicts use the single rows of this run; a row varies by tens of percent between runs here, more "
        "when `other CPU` is high. Re-run `make bench` on a quiet machine before trusting a borderline verdict.",
    ]
    errs = [r for r in results if r.get("error")]
    if errs:
        lines += ["", "## Errors", ""]
        for r in errs:
            lines += [f"- {r['label']} {r['mode']}:", "", "```", r["error"][-1500:], "```"]
    notes = meta.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
