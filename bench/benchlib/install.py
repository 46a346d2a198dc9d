"""What the benchmark installs and reports: wrk, nginx, the LiteLLM proxy in its own venv,
versions of everything, the git state."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

from devtools import litellm_venv

from .config import HOST, LITELLM_VENV, PORTKEY_DIR, PORTKEY_PKG, ROOT, VENV_PY, WORK
from .host import log, nginx_bin, sh
from .systems import base_env


def ensure_tools() -> None:
    missing = [t for t in ("wrk", "nginx", "taskset") if not shutil.which(t) and not Path(f"/usr/sbin/{t}").exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing {missing}: run as root or `apt-get install wrk nginx-light`")
    log(f"installing {missing} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    pkgs = ["wrk", "nginx-light"]
    if subprocess.run(["apt-get", "install", "-y", "-qq", *pkgs], env=env).returncode != 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk", "nginx"], check=True, env=env)



def ensure_litellm() -> bool:
    """The pinned LiteLLM proxy in its own venv (devtools/litellm_venv.py: cached outside the
    repository, keyed on the requirements; the tests use the same one)."""
    if not (LITELLM_VENV / litellm_venv.MARKER).exists():
        log(f"installing LiteLLM into {LITELLM_VENV} (a few minutes, log in {WORK}/litellm-install.log)")
    try:
        litellm_venv.ensure(WORK / "litellm-install.log")
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        log(f"LiteLLM install failed: {exc}")
        return False
    return True


def ensure_portkey() -> dict | None:
    """Install the pinned Portkey gateway from npm into bench/.work/portkey (`npm ci` from the
    committed lock, idempotent); its versions, or None when it could not be installed."""
    lock = (PORTKEY_PKG / "package-lock.json").read_bytes()
    want = hashlib.sha256(lock).hexdigest()
    marker = PORTKEY_DIR / ".bench-installed"
    main = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "package.json"
    if not (marker.exists() and marker.read_text().strip() == want and main.exists()):
        if not shutil.which("npm") or not shutil.which("node"):
            log("Portkey rows skipped: node and npm are needed")
            return None
        PORTKEY_DIR.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(PORTKEY_PKG / name, PORTKEY_DIR / name)
        log(f"installing the Portkey gateway into {PORTKEY_DIR} (npm ci)")
        with open(WORK / "portkey-install.log", "a") as f:
            r = subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=PORTKEY_DIR,
                               stdout=f, stderr=subprocess.STDOUT, timeout=600)
        if r.returncode != 0 or not main.exists():
            log("Portkey install failed; see bench/.work/portkey-install.log")
            return None
        marker.write_text(want)

    def version(package: str) -> str | None:
        path = PORTKEY_DIR / "node_modules" / package / "package.json"
        return json.loads(path.read_text()).get("version") if path.exists() else None

    node = sh(["node", "--version"]).stdout.strip()
    return {"gateway": version("@portkey-ai/gateway"), "hono": version("hono"),
            "@hono/node-server": version("@hono/node-server"), "node": node}


def litellm_info() -> dict:
    py = str(LITELLM_VENV / "bin" / "python")
    code = r"""
import importlib.metadata as md, json, os
def v(n):
    try: return md.version(n)
    except Exception: return None
info = {"litellm": v("litellm"), "uvicorn": v("uvicorn"), "fastapi": v("fastapi"), "pydantic": v("pydantic"),
        "httpx": v("httpx"), "aiohttp": v("aiohttp"), "uvloop": v("uvloop"), "litellm-proxy-extras": v("litellm-proxy-extras"),
        "litellm-enterprise": v("litellm-enterprise")}
try:
    from litellm.rust_bridge import _native  # noqa: F401
    info["rust_extension"] = True
except Exception as e:
    info["rust_extension"] = False
try:
    from litellm.rust_bridge.configuration import rust_enabled
    info["rust_enabled"] = rust_enabled()
except Exception as e:
    info["rust_enabled"] = None
try:
    from litellm.rust_bridge.catalog import RULES
    info["chat_rules"] = sorted({r.rollout.name for r in RULES if r.route.name == "CHAT_COMPLETIONS"})
except Exception as e:
    info["chat_rules"] = None
print(json.dumps(info))
"""
    env = {**base_env(), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    r = sh([py, "-c", code], timeout=180, env=env)
    try:
        info = json.loads(r.stdout.strip().splitlines()[-1])
    except Exception:
        info = {"error": r.stderr[-500:]}
    # Scan the installed source for a Rust switch (an env flag read by the proxy).
    site = next((LITELLM_VENV / "lib").glob("python3*/site-packages"), None)
    flags = set()
    if site and (site / "litellm").exists():
        r = sh(["grep", "-rhoE", r"(os\.getenv|os\.environ\.get|get_secret[a-z_]*)\(\s*['\"][A-Z0-9_]*RUST[A-Z0-9_]*['\"]",
                str(site / "litellm")], timeout=60)
        for m in re.findall(r"['\"]([A-Z0-9_]*RUST[A-Z0-9_]*)['\"]", r.stdout):
            if re.search(r"(^|_)RUST(_|$)", m):
                flags.add(m)
    info["rust_env_flags"] = sorted(flags)
    info["rust_env_set"] = {k: os.environ.get(k) for k in sorted(flags) if os.environ.get(k) is not None}
    return info


def versions() -> dict:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    code = r"""
import importlib.metadata as md, json, sys
out = {"python": sys.version.split()[0]}
for n in ("tallygate", "uvicorn", "aiohttp", "uvloop", "httptools", "orjson", "psycopg", "genai-prices"):
    try: out[n] = md.version(n)
    except Exception: out[n] = None
print(json.dumps(out))
"""
    proj = json.loads(sh([str(VENV_PY), "-c", code]).stdout)
    pg = sh(["psql", "-h", HOST, "-U", "postgres", "-d", "postgres", "-Atc", "show server_version"]).stdout.strip()
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gb": round(int(mem) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": (re.search(r'PRETTY_NAME="([^"]+)"', Path("/etc/os-release").read_text()) or [None, "?"])[1],
        "project": proj,
        "nginx": sh([nginx_bin(), "-v"]).stderr.strip().split("/")[-1],
        "wrk": (sh(["wrk", "-v"]).stdout + sh(["wrk", "-v"]).stderr).split()[1] if shutil.which("wrk") else None,
        "postgres": pg,
    }


def git_state() -> str:
    head = sh(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).stdout.strip()
    dirty = sh(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"]).stdout.strip()
    return f"{head}{' + uncommitted changes in src/' if dirty else ''}"
