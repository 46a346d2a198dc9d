"""Running the steps one by one; the first failure stops the run. Each step means here what
its line in the printed script (script.py) means to a POSIX shell."""

from __future__ import annotations

import os
import secrets
import string
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from .constants import _VAR_REF, PASSWORD_LENGTH, RETRY_DELAYS
from .script import command_line
from .steps import FOUND, Step

Runner = Callable[..., subprocess.CompletedProcess]
_ALPHABET = string.ascii_letters + string.digits


def new_password() -> str:
    """What the script's `tr -dc A-Za-z0-9 </dev/urandom | head -c 32` makes."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(PASSWORD_LENGTH))


def _fill(argv: Sequence[str], captured: dict[str, str]) -> list[str]:
    out = []
    for a in argv:
        whole = _VAR_REF.fullmatch(a)
        filled = _VAR_REF.sub(lambda m: captured.get(m.group(1), m.group(0)), a)
        if whole and filled == "":  # an empty word variable ($POLICIES_TRACK) is no argument at all
            continue
        out.append(filled)
    return out


def execute(
    steps: Sequence[Step],
    *,
    runner: Runner = subprocess.run,
    env: dict[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Run the steps in order; stop at the first failure. Returns an exit status."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    env = dict(os.environ if env is None else env)
    captured: dict[str, str] = {}

    def show(argv: Sequence[str]) -> str:
        return command_line(Step("", "", tuple(argv)))

    def probe(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess:
        return runner(_fill(argv, captured), input=stdin, capture_output=True, text=True, env=env)

    for index, step in enumerate(steps, 1):
        out.write(f"[{index}/{len(steps)}] {step.comment}\n")
        if step.choose:
            name, if_ok, if_not = step.choose
            result = probe(step.argv)
            captured[name] = if_ok if result.returncode == 0 else if_not
            out.write(f"  {name}={captured[name]!r}\n")
            continue

        def piped(step: Step = step, index: int = index) -> str | None:
            """stdin_from's output, fetched where the script's `printf ... "$(...)" |` fetches it."""
            assert step.stdin_from
            result = probe(step.stdin_from)
            if result.returncode != 0 or not (result.stdout or "").strip():
                err.write(
                    f"error: step {index} ({step.phase}): {show(step.stdin_from)} failed with exit "
                    f"status {result.returncode}\n"
                )
                if result.stderr:
                    err.write(result.stderr if result.stderr.endswith("\n") else result.stderr + "\n")
                return None
            return step.stdin_format % result.stdout.strip()

        stdin: str | None = None
        if step.stdin_env:
            stdin = env.get(step.stdin_env)
            if not stdin:
                err.write(
                    f"error: step {index} ({step.phase}): ${step.stdin_env} is not set; export it "
                    f"or pass --secret-file {step.stdin_env}=PATH\n"
                )
                return 2

        argv = _fill(step.argv, captured)
        if step.unless:
            probe_stdin = None
            if step.probe_stdin:
                probe_stdin = piped()
                if probe_stdin is None:
                    return 1
            if probe(step.unless, probe_stdin).returncode == 0:
                if not step.otherwise:
                    out.write("  exists, skipped\n")
                    continue
                argv = _fill(step.otherwise, captured)
        elif step.find:
            result = probe(step.find)
            if result.returncode != 0:
                err.write(
                    f"error: step {index} ({step.phase}): probe failed with exit status "
                    f"{result.returncode}: {show(_fill(step.find, captured))}\n"
                )
                if result.stderr:
                    err.write(result.stderr if result.stderr.endswith("\n") else result.stderr + "\n")
                return result.returncode or 1
            found = (result.stdout or "").strip().splitlines()
            if found:
                if step.capture:
                    captured[step.capture] = found[0]
                    out.write(f"  exists: {found[0]}\n")
                    continue
                if not step.otherwise:
                    out.write("  exists, skipped\n")
                    continue
                captured[FOUND] = found[0]
                argv = _fill(step.otherwise, captured)
        if step.stdin_password:
            stdin = new_password()
        elif step.stdin_from:
            stdin = piped()
            if stdin is None:
                return 1

        out.write(f"  $ {show(argv)}\n")
        out.flush()
        try:
            result = _run(step, argv, stdin, runner, env, out, sleep)
        except FileNotFoundError:
            err.write(f"error: step {index} ({step.phase}): {argv[0]} is not installed or not on PATH\n")
            return 127
        if result.returncode != 0:
            err.write(
                f"error: step {index} of {len(steps)} ({step.phase}) failed with exit status "
                f"{result.returncode}:\n  {show(argv)}\n"
            )
            if step.capture and result.stderr:
                err.write(result.stderr if result.stderr.endswith("\n") else result.stderr + "\n")
            err.write("fix the cause and run the command again: the steps that already succeeded are skipped\n")
            return result.returncode
        if step.capture:
            value = (result.stdout or "").strip().splitlines()
            if not value:
                err.write(f"error: step {index} ({step.phase}): {argv[0]} printed nothing for {step.capture}\n")
                return 1
            captured[step.capture] = value[0]
    out.write("done\n")
    return 0


def _run(
    step: Step,
    argv: list[str],
    stdin: str | None,
    runner: Runner,
    env: dict[str, str],
    out: TextIO,
    sleep: Callable[[float], None],
) -> subprocess.CompletedProcess:
    delays = RETRY_DELAYS if step.retry else ()
    for attempt in range(len(delays) + 1):
        if step.capture:
            result = runner(argv, input=stdin, capture_output=True, text=True, env=env)
        else:
            result = runner(argv, input=stdin, text=True, env=env)
        if result.returncode == 0 or attempt == len(delays):
            return result
        out.write(f"  failed with exit status {result.returncode}; retrying in {delays[attempt]:g} s\n")
        out.flush()
        sleep(delays[attempt])
    raise AssertionError("unreachable")
