"""Every shell script under deploy/ and bench/ passes shellcheck (the Debian package)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from deploy_support import ROOT


def _scripts() -> list:
    """The project's *.sh files (git's view: ignored trees such as bench/.work are not ours)."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                              "--", "deploy", "bench"], capture_output=True, text=True, cwd=ROOT, check=True)
        return sorted(ROOT / p for p in out.stdout.splitlines() if p.endswith(".sh") and (ROOT / p).is_file())
    except (OSError, subprocess.CalledProcessError):
        return sorted(p for d in ("deploy", "bench") for p in (ROOT / d).rglob("*.sh")
                      if not any(part.startswith(".") for part in p.relative_to(ROOT).parts))


SCRIPTS = _scripts()


def test_shellcheck_is_installed():
    # required, not skipped: `make test` installs it (apt-get install shellcheck)
    assert shutil.which("shellcheck"), "install shellcheck: apt-get install -y shellcheck"


def test_there_are_scripts_to_check():
    assert ROOT / "deploy" / "bigquery" / "create.sh" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_shellcheck(script):
    result = subprocess.run(["shellcheck", "--external-sources", str(script)],
                            capture_output=True, text=True, cwd=script.parent)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_scripts_are_strict_and_executable(script):
    text = script.read_text()
    assert text.startswith("#!"), "a shebang tells shellcheck (and the kernel) the shell"
    assert "set -e" in text
    assert script.stat().st_mode & 0o111, f"chmod +x {script.relative_to(ROOT)}"
