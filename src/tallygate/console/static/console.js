// The tallygate console: one script for every page. It renders the JSON of /ui/api/...
// with DOM nodes and textContent only: tenant ids, key names and model names come from
// clients, so no markup is ever built from data. The key used to sign in goes to the
// server once and is never kept: the session is an HttpOnly cookie, and changes carry the
// session's CSRF token in the X-CSRF-Token header.

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const charts = [];
let session = null;

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// -- DOM -------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "on") for (const [event, fn] of Object.entries(value)) node.addEventListener(event, fn);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// the page's content (null parts left out: replaceChildren would show them as "null")
function show(...parts) {
  main.replaceChildren(...parts.filter((part) => part !== null && part !== undefined));
}

// links are built from fixed paths and encoded ids only
const tenantHref = (id) => "/ui/tenants/" + encodeURIComponent(id);
const requestHref = (id) => "/ui/requests/" + encodeURIComponent(id);

// -- numbers for people (exact: amounts stay decimal text, never floats) -------------

const intFormat = new Intl.NumberFormat("en-US");
const int = (n) => (n === null || n === undefined ? "–" : intFormat.format(n));

function usd(text) {
  if (text === null || text === undefined) return "–";
  let [whole, frac = ""] = String(text).split(".");
  const negative = whole.startsWith("-");
  if (negative) whole = whole.slice(1);
  whole = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return (negative ? "-$" : "$") + whole + "." + frac.padEnd(2, "0");
}

function when(iso) {
  if (!iso) return "–";
  return iso.replace("T", " ").replace(/\.\d+Z$/, "Z").replace(/Z$/, " UTC");
}

function change(now, before) {
  // the relative change of two decimal strings, for a hint only (floats are fine here)
  const a = Number(now), b = Number(before);
  if (!b) return a ? "new this period" : "no change";
  const pct = ((a - b) / b) * 100;
  return (pct >= 0 ? "+" : "") + pct.toFixed(1) + "% against the previous period";
}

// -- the API ------------------------------------------------------------------------

async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = session ? session.csrf_token : "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  const doc = await response.json().catch(() => null);
  if (!response.ok) {
    const message = doc && doc.error ? doc.error.message : response.statusText;
    throw new ApiError(response.status, message);
  }
  return doc;
}

// -- tables, figures and charts -------------------------------------------------------

// columns: [name, heading, format(row) -> text or Node, numeric?]
function table(id, columns, rows, footer, empty = "Nothing in this period.") {
  const head = el("tr", {}, columns.map(([name, heading, , numeric]) => el("th", { scope: "col", class: numeric ? "num" : null, "data-col": name }, heading)));
  const body = rows.map((row) =>
    el("tr", {}, columns.map(([name, , format, numeric]) => el("td", { class: numeric ? "num" : null, "data-col": name }, format(row)))),
  );
  const foot = footer
    ? el("tfoot", {}, el("tr", {}, columns.map(([name, , format, numeric], i) =>
        el("td", { class: numeric ? "num" : null, "data-col": name }, i === 0 ? "Total" : footer[name] === undefined ? "" : format(footer)))))
    : null;
  const content = rows.length ? [el("thead", {}, head), el("tbody", {}, body), foot] : [el("thead", {}, head), el("tbody", {}, el("tr", {}, el("td", { colspan: columns.length, class: "muted" }, empty)))];
  return el("div", { class: "table-wrap" }, el("table", { id }, content));
}

const USAGE_COLUMNS = [
  ["requests", "Requests", (r) => int(r.requests), true],
  ["prompt_tokens", "Prompt tokens", (r) => int(r.prompt_tokens), true],
  ["completion_tokens", "Completion tokens", (r) => int(r.completion_tokens), true],
  ["total_tokens", "Total tokens", (r) => int(r.total_tokens), true],
  ["cost_usd", "Cost", (r) => usd(r.cost_usd), true],
];

