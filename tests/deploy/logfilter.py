"""A small evaluator for the part of the Cloud Logging query language our files use.

It lets the tests run each LogMetric's ``filter``, ``valueExtractor`` and
``labelExtractors`` (and the log sink's filter) against LogEntries built the way Cloud Run
builds them from the gateway's stdout lines, instead of only checking that the files parse.

Supported, following the Logging query language reference
(cloud.google.com/logging/docs/view/logging-query-language):

* comparisons ``FIELD OP VALUE`` with ``=``, ``!=``, ``>``, ``>=``, ``<``, ``<=``, ``:`` (has,
  substring for strings; ``FIELD:*`` tests presence), ``=~`` / ``!~`` (RE2-like regexes via
  ``re``);
* field paths such as ``jsonPayload.total_tokens``, ``resource.labels.service_name``,
  ``labels."logging.googleapis.com/x"`` (quoted segments), ``logName``, ``severity``;
* values: double-quoted strings (with backslash escapes), numbers, bare words
  (``true``/``false`` for booleans, ``ERROR`` for severities ...);
* ``NOT`` (or ``-``), ``AND``, ``OR``, parentheses, and juxtaposition as an implicit ``AND``.
  Precedence as documented: NOT binds tightest, then **OR, then AND** (unlike most languages:
  ``a OR NOT b AND NOT c OR d`` means ``(a OR (NOT b)) AND ((NOT c) OR d)``);
* string comparisons are case-insensitive ("String comparisons aren't case sensitive");
* a comparison on a missing field is false, so ``NOT field=value`` matches entries without it;
* ``EXTRACT(path)`` and ``REGEXP_EXTRACT(path, "re")`` for value and label extractors.

Global restrictions (a bare value with no field), SEARCH(), timestamps and the other
functions are not supported and raise LogFilterError, so a filter that relies on them
cannot pass a test by accident.

LogEntries as Cloud Run builds them, and what a LogMetric records for them, are in
cloud_run_logs.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LogFilterError", "MISSING", "compile_filter", "matches", "extract", "extract_value", "extract_label",
]


class LogFilterError(ValueError):
    """The filter uses syntax this evaluator does not support, or is malformed."""


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()

_SEVERITIES = ["DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY"]
_NUMBER_RE = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORD_RE = re.compile(r"[^\s()\"=!<>:]+")
_OPS = ("!=", ">=", "<=", "=~", "!~", "=", ">", "<", ":")


# ----------------------------------------------------------------------------- values

@dataclass(frozen=True)
class Literal:
    text: str
    quoted: bool

    def as_number(self) -> float | None:
        if _NUMBER_RE.fullmatch(self.text):
            return float(self.text)
        return None


def _resolve(entry: Any, path: tuple[str, ...]) -> Any:
    node = entry
    for segment in path:
        if isinstance(node, dict) and segment in node:
            node = node[segment]
        else:
            return MISSING
    return node


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and _NUMBER_RE.fullmatch(value.strip()):
        return float(value)
    return None


def _equal(value: Any, lit: Literal, path: tuple[str, ...]) -> bool:
    if value is MISSING or value is None:
        return False
    if isinstance(value, bool):
        return lit.text.lower() == ("true" if value else "false")
    if isinstance(value, (int, float)):
        n = lit.as_number()
        return n is not None and float(value) == n
    if isinstance(value, str):
        return value.casefold() == lit.text.casefold()
    return False  # objects and lists are never equal to a scalar


def _order(value: Any, lit: Literal, path: tuple[str, ...]) -> int | None:
    """-1/0/1 comparing value with the literal, None when they cannot be ordered."""
    if value is MISSING or value is None or isinstance(value, (bool, dict, list)):
        return None
    if path == ("severity",):
        a, b = str(value).upper(), lit.text.upper()
        if a in _SEVERITIES and b in _SEVERITIES:
            ia, ib = _SEVERITIES.index(a), _SEVERITIES.index(b)
            return (ia > ib) - (ia < ib)
    left, right = _number(value), lit.as_number()
    if left is not None and right is not None:
        return (left > right) - (left < right)
    if isinstance(value, str):
        a, b = value.casefold(), lit.text.casefold()
        return (a > b) - (a < b)
    return None


def _has(value: Any, lit: Literal) -> bool:
    if value is MISSING:
        return False
    if lit.text == "*" and not lit.quoted:
        return True
    if isinstance(value, dict):
        return any(_has(v, lit) for v in value.values())
    if isinstance(value, list):
        return any(_has(v, lit) for v in value)
    if isinstance(value, bool):
        return lit.text.lower() == ("true" if value else "false")
    if isinstance(value, (int, float)):
        n = lit.as_number()
        return n is not None and float(value) == n
    if value is None:
        return False
    return lit.text.casefold() in str(value).casefold()


def _compare(op: str, value: Any, lit: Literal, path: tuple[str, ...]) -> bool:
    if op == "=":
        return _equal(value, lit, path)
    if op == "!=":
        # only entries that have the field and a different value
        return value is not MISSING and value is not None and not _equal(value, lit, path)
    if op == ":":
        return _has(value, lit)
    if op in ("=~", "!~"):
        if value is MISSING or value is None:
            return False
        found = re.search(lit.text, _to_text(value)) is not None
        return found if op == "=~" else not found
    order = _order(value, lit, path)
    if order is None:
        return False
    return {">": order > 0, ">=": order >= 0, "<": order < 0, "<=": order <= 0}[op]


def _to_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


# ----------------------------------------------------------------------------- parser

Predicate = Callable[[dict], bool]


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    # -- lexical helpers
    def error(self, message: str) -> LogFilterError:
        return LogFilterError(f"{message} at offset {self.pos}: {self.text[self.pos:self.pos + 30]!r}")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def at_end(self) -> bool:
        self.skip_ws()
        return self.pos >= len(self.text)

    def peek_keyword(self, word: str) -> bool:
        self.skip_ws()
        end = self.pos + len(word)
        if self.text[self.pos:end] != word:
            return False
        return end == len(self.text) or not (self.text[end].isalnum() or self.text[end] in "_.")

    def take_keyword(self, word: str) -> bool:
        if self.peek_keyword(word):
            self.pos += len(word)
            return True
        return False

    def take(self, literal: str) -> bool:
        self.skip_ws()
        if self.text.startswith(literal, self.pos):
            self.pos += len(literal)
            return True
        return False

    def string(self) -> str:
        assert self.text[self.pos] == '"'
        self.pos += 1
        out = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "\\" and self.pos + 1 < len(self.text):
                nxt = self.text[self.pos + 1]
                out.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
                self.pos += 2
                continue
            if ch == '"':
                self.pos += 1
                return "".join(out)
            out.append(ch)
            self.pos += 1
        raise self.error("unterminated string")

    def path(self) -> tuple[str, ...]:
        self.skip_ws()
        segments = []
        while True:
            if self.pos < len(self.text) and self.text[self.pos] == '"':
                segments.append(self.string())
            else:
                m = _IDENT_RE.match(self.text, self.pos)
                if not m:
                    raise self.error("expected a field name")
                segments.append(m.group(0))
                self.pos = m.end()
            if self.pos < len(self.text) and self.text[self.pos] == ".":
                self.pos += 1
                continue
            return tuple(segments)

    def literal(self) -> Literal:
        self.skip_ws()
        if self.pos >= len(self.text):
            raise self.error("expected a value")
        if self.text[self.pos] == '"':
            return Literal(self.string(), True)
        m = _WORD_RE.match(self.text, self.pos)
        if not m:
            raise self.error("expected a value")
        self.pos = m.end()
        return Literal(m.group(0), False)

    # -- grammar: AND is the loosest, then OR, then NOT
    def parse(self) -> Predicate:
        pred = self.and_expr()
        if not self.at_end():
            raise self.error("unexpected text")
        return pred

    def and_expr(self) -> Predicate:
        parts = [self.or_expr()]
        while True:
            if self.take_keyword("AND"):
                parts.append(self.or_expr())
            elif not self.at_end() and not self.text.startswith(")", self.pos):
                parts.append(self.or_expr())  # juxtaposition is an implicit AND
            else:
                break
        return parts[0] if len(parts) == 1 else (lambda e, ps=tuple(parts): all(p(e) for p in ps))

    def or_expr(self) -> Predicate:
        parts = [self.not_expr()]
        while self.take_keyword("OR"):
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else (lambda e, ps=tuple(parts): any(p(e) for p in ps))

    def not_expr(self) -> Predicate:
        if self.take_keyword("NOT") or self.take("-"):
            inner = self.not_expr()
            return lambda e: not inner(e)
        return self.primary()

    def primary(self) -> Predicate:
        if self.take("("):
            inner = self.and_expr()
            if not self.take(")"):
                raise self.error("expected )")
            return inner
        self.skip_ws()
        if self.pos < len(self.text) and self.text[self.pos] == '"':
            raise self.error("global restrictions (a value without a field) are not supported")
        start = self.pos
        path = self.path()
        self.skip_ws()
        if self.text.startswith("(", self.pos):
            self.pos = start
            raise self.error("functions are not supported in filters")
        for op in _OPS:
            if self.text.startswith(op, self.pos):
                self.pos += len(op)
                break
        else:
            self.pos = start
            raise self.error("global restrictions (a value without a field) are not supported")
        self.skip_ws()
        if self.take("("):  # FIELD = ("a" OR "b")
            options = [self.literal()]
            while self.take_keyword("OR"):
                options.append(self.literal())
            if not self.take(")"):
                raise self.error("expected ) after the value list")
            return lambda e, p=path, o=op, ls=tuple(options): any(_compare(o, _resolve(e, p), lit, p) for lit in ls)
        lit = self.literal()
        return lambda e, p=path, o=op, lit=lit: _compare(o, _resolve(e, p), lit, p)


def compile_filter(text: str) -> Predicate:
    """Compile a Logging query into a predicate over a LogEntry (a dict in the API's JSON shape)."""
    if not text or not text.strip():
        return lambda e: True
    return _Parser(text).parse()


def matches(text: str, entry: dict) -> bool:
    return compile_filter(text)(entry)


# ----------------------------------------------------------------------------- extractors

_EXTRACT_RE = re.compile(r'^\s*EXTRACT\(\s*(?P<path>[^,()]+?)\s*\)\s*$')
_REGEXP_RE = re.compile(r'^\s*REGEXP_EXTRACT\(\s*(?P<path>[^,()]+?)\s*,\s*"(?P<re>(?:[^"\\]|\\.)*)"\s*\)\s*$')


def _parse_path(text: str) -> tuple[str, ...]:
    parser = _Parser(text.strip())
    path = parser.path()
    if not parser.at_end():
        raise LogFilterError(f"bad field path {text!r}")
    return path


def extract(expression: str, entry: dict) -> Any:
    """Evaluate EXTRACT(path) or REGEXP_EXTRACT(path, "re"); MISSING when nothing is found."""
    m = _EXTRACT_RE.match(expression)
    if m:
        return _resolve(entry, _parse_path(m.group("path")))
    m = _REGEXP_RE.match(expression)
    if m:
        value = _resolve(entry, _parse_path(m.group("path")))
        if value is MISSING or value is None:
            return MISSING
        regex = re.compile(m.group("re").encode().decode("unicode_escape"))
        if regex.groups != 1:
            raise LogFilterError("REGEXP_EXTRACT needs exactly one capture group")
        found = regex.search(_to_text(value))
        return found.group(1) if found else MISSING
    raise LogFilterError(f"unsupported extractor {expression!r}: only EXTRACT() and REGEXP_EXTRACT()")


def extract_value(expression: str, entry: dict) -> float | None:
    """A distribution metric's value: a number, or None when the entry yields none."""
    value = extract(expression, entry)
    if value is MISSING or value is None:
        return None
    return _number(value)


def extract_label(expression: str, entry: dict) -> str:
    """A label value: the extracted field as text, "" when it is missing."""
    value = extract(expression, entry)
    if value is MISSING or value is None:
        return ""
    return _to_text(value)
