"""The pinned LiteLLM proxy in a venv of its own, installed once and reused.

The venv lives outside the repository (~/.cache/tallygate/litellm-venv-<hash>, or under
$TALLYGATE_CACHE_DIR), keyed by the sha256 of bench/litellm-requirements.txt: a fresh clone
(CI's checkout of main) reuses what an earlier run installed, and a change of the pins makes
a new one. A cold install takes a few minutes.

Tallygate's callbacks (src/tallygate/integrations/litellm/) need a few of tallygate's runtime
dependencies that LiteLLM does not bring (genai-prices, psycopg-pool, ...): they are added at
the versions requirements.lock pins, with everything LiteLLM installed held where it is.
Tallygate itself is not installed there: the processes get the checkout's src/ on PYTHONPATH,
so the code under test is always the working tree's.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "bench" / "litellm-requirements.txt"
LOCK = ROOT / "requirements.lock"
# tallygate's runtime dependencies the callbacks import (the ledger, pricing, the log line)
CALLBACK_DEPENDENCIES = ("genai-prices", "psycopg", "psycopg-binary", "psycopg-pool", "orjson")
MARKER = ".litellm-installed"  # holds the requirements' sha256 once LiteLLM installed
DEPS_MARKER = ".tallygate-deps-installed"  # holds the pins added for the callbacks


def cache_dir() -> Path:
    return Path(os.environ.get("TALLYGATE_CACHE_DIR") or Path.home() / ".cache" / "tallygate")


def requirements_hash(requirements: Path = REQUIREMENTS) -> str:
    return hashlib.sha256(requirements.read_bytes()).hexdigest()


def venv_path(requirements: Path = REQUIREMENTS) -> Path:
    return cache_dir() / f"litellm-venv-{requirements_hash(requirements)[:16]}"


def _base_python() -> str:
    return getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable


def locked_pins(names: tuple[str, ...] = CALLBACK_DEPENDENCIES, lock: Path = LOCK) -> list[str]:
    """`name==version` for each name, as requirements.lock pins it."""
    text = lock.read_text()
    pins = []
    for name in names:
        m = re.search(rf"^{re.escape(name)}==([^\s;\\]+)", text, re.MULTILINE | re.IGNORECASE)
        if m is None:
            raise RuntimeError(f"{name} is not pinned in {lock}")
        pins.append(f"{name}=={m.group(1)}")
    return pins


def ensure(log_path: Path | None = None, *, with_callback_deps: bool = True, timeout: float = 1800) -> Path:
    """The venv with the pinned LiteLLM proxy (and the callbacks' dependencies), installing
    what is missing. Raises RuntimeError (naming the install log) when pip fails."""
    venv = venv_path()
    want = requirements_hash()
    log_path = log_path or cache_dir() / f"{venv.name}-install.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    py, pip = venv / "bin" / "python", venv / "bin" / "pip"
    marker = venv / MARKER
    if not (marker.exists() and marker.read_text().strip() == want and (venv / "bin" / "litellm").exists()):
        if not py.exists():
            subprocess.run([_base_python(), "-m", "venv", str(venv)], check=True)
        with open(log_path, "a") as out:
            r = subprocess.run([str(pip), "install", "-q", "-r", str(REQUIREMENTS)], stdout=out,
                               stderr=subprocess.STDOUT, timeout=timeout)
        if r.returncode != 0 or not (venv / "bin" / "litellm").exists():
            raise RuntimeError(f"installing LiteLLM into {venv} failed; see {log_path}")
        marker.write_text(want)
    if with_callback_deps:
        pins = locked_pins()
        deps_marker = venv / DEPS_MARKER
        if not (deps_marker.exists() and deps_marker.read_text().split() == pins):
            # what LiteLLM installed stays as it is: its versions are constraints
            frozen = subprocess.run([str(pip), "freeze", "--exclude-editable"], capture_output=True, text=True,
                                    check=True).stdout
            held = venv / "litellm-constraints.txt"
            names = {p.split("==")[0].lower() for p in pins}
            held.write_text("".join(line + "\n" for line in frozen.splitlines()
                                    if "==" in line and line.split("==")[0].lower() not in names))
            with open(log_path, "a") as out:
                r = subprocess.run([str(pip), "install", "-q", "-c", str(held), *pins], stdout=out,
                                   stderr=subprocess.STDOUT, timeout=timeout)
            if r.returncode != 0:
                raise RuntimeError(f"installing {pins} into {venv} failed; see {log_path}")
            deps_marker.write_text(" ".join(pins))
    return venv


def pythonpath(*extra: Path) -> str:
    """PYTHONPATH for a LiteLLM process that imports tallygate from this checkout."""
    return os.pathsep.join(str(p) for p in (ROOT / "src", *extra))


if __name__ == "__main__":  # `python -m devtools.litellm_venv`: install now, print the venv
    print(ensure())
