"""JSON logging on stdout in the Cloud Logging format (every line has a severity).

Secrets known to the process are scrubbed from every line as a last line of
defence; the code never puts them in a message in the first place.
"""

from __future__ import annotations

import logging
import sys
import traceback
from datetime import UTC, datetime

import orjson

_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}


_iso_second: tuple = (None, "")


def utc_iso(ts: datetime) -> str:
    """RFC 3339 in UTC with microseconds; the part up to the second is cached (strftime
    costs more than the rest of the log line)."""
    global _iso_second
    if ts.tzinfo is not UTC:
        ts = ts.astimezone(UTC)
    second = (ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second)
    if _iso_second[0] != second:
        _iso_second = (second, ts.strftime("%Y-%m-%dT%H:%M:%S."))
    return f"{_iso_second[1]}{ts.microsecond:06d}Z"


# a secret shorter than this is not scrubbed: replacing a short string everywhere would
# mangle the lines themselves (field names, words) and still reveal it
MIN_SCRUBBED = 6


def scrub_forms(secrets) -> tuple[str, ...]:
    """Each secret as it would appear in a log line: as is, and JSON-escaped when that differs."""
    out = []
    for secret in secrets:
        if not secret or len(secret) < MIN_SCRUBBED:
            continue
        out.append(secret)
        escaped = orjson.dumps(secret).decode()[1:-1]
        if escaped != secret:
            out.append(escaped)
    out.sort(key=len, reverse=True)  # a secret that contains another goes first
    return tuple(dict.fromkeys(out))


class JsonFormatter(logging.Formatter):
    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = scrub_forms(secrets)

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry = {
            "severity": _SEVERITY.get(record.levelno, "DEFAULT"),
            "message": message,
            "time": utc_iso(datetime.fromtimestamp(record.created, UTC)),
            "logger": record.name,
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            # Error Reporting picks up stack traces found in `stack_trace`
            entry["stack_trace"] = "".join(traceback.format_exception(*record.exc_info))
        line = orjson.dumps(entry, default=str).decode()
        if "\u2028" in line or "\u2029" in line or "\x85" in line:  # line breaks to many readers
            line = line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085")
        for secret in self.secrets:
            if secret in line:
                line = line.replace(secret, "[redacted]")
        return line


def setup(secrets: tuple[str, ...] = (), level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "aiohttp"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True


def add_secrets(secrets) -> None:
    """More values for the formatter to scrub (the routes' upstream keys, known once the
    routes file is read)."""
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        if isinstance(formatter, JsonFormatter):
            formatter.secrets = scrub_forms((*formatter.secrets, *secrets))


def uvicorn_log_config() -> dict:
    """Keep uvicorn from installing its own text handlers; ours is on the root logger."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {"uvicorn": {"level": "INFO"}, "uvicorn.access": {"level": "WARNING"}},
    }