function figure(label, value, hint, id) {
  return el("div", { class: "figure", id }, el("div", { class: "figure-label" }, label), el("div", { class: "figure-value" }, value), hint ? el("div", { class: "figure-hint muted" }, hint) : null);
}

function chartWidth(box) {
  return Math.max(260, box.clientWidth - 8);
}

// whole-number steps for counts (no "0.5 requests" ticks)
const WHOLE_STEPS = [1, 2, 5].flatMap((m) => [1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9].map((p) => m * p)).sort((a, b) => a - b);

// the box first (so the layout has every chart's place), then the plot in it
function chartBox(id, ys) {
  return el("div", { class: "chart", id, "data-points": ys.length, "data-sum": ys.reduce((a, b) => a + b, 0) });
}

function chart(box, title, xs, ys, format, color, whole) {
  if (typeof uPlot !== "function") {
    box.append(el("p", { class: "error" }, "The charting library did not load."));
    return;
  }
  const opts = {
    title,
    width: chartWidth(box),
    height: 200,
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
    series: [
      { label: "UTC" },
      { label: title, stroke: color, fill: color + "22", width: 2, points: { show: ys.length < 60 }, value: (u, v) => (v === null ? "–" : format(v)) },
    ],
    axes: [{}, { size: 80, incrs: whole ? WHOLE_STEPS : undefined, values: (u, values) => values.map(format) }],
  };
  charts.push([new uPlot(opts, [xs, ys], box), box]);
}

window.addEventListener("resize", () => {
  for (const [plot, box] of charts) plot.setSize({ width: chartWidth(box), height: 200 });
});

// -- pages ----------------------------------------------------------------------------

function heading(text, ...rest) {
  document.title = text + " · tallygate console";
  return el("div", { class: "page-head" }, el("h1", {}, text), ...rest);
}

function rangePicker(current, ranges, base) {
  return el("div", { class: "ranges", role: "group", "aria-label": "Time range" },
    ranges.map((r) => el("a", { href: base + "?range=" + encodeURIComponent(r), class: r === current ? "range current" : "range", "aria-current": r === current ? "page" : null }, r)));
}

async function overviewPage(params) {
  const range = params.get("range") || "24h";
  const doc = await api("/ui/api/overview?range=" + encodeURIComponent(range));
  const t = doc.totals;
  const h = doc.health;
  const xs = doc.series.map((p) => p.t);
  const out = [
    heading(session.role === "admin" ? "Overview" : "Overview: " + session.tenant_id, rangePicker(doc.range, doc.ranges, "/ui")),
    el("p", { class: "muted", id: "range-span", "data-start": doc.start, "data-end": doc.end }, "From " + when(doc.start) + " to " + when(doc.end) + ", by " + doc.bucket + "."),
    el("section", { class: "figures" },
      figure("Cost", usd(t.cost_usd), change(t.cost_usd, doc.previous_totals.cost_usd), "total-cost"),
      figure("Tokens", int(t.total_tokens), change(t.total_tokens, doc.previous_totals.total_tokens), "total-tokens"),
      figure("Requests", int(t.requests), change(t.requests, doc.previous_totals.requests), "total-requests"),
      figure("Error rate", h.error_rate_percent + "%", int(h.errors) + " of " + int(h.requests) + " requests", "error-rate"),
      figure("p95 latency", h.p95_latency_ms === null ? "–" : h.p95_latency_ms + " ms", "nearest rank", "p95-latency")),
  ];
  const costs = doc.series.map((p) => Number(p.cost_usd));
  const tokens = doc.series.map((p) => p.total_tokens);
  const requests = doc.series.map((p) => p.requests);
  const boxes = [chartBox("chart-cost", costs), chartBox("chart-tokens", tokens), chartBox("chart-requests", requests)];
  const chartsBox = el("section", { class: "charts" }, boxes);
  out.push(chartsBox);
  out.push(el("h2", {}, session.role === "admin" ? "By tenant (highest cost first)" : "By tenant"));
  out.push(table("by-tenant", [["tenant_id", "Tenant", (r) => (r.tenant_id === undefined ? "" : el("a", { href: tenantHref(r.tenant_id) }, r.tenant_id))], ...USAGE_COLUMNS], doc.by_tenant, t));
  if (doc.by_tenant_count > doc.by_tenant.length) out.push(el("p", { class: "muted" }, "Showing " + doc.by_tenant.length + " of " + doc.by_tenant_count + " tenants; the totals count all."));
  out.push(el("h2", {}, "By model"));
  out.push(table("by-model", [["model", "Model", (r) => (r.model === undefined ? "" : r.model)], ...USAGE_COLUMNS], doc.by_model, t));
  main.replaceChildren(...out);
  // the axis shows as many decimals as the largest amount needs (the tables have the exact ones)
  const top = Math.max(...costs, 0);
  const places = top >= 1 ? 2 : top > 0 ? Math.min(8, 1 - Math.floor(Math.log10(top))) : 2;
  chart(boxes[0], "Cost (USD)", xs, costs, (v) => "$" + Number(v).toFixed(places), "#2563eb", false);
  chart(boxes[1], "Tokens", xs, tokens, (v) => intFormat.format(Math.round(v)), "#7c3aed", true);
  chart(boxes[2], "Requests", xs, requests, (v) => intFormat.format(Math.round(v)), "#059669", true);
}

