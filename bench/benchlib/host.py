"""Small helpers: logging, subprocesses, loopback HTTP, process trees, RSS, and the CPU that
other processes on the shared machine use."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from .config import HOST, NGINX_STATUS


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, **kw)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((HOST, port)) != 0


def http_get(port: int, path: str, timeout: float = 2.0, headers: dict | None = None) -> tuple[int, bytes]:
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def http_post(port: int, path: str, body: dict, headers: dict, timeout: float = 30.0) -> tuple[int, bytes]:
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json", **headers})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def proc_tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        q = todo.pop()
        out.append(q)
        todo.extend(children.get(q, []))
    return out


def rss_mb(pid: int) -> float:
    """VmRSS of pid and all its descendants, in MiB (reported as MB)."""
    total_kb = 0
    for q in proc_tree(pid):
        try:
            for line in Path(f"/proc/{q}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
                    break
        except OSError:
            pass
    return round(total_kb / 1024, 1)


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of pid and its descendants so far (/proc/<pid>/stat): what
    the system under test itself spent, whatever else shares the cores."""
    ticks = 0
    for q in proc_tree(pid):
        try:
            stat = Path(f"/proc/{q}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


_STATUS_CALLS = [0]


def stub_requests() -> int:
    """nginx's request counter; it includes this status request and every earlier one of ours
    (`_STATUS_CALLS` counts them so they can be subtracted)."""
    _STATUS_CALLS[0] += 1
    _, body = http_get(NGINX_STATUS, "/")
    m = re.search(rb"\n\s*(\d+)\s+(\d+)\s+(\d+)", body)
    return int(m.group(3)) if m else -1


def upstream_quiet(max_wait: float = 15.0) -> int:
    """Wait until the upstream request counter stops moving; return its value."""
    deadline = time.monotonic() + max_wait
    last = stub_requests()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = stub_requests()
        if now == last + 1:  # only our own status request
            return now
        last = now
    return last


# The machine is shared (tests of other work may run on it): measure the CPU that processes
# outside this benchmark's own process tree use during each row, and wait for quiet before one.
CLK = os.sysconf("SC_CLK_TCK")
OTHER_CPU_LIMIT = 0.10  # cores; rows above it are flagged


def cpu_sample() -> tuple[float, int, int, int]:
    """(time, busy jiffies of the machine (user+nice+system), steal jiffies, jiffies of our tree)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    ours = 0
    for q in proc_tree(os.getpid()):
        try:
            st = Path(f"/proc/{q}/stat").read_text()
        except OSError:
            continue
        f = st[st.rfind(")") + 2 :].split()
        ours += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return time.monotonic(), v[0] + v[1] + v[2], v[7] if len(v) > 7 else 0, ours


def other_cpu(a, b) -> tuple[float, float]:
    """Cores used by processes outside our tree, and steal, between two samples."""
    dt = max(b[0] - a[0], 1e-6)
    return round(max(0, (b[1] - a[1]) - (b[3] - a[3])) / CLK / dt, 3), round((b[2] - a[2]) / CLK / dt, 3)


def wait_quiet(max_wait: float) -> float:
    """Wait (bounded) until other processes use under OTHER_CPU_LIMIT cores over 1 s; return seconds waited."""
    t0 = time.monotonic()
    while True:
        a = cpu_sample()
        time.sleep(1.0)
        other, _ = other_cpu(a, cpu_sample())
        waited = time.monotonic() - t0
        if other < OTHER_CPU_LIMIT or waited >= max_wait:
            if waited > 1.5:
                log(f"waited {waited:.0f} s for other load to settle (now {other:.2f} cores)")
            return round(waited, 1)



def nginx_bin() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"
