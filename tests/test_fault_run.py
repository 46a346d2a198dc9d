"""bench/faults.py, short: load with every fault at once (upstream 500s, Postgres stopped
and restarted, clients hanging up mid-stream, SIGTERM with streams in flight), then every
request counted in the ledger exactly once."""

from __future__ import annotations

import json
import subprocess
import sys

from support import ROOT


def test_short_fault_run_loses_and_duplicates_nothing():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "faults.py"), "--seconds", "20", "--rate", "20",
         "--pg-stop-at", "5", "--pg-stop-for", "5", "--json"],
        capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    # the faults really happened
    assert report["upstream_500s"] > 0 and report["retries_logged"] > 0
    assert report["ledger_write_failures_logged"] > 0  # Postgres was down for a while
    assert report["answered_by_status"].get("client hung up mid-stream", 0) > 0
    assert report["sigterm_in_flight"] > 0 and report["gateway_exit_code"] == 0
    # and nothing was lost or counted twice
    assert report["ledger_rows"] == report["requests_sent"] == report["log_records"]
    assert report["rows_missing"] == 0 and report["duplicates"] == 0
    assert report["log_records_missing_from_ledger"] == 0
    assert report["metered_without_client_visible_id"] == 0