function budgetCell(budget) {
  if (!budget) return "none";
  return el("span", { class: budget.exceeded ? "budget exceeded" : "budget" },
    el("progress", { max: 100, value: Math.min(100, Number(budget.used_percent || 0)) }),
    " " + usd(budget.spent_usd) + " of " + usd(budget.budget_usd) + " a " + budget.budget_period + (budget.used_percent === null ? "" : " (" + budget.used_percent + "%)"));
}

function creditText(credit) {
  if (!credit) return "not available";
  if (!credit.prepaid) return "not prepaid (billed after use)";
  const parts = ["balance " + usd(credit.balance_usd) + " of " + usd(credit.credited_usd) + " credited, " + usd(credit.spent_usd) + " spent"];
  if (credit.available_usd !== null) parts.push("available " + usd(credit.available_usd));
  return "prepaid since " + when(credit.prepaid_since) + ": " + parts.join("; ");
}

async function tenantsPage() {
  const doc = await api("/ui/api/tenants");
  main.replaceChildren(
    heading("Tenants"),
    el("p", { class: "muted" }, "Nearest their budget first; usage over the last 30 days."),
    table("tenants", [
      ["tenant_id", "Tenant", (r) => el("a", { href: tenantHref(r.tenant_id) }, r.tenant_id)],
      ["budget", "Budget", (r) => budgetCell(r.budget)],
      ["rpm", "RPM / TPM", (r) => (r.limits ? (r.limits.rpm_limit ?? "–") + " / " + (r.limits.tpm_limit ?? "–") : "–"), true],
      ["active_keys", "Active keys", (r) => int(r.active_keys), true],
      ["requests_30d", "Requests", (r) => int(r.requests_30d), true],
      ["cost_usd_30d", "Cost", (r) => usd(r.cost_usd_30d), true],
    ], doc.data, null, "No tenants yet."),
  );
}

function keyColumns(onChange) {
  const cols = [
    ["key_prefix", "Key", (k) => el("code", {}, k.key_prefix + "…")],
    ["key_id", "Id", (k) => k.key_id],
    ["tenant_id", "Tenant", (k) => el("a", { href: tenantHref(k.tenant_id) }, k.tenant_id)],
    ["name", "Name", (k) => k.name ?? ""],
    ["budget_usd", "Budget", (k) => (k.budget_usd === null ? "–" : usd(k.budget_usd) + " a " + k.budget_period)],
    ["created_at", "Created", (k) => when(k.created_at)],
    ["state", "State", (k) => (k.revoked ? "revoked " + when(k.revoked_at) : "active")],
  ];
  if (session.role === "admin") cols.push(["actions", "", (k) => (k.revoked ? "" : revokeButton(k, onChange))]);
  return cols;
}

