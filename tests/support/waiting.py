"""Polling instead of fixed sleeps: wait for the condition a test needs, no longer."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, message: str = "condition",
               interval: float = 0.05) -> T:
    """Call `predicate` until it returns something truthy and return that; an AssertionError
    naming `message` when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {message}; last value: {value!r}")
        time.sleep(interval)


def wait_http(url: str, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    """Until `url` answers 2xx; a RuntimeError as soon as `proc` (the server) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(url)
