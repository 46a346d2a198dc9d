"""Running the steps one by one; the first failure stops the run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from .constants import _VAR_REF
from .script import command_line
from .steps import Step

Runner = Callable[..., subprocess.CompletedProcess]


def _fill(argv: Sequence[str], captured: dict[str, str]) -> list[str]:
    return [_VAR_REF.sub(lambda m: captured.get(m.group(1), m.group(0)), a) for a in argv]


def execute(
    steps: Sequence[Step],
    *,
    runner: Runner = subprocess.run,
    env: dict[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run the steps in order; stop at the first failure. Returns an exit status."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    env = dict(os.environ if env is None else env)
    captured: dict[str, str] = {}
    policies_group: list[str] | None = None
    for index, step in enumerate(steps, 1):
        argv = _fill(step.argv, captured)
        if argv[:3] == ["gcloud", "monitoring", "policies"]:
            if policies_group is None:
                probe = runner(["gcloud", "monitoring", "policies", "--help"], capture_output=True, text=True, env=env)
                policies_group = [] if probe.returncode == 0 else ["alpha"]
                if policies_group:
                    out.write("note: this Cloud SDK has no GA 'monitoring policies'; using 'gcloud alpha'\n")
            argv = ["gcloud", *policies_group, *argv[1:]]
        shown = command_line(Step(step.phase, step.comment, tuple(argv), stdin_env=step.stdin_env))
        out.write(f"[{index}/{len(steps)}] {step.comment}\n")
        if step.unless or step.unless_output:
            probe_argv = _fill(step.unless or step.unless_output or (), captured)
            probe = runner(probe_argv, capture_output=True, text=True, env=env)
            exists = (
                probe.returncode == 0 if step.unless else bool((probe.stdout or "").strip()) and probe.returncode == 0
            )
            if step.unless_output and probe.returncode != 0:
                err.write(
                    f"error: step {index} ({step.phase}): probe failed with exit status "
                    f"{probe.returncode}: {command_line(Step(step.phase, '', tuple(probe_argv)))}\n"
                )
                if probe.stderr:
                    err.write(probe.stderr if probe.stderr.endswith("\n") else probe.stderr + "\n")
                return probe.returncode or 1
            if exists:
                if step.otherwise:
                    argv = _fill(step.otherwise, captured)
                    shown = command_line(Step(step.phase, step.comment, tuple(argv)))
                else:
                    out.write("  exists, skipped\n")
                    continue
        out.write(f"  $ {shown}\n")
        out.flush()
        stdin_text: str | None = None
        if step.stdin_env:
            value = env.get(step.stdin_env)
            if not value:
                err.write(
                    f"error: step {index} ({step.phase}): ${step.stdin_env} is not set; export it "
                    f"or pass --secret-file {step.stdin_env}=PATH\n"
                )
                return 2
            stdin_text = value
        try:
            if step.capture:
                result = runner(argv, input=stdin_text, capture_output=True, text=True, env=env)
            else:
                result = runner(argv, input=stdin_text, text=True, env=env)
        except FileNotFoundError:
            err.write(f"error: step {index} ({step.phase}): {argv[0]} is not installed or not on PATH\n")
            return 127
        if result.returncode != 0:
            err.write(
                f"error: step {index} of {len(steps)} ({step.phase}) failed with exit status "
                f"{result.returncode}:\n  {shown}\n"
            )
            if step.capture and result.stderr:
                err.write(result.stderr if result.stderr.endswith("\n") else result.stderr + "\n")
            err.write("fix the cause and run the command again: the steps that already succeeded are skipped\n")
            return result.returncode
        if step.capture:
            value = (result.stdout or "").strip()
            if not value:
                err.write(f"error: step {index} ({step.phase}): {argv[0]} printed nothing for {step.capture}\n")
                return 1
            captured[step.capture] = value
    out.write("done\n")
    return 0