function revokeButton(key, onChange) {
  const button = el("button", { type: "button", class: "danger", "data-key-id": key.key_id }, "Revoke");
  button.addEventListener("click", async () => {
    if (button.dataset.armed !== "1") {
      button.dataset.armed = "1";
      button.textContent = "Confirm revoke";
      return;
    }
    button.disabled = true;
    try {
      await api("/ui/api/keys/" + encodeURIComponent(key.key_id), { method: "DELETE" });
      await onChange();
    } catch (err) {
      button.replaceWith(el("span", { class: "error" }, err.message));
    }
  });
  return button;
}

function createKeyForm(tenant, onCreated) {
  const message = el("div", { id: "create-key-result", "aria-live": "polite" });
  const field = (label, input) => el("label", {}, el("span", {}, label), input);
  const tenantInput = el("input", { name: "tenant_id", required: true, value: tenant || "", autocomplete: "off", pattern: "[A-Za-z0-9._:@-]{1,128}" });
  const nameInput = el("input", { name: "name", maxlength: 200, autocomplete: "off" });
  const budgetInput = el("input", { name: "budget_usd", inputmode: "decimal", placeholder: "none", autocomplete: "off" });
  const period = el("select", { name: "budget_period" }, ["month", "day", "total"].map((p) => el("option", { value: p }, p)));
  const rpm = el("input", { name: "rpm_limit", inputmode: "numeric", placeholder: "none", autocomplete: "off" });
  const form = el("form", { id: "create-key", class: "card form" },
    el("h2", {}, "Create a key"),
    el("div", { class: "fields" }, field("Tenant", tenantInput), field("Name", nameInput), field("Budget (USD)", budgetInput), field("Budget period", period), field("Requests a minute", rpm)),
    el("button", { type: "submit" }, "Create key"),
    message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { tenant_id: tenantInput.value.trim(), budget_period: period.value };
    if (nameInput.value.trim()) body.name = nameInput.value.trim();
    if (budgetInput.value.trim()) body.budget_usd = budgetInput.value.trim();
    if (rpm.value.trim()) body.rpm_limit = Number(rpm.value.trim());
    try {
      const created = await api("/ui/api/keys", { method: "POST", body });
      const secret = el("code", { id: "new-key-secret" }, created.key);
      const copy = el("button", { type: "button", id: "copy-key" }, "Copy");
      copy.addEventListener("click", async () => {
        try {
          await navigator.clipboard.writeText(created.key);
          copy.textContent = "Copied";
        } catch {
          copy.textContent = "Select the key and copy it";
        }
      });
      message.replaceChildren(el("div", { class: "new-key" },
        el("p", {}, "Key " + created.key_id + " for tenant " + created.tenant_id + ". It is shown this once: copy it now."),
        el("div", { class: "secret" }, secret, copy)));
      nameInput.value = "";
      await onCreated();
    } catch (err) {
      message.replaceChildren(el("p", { class: "error" }, err.message));
    }
  });
  return form;
}

async function keysPage() {
  const list = el("div", { id: "keys-list" });
  const refresh = async () => {
    const doc = await api("/ui/api/keys");
    list.replaceChildren(table("keys", keyColumns(refresh), doc.data, null, "No keys."));
  };
  const parts = [heading("Keys")];
  if (session.role === "admin") parts.push(createKeyForm("", refresh));
  else parts.push(el("p", { class: "muted" }, "Your tenant's keys. Keys are created and revoked with the master key."));
  parts.push(list);
  main.replaceChildren(...parts);
  await refresh();
}

