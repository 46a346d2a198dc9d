"""Instructions per request under callgrind: a deterministic A/B for small changes.

Wall-clock CPU per request moves +-10% between identical runs on a shared VM, more than
most single changes; the instruction count of the same 1,000 requests repeats within ~2%.
(It understates the cost of extra code: cache misses are not counted.)

    .venv/bin/python bench/instructions.py [--floor] [--mode json|stream] [--n 1000] SRC [SRC ...]

Each SRC is a checkout whose `src/` is put first on PYTHONPATH (e.g. a `git worktree` of
another commit, or `.` for this one). Needs valgrind (`apt-get install valgrind`), nginx
(the fake upstream of bench/run.py) and the local Postgres (the ledger's `PG*` settings of
bench/run.py). The gateway runs under callgrind with instrumentation off, takes 300
requests of warm-up, then counts exactly `--n` requests at concurrency `--c`.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib.config import BENCH, HOST, MODEL, PORT_OFFSET, VENV_PY, WORK  # noqa: E402  (the benchmark's library)
from benchlib.ledger import fresh_bench_db  # noqa: E402
from benchlib.processes import Nginx  # noqa: E402
from benchlib.systems import make_system  # noqa: E402


async def load(port: int, token: str, n: int, c: int, stream: bool) -> None:
    import aiohttp

    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello from the benchmark."}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    data = json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}", "X-Tenant-ID": "bench-instructions",
               "Content-Type": "application/json"}
    left = [n]
    async with aiohttp.ClientSession() as session:
        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                async with session.post(f"http://{HOST}:{port}/v1/chat/completions", data=data,
                                        headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"status {resp.status}")
        await asyncio.gather(*(worker() for _ in range(c)))


def wait_idle(pid: int, limit: float = 180.0) -> None:
    """Until the process has been idle for a second: what the warm-up started in threads (the
    price data, loaded with the first record, is seconds of work under callgrind) must not
    run into the counted requests (once it did: +13% in one pass)."""
    clk = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + limit
    last = -1.0
    while time.monotonic() < deadline:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        used = (int(fields[11]) + int(fields[12])) / clk
        if last >= 0 and used - last < 0.02:
            return
        last = used
        time.sleep(1)


def measure(src: str | None, label: str, a) -> float:
    """Instructions per request for one build (src None: the floor proxy)."""
    stream = a.mode == "stream"
    out = WORK / f"callgrind.{label}{f'-p{PORT_OFFSET}' if PORT_OFFSET else ''}.out"  # apart from another run
    for f in glob.glob(f"{out}*"):
        os.remove(f)
    name = "floor" if src is None else "tallygate-pg"
    sysd = make_system(name, stream, 1, "instructions")
    proc, port = sysd["proc"], sysd["port"]
    if src is None:
        args = [str(BENCH / "floor_proxy.py"), "--port", str(port)]
    else:
        proc.env["PYTHONPATH"] = str(Path(src).resolve() / "src")
        # the key cache's poll (four queries every 2 s of wall time) would be shared out over
        # however many requests a slowed-down process served meanwhile: +-10% a pass on a
        # loaded machine, none of it a cost per request
        proc.env["TALLYGATE_KEYS_REFRESH"] = "3600"
        args = ["-m", "tallygate", "serve", "--host", HOST, "--port", str(port)]
    proc.cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                str(VENV_PY), *args]
    proc.start()
    try:
        if proc.wait_healthy(port, "/health", 240) is None:
            raise RuntimeError(f"{label} did not start: {proc.log_tail()}")
        time.sleep(3)
        asyncio.run(load(port, sysd["token"], 300, a.c, stream))
        wait_idle(proc.p.pid)
        subprocess.run(["callgrind_control", "-i", "on", str(proc.p.pid)], capture_output=True, check=True)
        asyncio.run(load(port, sysd["token"], a.n, a.c, stream))
        time.sleep(1)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.p.pid)], capture_output=True, check=True)
    finally:
        proc.stop(60)
    total = 0
    for f in glob.glob(f"{out}*"):
        for line in open(f):
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
    return total / a.n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("srcs", nargs="*", default=["."])
    ap.add_argument("--floor", action="store_true", help="measure bench/floor_proxy.py first")
    ap.add_argument("--mode", choices=("json", "stream"), default="json")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--c", type=int, default=15)
    a = ap.parse_args()
    if not subprocess.run(["which", "valgrind"], capture_output=True).returncode == 0:
        sys.exit("valgrind is missing: apt-get install valgrind")
    WORK.mkdir(parents=True, exist_ok=True)
    fresh_bench_db()  # the ledger's database, created empty (as run.py and cpu.py do)
    nginx = Nginx()
    nginx.start()
    try:
        if a.floor:
            print(f"floor: {measure(None, 'floor', a) / 1000:.1f}k instructions/request ({a.mode})", flush=True)
        for i, src in enumerate(a.srcs):
            print(f"{src}: {measure(src, str(i), a) / 1000:.1f}k instructions/request ({a.mode})", flush=True)
    finally:
        nginx.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
