"""The last reconciliation runs, kept in a directory the console reads.

With TALLYGATE_RECONCILE_DIR set, `tallygate reconcile` writes each comparison it makes
(the --json document, plus when it ran and its exit status) to DIR/PROVIDER-DAY.json; a
later run of the same provider and day replaces it (written to a temporary file, then
renamed, so a reader never sees half a file). No database table: a run is a batch job's
report, and a shared directory (a volume mounted on the job and the service) is enough.
"""

from __future__ import annotations

import os
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import orjson

RECONCILE_DIR_ENV = "TALLYGATE_RECONCILE_DIR"
RUN_FILE = re.compile(r"(openai|anthropic)-(\d{4}-\d{2}-\d{2})\.json")
OVER_ROWS = 20  # groups over the tolerance listed per run (the file has every row)


class RunsError(Exception):
    pass


def record_run(directory: str, doc: dict, exit_status: int, now: datetime | None = None) -> Path:
    """Write one run's document to DIR/PROVIDER-DAY.json; the path written."""
    path = Path(directory) / f"{doc['provider']}-{doc['day']}.json"
    ran_at = (now or datetime.now(UTC)).astimezone(UTC).isoformat().replace("+00:00", "Z")
    data = orjson.dumps({**doc, "ran_at": ran_at, "exit_status": exit_status}, option=orjson.OPT_INDENT_2)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data + b"\n")
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        raise RunsError(f"{RECONCILE_DIR_ENV}: cannot write {path}: {exc.strerror}") from None
    return path


def summary(doc: dict) -> dict:
    """What the console shows of one run: the totals and the groups over the tolerance."""
    over = [r for r in doc.get("rows", []) if r.get("over_tolerance")]
    return {
        "provider": doc.get("provider"),
        "day": doc.get("day"),
        "ran_at": doc.get("ran_at"),
        "exit_status": doc.get("exit_status"),
        "ok": doc.get("ok"),
        "tolerance_percent": doc.get("tolerance_percent"),
        "groups": len(doc.get("rows", [])),
        "over_count": len(over),
        "over": [
            {"kind": r.get("kind"), "key": r.get("key"), "model": r.get("model"), "tenant": r.get("tenant")}
            for r in over[:OVER_ROWS]
        ],
        "totals": doc.get("totals", {}),
    }


def recent_runs(directory: str | None, limit: int = 30) -> dict:
    """The newest runs' summaries (by the day reconciled, then provider), newest first.
    A file that cannot be read is listed with its error, not skipped."""
    if not directory:
        return {"configured": False, "directory": None, "data": []}
    found = []
    try:
        names = [p for p in Path(directory).iterdir() if RUN_FILE.fullmatch(p.name)]
    except FileNotFoundError:
        names = []
    except OSError as exc:
        return {"configured": True, "directory": directory, "error": exc.strerror, "data": []}
    names.sort(key=lambda p: RUN_FILE.fullmatch(p.name).group(2) + p.name, reverse=True)  # type: ignore[union-attr]
    for path in names[:limit]:
        provider, day = RUN_FILE.fullmatch(path.name).groups()  # type: ignore[union-attr]
        try:
            doc = orjson.loads(path.read_bytes())
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            found.append(summary(doc))
        except (OSError, ValueError) as exc:
            found.append({"provider": provider, "day": day, "error": f"cannot read {path.name}: {exc}"})
    return {"configured": True, "directory": directory, "data": found}