async function tenantPage(id) {
  const doc = await api("/ui/api/tenants/" + encodeURIComponent(id));
  const keys = el("div", { id: "tenant-keys" });
  const refresh = async () => {
    const fresh = await api("/ui/api/keys?tenant_id=" + encodeURIComponent(id));
    keys.replaceChildren(table("keys", keyColumns(refresh), fresh.data, null, "No keys."));
  };
  keys.append(table("keys", keyColumns(refresh), doc.keys, null, "No keys."));
  const lim = doc.limits;
  const u = doc.usage_30d;
  show(
    heading("Tenant " + doc.tenant_id),
    el("section", { class: "figures" },
      figure("Cost, 30 days", usd(u.cost_usd), null, "tenant-cost"),
      figure("Tokens, 30 days", int(u.total_tokens), null, "tenant-tokens"),
      figure("Requests, 30 days", int(u.requests), null, "tenant-requests")),
    el("section", { class: "card" },
      el("h2", {}, "Limits and budget"),
      el("dl", { class: "facts" },
        el("dt", {}, "Requests a minute"), el("dd", {}, lim && lim.rpm_limit !== null ? int(lim.rpm_limit) : "no limit"),
        el("dt", {}, "Tokens a minute"), el("dd", {}, lim && lim.tpm_limit !== null ? int(lim.tpm_limit) : "no limit"),
        el("dt", {}, "Models"), el("dd", {}, lim && lim.models ? lim.models.join(", ") : "any"),
        el("dt", {}, "Budget"), el("dd", { id: "tenant-budget" }, budgetCell(doc.budget)),
        el("dt", {}, "Credit"), el("dd", { id: "tenant-credit" }, creditText(doc.credit)))),
    el("h2", {}, "Usage by model, 30 days"),
    table("tenant-by-model", [["model", "Model", (r) => (r.model === undefined ? "" : r.model)], ...USAGE_COLUMNS], doc.by_model, u),
    el("h2", {}, "Usage by day and model"),
    table("tenant-by-day", [["day", "Day (UTC)", (r) => r.day ?? ""], ["model", "Model", (r) => r.model ?? ""], ...USAGE_COLUMNS], doc.by_day_model.slice().reverse()),
    el("h2", {}, "Keys"),
    session.role === "admin" ? createKeyForm(doc.tenant_id, refresh) : null,
    keys,
    el("p", {}, el("a", { href: "/ui/requests?tenant_id=" + encodeURIComponent(doc.tenant_id) }, "Recent requests of this tenant")),
  );
}

async function requestsPage(params) {
  const query = new URLSearchParams();
  for (const name of ["since", "until", "tenant_id", "model", "status", "limit"]) if (params.get(name)) query.set(name, params.get(name));
  const doc = await api("/ui/api/requests?" + query.toString());
  const since = params.get("since") || "24h";
  const input = (name, label, attrs = {}) => el("label", {}, el("span", {}, label), el("input", { name, value: params.get(name) || "", autocomplete: "off", ...attrs }));
  const form = el("form", { method: "get", action: "/ui/requests", class: "card form filters" },
    el("div", { class: "fields" },
      el("label", {}, el("span", {}, "Since"), el("select", { name: "since" }, ["1h", "24h", "7d", "30d", "90d"].map((s) => el("option", { value: s, selected: s === since }, s)))),
      input("until", "Until (ISO time, UTC)", { placeholder: "now" }),
      session.role === "admin" ? input("tenant_id", "Tenant") : null,
      input("model", "Model"),
      el("label", {}, el("span", {}, "Status"), el("select", { name: "status" }, el("option", { value: "" }, "any"), doc.statuses.map((s) => el("option", { value: s, selected: s === params.get("status") }, s)))),
      input("limit", "Rows", { inputmode: "numeric", placeholder: "100" })),
    el("button", { type: "submit" }, "Filter"));
  main.replaceChildren(
    heading("Requests"),
    form,
    table("requests", [
      ["created_at", "Time", (r) => el("a", { href: requestHref(r.request_id) }, when(r.created_at))],
      ["tenant_id", "Tenant", (r) => r.tenant_id],
      ["model", "Model", (r) => r.model],
      ["status", "Status", (r) => el("span", { class: r.status === "ok" ? "status ok" : "status bad" }, r.status + " " + r.status_code)],
      ["total_tokens", "Tokens", (r) => int(r.total_tokens), true],
      ["cost_usd", "Cost", (r) => usd(r.cost_usd), true],
      ["latency_ms", "Latency", (r) => Math.round(r.latency_ms) + " ms", true],
    ], doc.data, null, "No requests match."),
  );
}

