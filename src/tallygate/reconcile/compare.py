"""Ledger against provider: differences per measure, the tolerance, the table, the JSON.

A difference is over the tolerance when its size passes both the measure's absolute
floor and the relative tolerance of the provider's figure (`--tolerance 1%`): with a
provider figure of 0 any difference above the floor is over. Percentages are the
difference over the provider's figure, rounded half-even to two decimals (display only:
the decision uses the exact values). Groups no mapped key accounts for ("outside:...")
are listed but do not fail the run: that usage did not go through the gateway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

from ..money import usd_text
from .figures import USAGE_MEASURES, Figures, LedgerFigures
from .keymap import ALL, OUTSIDE, KeyMap
from .providers import ProviderReport

HUNDREDTH = Decimal("0.01")


class ToleranceError(ValueError):
    pass


def parse_tolerance(text: str) -> Decimal:
    """'1%', '0.5%' or '1' (percent) -> the fraction 0.01, 0.005, 0.01."""
    raw = text.strip().removesuffix("%").strip()
    try:
        value = Decimal(raw)
    except ArithmeticError:
        raise ToleranceError(f"not a tolerance: {text!r} (use a percentage such as 1%)") from None
    if not value.is_finite() or value < 0:
        raise ToleranceError(f"not a tolerance: {text!r} (use a percentage such as 1%)")
    return value / 100


@dataclass(frozen=True)
class Limits:
    tolerance: Decimal = Decimal("0.01")
    floor_requests: int = 0
    floor_tokens: int = 0
    floor_usd: Decimal = Decimal("0.01")

    def floor(self, measure: str) -> Decimal:
        if measure == "requests":
            return Decimal(self.floor_requests)
        if measure == "cost_usd":
            return self.floor_usd
        return Decimal(self.floor_tokens)


@dataclass
class Measure:
    name: str
    ledger: Decimal
    provider: Decimal
    over: bool

    @property
    def difference(self) -> Decimal:
        return self.ledger - self.provider

    @property
    def percent(self) -> Decimal | None:
        if not self.provider:
            return None if self.difference else Decimal("0.00")
        return (self.difference * 100 / self.provider).quantize(HUNDREDTH, ROUND_HALF_EVEN)

    def text(self, value: Decimal) -> str:
        return usd_text(value) if self.name == "cost_usd" else str(int(value))

    def as_json(self) -> dict:
        percent = self.percent
        return {
            "ledger": self.text(self.ledger) if self.name == "cost_usd" else int(self.ledger),
            "provider": self.text(self.provider) if self.name == "cost_usd" else int(self.provider),
            "difference": self.text(self.difference) if self.name == "cost_usd" else int(self.difference),
            "percent": None if percent is None else format(percent, "f"),
            "over_tolerance": self.over,
        }


@dataclass
class Row:
    kind: str  # usage (per key and model) | cost (per cost scope: OpenAI project, Anthropic workspace)
    key: str
    model: str
    tenant: str | None
    measures: list[Measure]
    outside: bool = False  # a provider group no mapped key accounts for
    notes: list[str] = field(default_factory=list)
    ledger: LedgerFigures | None = None

    @property
    def over(self) -> bool:
        return not self.outside and any(m.over for m in self.measures)


def _measure(name: str, ledger: Decimal, provider: Decimal, limits: Limits) -> Measure:
    diff = abs(ledger - provider)
    over = diff > limits.floor(name) and diff > limits.tolerance * abs(provider)
    return Measure(name, ledger, provider, over)


def compare(
    ledger: dict[tuple[str, str], LedgerFigures],
    provider: ProviderReport,
    keymap: KeyMap,
    limits: Limits,
    costs_by_key: bool = False,
) -> list[Row]:
    """`costs_by_key`: the provider's dollars are per key (OpenAI's Costs API grouped by
    api_key_id), not per project or workspace."""
    rows: list[Row] = []
    for key, model in sorted(set(ledger) | set(provider.usage)):
        lf = ledger.get((key, model)) or LedgerFigures()
        pf = provider.usage.get((key, model)) or Figures(requests=0 if provider.counts_requests else None)
        measures = []
        for name in USAGE_MEASURES:
            p = getattr(pf, name)
            if p is None:  # not reported by this provider: nothing to compare
                continue
            measures.append(_measure(name, Decimal(getattr(lf, name) or 0), Decimal(p), limits))
        row = Row("usage", key, model, keymap.tenant_of(key), measures, key.startswith(OUTSIDE), ledger=lf)
        if lf.timeouts:
            row.notes.append(f"{lf.timeouts} request(s) timed out at the gateway: the provider may bill more")
        if lf.excluded:
            row.notes.append(f"{lf.excluded} ledger row(s) not counted (never reached the provider or refused by it)")
        if row.tenant is not None and set(lf.tenants) - {row.tenant}:
            others = ", ".join(sorted(set(lf.tenants) - {row.tenant}))
            row.notes.append(f"key mapped to tenant {row.tenant!r} also carried requests of: {others}")
        if key.startswith("route:"):
            row.notes.append(f"no [[keys]] entry lists the gateway {key}")
        rows.append(row)
    # cost: the ledger's dollars summed to the provider's cost grain
    ledger_cost: dict[str, Decimal] = {}
    for (key, _model), lf in ledger.items():
        scope = key if costs_by_key else keymap.scope_of_key(key)
        ledger_cost[scope] = ledger_cost.get(scope, Decimal(0)) + (lf.cost_usd or Decimal(0))
    for scope in sorted(set(ledger_cost) | set(provider.costs)):
        measure = _measure(
            "cost_usd", ledger_cost.get(scope, Decimal(0)), provider.costs.get(scope, Decimal(0)), limits
        )
        if costs_by_key:
            tenant = keymap.tenant_of(scope)
        else:
            tenants = {k.tenant for k in keymap.keys if k.cost_scope == scope}
            tenant = tenants.pop() if len(tenants) == 1 else None
        row = Row("cost", scope, ALL, tenant, [measure], scope.startswith(OUTSIDE))
        if keymap.mapped and scope == ALL and not costs_by_key:
            # mapped keys without a project or workspace: the provider's dollars cannot be assigned to them
            measure.over = False
            row.notes.append("keys without a project_id / workspace_id: their dollars are not compared")
        rows.append(row)
    return rows


def totals(rows: list[Row]) -> dict[str, dict]:
    """Sums over the usage rows (outside groups left out) and the cost rows, per measure."""
    out: dict[str, list[Decimal]] = {}
    for row in rows:
        if row.outside:
            continue
        for m in row.measures:
            pair = out.setdefault(m.name, [Decimal(0), Decimal(0)])
            pair[0] += m.ledger
            pair[1] += m.provider
    result = {}
    for name, (ledger, provider) in out.items():
        result[name] = Measure(name, ledger, provider, False).as_json()
        del result[name]["over_tolerance"]
    return result


def as_json(provider_name: str, day: str, rows: list[Row], limits: Limits, report: ProviderReport) -> dict:
    return {
        "provider": provider_name,
        "day": day,
        "ok": not any(r.over for r in rows),
        "tolerance_percent": format(limits.tolerance * 100, "f"),
        "floors": {
            "requests": limits.floor_requests,
            "tokens": limits.floor_tokens,
            "cost_usd": usd_text(limits.floor_usd),
        },
        "rows": [
            {
                "kind": r.kind,
                "key": r.key,
                "model": r.model,
                "tenant": r.tenant,
                "outside_gateway": r.outside,
                "over_tolerance": r.over,
                "measures": {m.name: m.as_json() for m in r.measures},
                "ledger_timeouts": r.ledger.timeouts if r.ledger else 0,
                "ledger_excluded_rows": r.ledger.excluded if r.ledger else 0,
                "ledger_cost_usd": usd_text(r.ledger.cost_usd or Decimal(0)) if r.ledger else None,
                "notes": r.notes,
            }
            for r in rows
        ],
        "totals": totals(rows),
        "provider_calls": report.calls,
        "provider_retries": report.retries,
    }


LABELS = {
    "requests": "requests",
    "input_tokens": "input",
    "cached_tokens": "cached",
    "output_tokens": "output",
    "cost_usd": "USD",
}


def format_table(rows: list[Row]) -> str:
    if not rows:
        return "nothing in the ledger or the provider's report for this day"
    header = ["key", "model", "tenant", "measure", "ledger", "provider", "difference", "diff %", ""]
    cells: list[list[str]] = []
    notes: dict[int, list[str]] = {}  # printed under the group's last line
    for row in rows:
        for i, m in enumerate(row.measures):
            percent = m.percent
            flag = "OVER" if (m.over and not row.outside) else ("outside gateway" if row.outside and i == 0 else "")
            cells.append(
                [
                    row.key if i == 0 else "",
                    row.model if i == 0 else "",
                    (row.tenant or "") if i == 0 else "",
                    LABELS[m.name],
                    m.text(m.ledger),
                    m.text(m.provider),
                    ("+" if m.difference > 0 else "") + m.text(m.difference),
                    "n/a" if percent is None else ("+" if percent > 0 else "") + format(percent, "f") + "%",
                    flag,
                ]
            )
        if row.kind == "usage" and row.ledger is not None and row.ledger.cost_usd:
            # the providers price per project or workspace only: compared on the cost lines
            cells.append(["", "", "", "USD", usd_text(row.ledger.cost_usd), "(cost line)", "", "", ""])
        notes[len(cells)] = row.notes
    widths = [max(len(header[i]), *(len(c[i]) for c in cells)) for i in range(len(header) - 1)]
    right = {4, 5, 6, 7}

    def line(values: list[str]) -> str:
        parts = [v.rjust(widths[i]) if i in right else v.ljust(widths[i]) for i, v in enumerate(values[:-1])]
        return ("  ".join(parts) + "  " + values[-1]).rstrip()

    out = [line(header), line(["-" * w for w in widths] + [""])]
    for i, c in enumerate(cells, 1):
        out.append(line(c))
        out += [f"    note: {note}" for note in notes.get(i, ())]
    return "\n".join(out)