async function requestPage(id) {
  const doc = await api("/ui/api/requests/" + encodeURIComponent(id));
  const rows = Object.entries(doc).flatMap(([name, value]) => [
    el("dt", {}, name),
    el("dd", { "data-field": name }, value === null ? "–" : name === "cost_usd" ? usd(value) + " (" + value + ")" : String(value)),
  ]);
  main.replaceChildren(heading("Request " + doc.request_id), el("dl", { class: "facts record", id: "request-record" }, rows),
    el("p", {}, el("a", { href: "/ui/requests?tenant_id=" + encodeURIComponent(doc.tenant_id) }, "Other requests of tenant " + doc.tenant_id)));
}

function measureText(m, money) {
  if (!m) return "–";
  const f = money ? usd : int;
  return f(m.ledger) + " / " + f(m.provider) + (m.percent === null ? "" : " (" + (m.percent.startsWith("-") ? "" : "+") + m.percent + "%)");
}

function reconciliationSection(doc) {
  const parts = [el("h2", {}, "Reconciliation")];
  if (!doc.configured) {
    parts.push(el("p", { class: "muted", id: "reconciliation-off" }, "Reconciliation runs are not kept: set TALLYGATE_RECONCILE_DIR for the gateway and for tallygate reconcile."));
    return parts;
  }
  if (doc.error) parts.push(el("p", { class: "error" }, "Cannot read " + doc.directory + ": " + doc.error));
  parts.push(el("p", { class: "muted" }, "The ledger against the provider's usage and cost reports (tallygate reconcile), newest day first: ledger / provider (difference)."));
  parts.push(table("reconciliation", [
    ["day", "Day (UTC)", (r) => r.day],
    ["provider", "Provider", (r) => r.provider],
    ["result", "Result", (r) => (r.error ? el("span", { class: "status bad" }, r.error) : el("span", { class: r.ok ? "status ok" : "status bad" }, r.ok ? "within " + r.tolerance_percent + "%" : r.over_count + " of " + r.groups + " over " + r.tolerance_percent + "%"))],
    ["over", "Over the tolerance", (r) => (r.over && r.over.length ? r.over.map((o) => o.key + " " + o.model).join(", ") : "")],
    ["requests", "Requests", (r) => measureText(r.totals && r.totals.requests, false), true],
    ["input_tokens", "Input tokens", (r) => measureText(r.totals && r.totals.input_tokens, false), true],
    ["cost_usd", "Cost", (r) => measureText(r.totals && r.totals.cost_usd, true), true],
    ["ran_at", "Ran at", (r) => when(r.ran_at)],
  ], doc.data, null, "No reconciliation has run yet."));
  return parts;
}

async function billingPage() {
  const admin = session.role === "admin";
  const [doc, runs] = await Promise.all([api("/ui/api/billing"), admin ? api("/ui/api/reconciliation") : null]);
  show(
    heading("Billing"),
    el("h2", {}, "Exports"),
    el("p", { class: "muted" }, admin
      ? "What each export (tallygate billing export) has sent and what waits in its outbox."
      : "What each export (tallygate billing export) has sent of your tenant's usage and what waits."),
    table("billing", [
      ["name", "Export", (e) => e.name],
      ["window_seconds", "Window", (e) => int(e.window_seconds) + " s", true],
      ["closed_before", "Closed before", (e) => when(e.closed_before)],
      ["scanned_to", "Scanned to", (e) => when(e.scanned_to)],
      ["sent", "Sent", (e) => int(e.outbox.sent), true],
      ["unsent", "Unsent", (e) => int(e.outbox.unsent), true],
      ["held", "Held (no Stripe customer)", (e) => int(e.outbox.held), true],
      ["refused", "Refused", (e) => int(e.outbox.refused), true],
      ["updated_at", "Updated", (e) => when(e.updated_at)],
    ], doc.data, null, "No billing export has run yet."),
    ...(runs ? reconciliationSection(runs) : []),
  );
}

// -- signing in and out -----------------------------------------------------------------

function signInPage(problem) {
  nav.replaceChildren();
  who.replaceChildren();
  const key = el("input", { id: "key", name: "key", type: "password", required: true, autocomplete: "off", spellcheck: "false" });
  const message = el("p", { id: "sign-in-error", class: "error", "aria-live": "polite" }, problem || "");
  const form = el("form", { id: "sign-in", class: "card form sign-in" },
    el("h1", {}, "Sign in"),
    el("p", { class: "muted" }, "With the master key (every tenant) or a tenant key (that tenant only). The key is not kept in this page: you get a session that ends after a while."),
    el("label", {}, el("span", {}, "Key"), key),
    el("button", { type: "submit" }, "Sign in"),
    message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = key.value;
    key.value = "";
    try {
      session = await api("/ui/api/session", { method: "POST", body: { key: value } });
      await route();
    } catch (err) {
      message.textContent = err.message;
    }
  });
  document.title = "Sign in · tallygate console";
  main.replaceChildren(form);
  key.focus();
}

async function signOut() {
  try {
    await api("/ui/api/session", { method: "DELETE" });
  } finally {
    session = null;
    signInPage("Signed out.");
  }
}

function chrome(path) {
  const links = [["/ui", "Overview"], ...(session.role === "admin" ? [["/ui/tenants", "Tenants"]] : [[tenantHref(session.tenant_id), "My tenant"]]), ["/ui/keys", "Keys"], ["/ui/requests", "Requests"], ["/ui/billing", "Billing"]];
  nav.replaceChildren(...links.map(([href, label]) => {
    const current = href === "/ui" ? path === "/ui" || path === "/ui/" : path.startsWith(href);
    return el("a", { href, class: current ? "current" : null, "aria-current": current ? "page" : null }, label);
  }));
  who.replaceChildren(
    el("span", { id: "signed-in-as" }, session.role === "admin" ? "master key" : "tenant " + session.tenant_id),
    el("button", { type: "button", id: "sign-out", on: { click: signOut } }, "Sign out"));
}

async function route() {
  const path = location.pathname;
  const params = new URLSearchParams(location.search);
  chrome(path);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent); // ["ui", page, id]
  const [, page, id] = parts;
  try {
    if (!page) await overviewPage(params);
    else if (page === "tenants" && id) await tenantPage(id);
    else if (page === "tenants") await tenantsPage();
    else if (page === "keys") await keysPage();
    else if (page === "requests" && id) await requestPage(id);
    else if (page === "requests") await requestsPage(params);
    else if (page === "billing" && !id) await billingPage();
    else main.replaceChildren(el("p", { class: "error" }, "No such page."));
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      session = null;
      signInPage(err.message);
      return;
    }
    main.replaceChildren(heading("Cannot show this page"), el("p", { class: "error", id: "page-error", "data-status": err.status || "" }, (err.status ? err.status + ": " : "") + err.message));
  }
  document.body.dataset.ready = "1";
}

async function start() {
  try {
    session = await api("/ui/api/session");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      signInPage();
      document.body.dataset.ready = "1";
      return;
    }
    main.replaceChildren(el("p", { class: "error" }, err.message));
    return;
  }
  await route();
}

start();
