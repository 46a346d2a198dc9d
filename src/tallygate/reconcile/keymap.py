"""Which provider keys the gateway sends with, the routes that use them, their tenants.

The ledger knows a request's route (its model resolves to one, as the gateway resolved
it) but not the provider's id for the route's key; the provider's reports know key ids,
OpenAI projects and Anthropic workspaces but not routes or tenants. A small TOML file
(`--keys FILE`) joins them:

    [[keys]]
    name = "acme"                 # the label in the report (default: the key id)
    api_key_id = "key_abc123"     # OpenAI: key_...; Anthropic: apikey_...
    project_id = "proj_abc"       # OpenAI: the key's project (the Costs API's grain)
    workspace_id = "wrkspc_01"    # Anthropic: the key's workspace ("default" for the default one)
    routes = ["acme-*"]           # gateway routes sending with this key (TALLYGATE_CONFIG
                                  # model names; "default" is OPENAI_API_KEY's route)
    tenant = "acme"               # optional: the one tenant this key serves

Without the file every provider key and every route form one group, "*".
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

from ..upstream import Route, Router

ALL = "*"
OUTSIDE = "outside:"  # prefix of provider groups no mapped key accounts for


class KeyMapError(ValueError):
    pass


@dataclass(frozen=True)
class UpstreamKey:
    name: str
    api_key_id: str | None = None
    project_id: str | None = None
    workspace_id: str | None = None
    routes: tuple[str, ...] = ()
    tenant: str | None = None

    @property
    def cost_scope(self) -> str:
        """The grain of the provider's cost report this key's spend lands in."""
        return self.project_id or self.workspace_id or ALL


class KeyMap:
    def __init__(self, keys: list[UpstreamKey], router: Router) -> None:
        self.keys = keys
        self.router = router
        self.mapped = bool(keys)
        self._by_route = {route: k for k in keys for route in k.routes}
        self._by_key_id = {k.api_key_id: k for k in keys if k.api_key_id}
        # a key named by its project or workspace alone stands for all of that scope's keys
        self._by_scope = {
            (k.project_id or k.workspace_id): k for k in keys if not k.api_key_id and (k.project_id or k.workspace_id)
        }

    def tenant_of(self, name: str) -> str | None:
        for k in self.keys:
            if k.name == name:
                return k.tenant
        return None

    def for_route(self, model: str) -> str:
        """The key (its name) that sent a ledger row, from the row's model."""
        if not self.mapped:
            return ALL
        route = self.router.resolve(model).name
        key = self._by_route.get(route)
        return key.name if key is not None else f"route:{route}"

    def for_provider(self, api_key_id: str | None, scope_id: str | None) -> str:
        """The key (its name) a provider result belongs to; OUTSIDE... when none does."""
        if not self.mapped:
            return ALL
        key = self._by_key_id.get(api_key_id) if api_key_id else None
        if key is None:
            key = self._by_scope.get(scope_id or "default")
        if key is None:
            return OUTSIDE + (api_key_id or scope_id or "unknown")
        return key.name

    def scope_of_key(self, name: str) -> str:
        if not self.mapped:
            return ALL
        for k in self.keys:
            if k.name == name:
                return k.cost_scope
        return name  # a route no entry lists: its dollars are compared against nothing

    def scope_for_provider(self, scope_id: str | None) -> str:
        if not self.mapped:
            return ALL
        scope = scope_id or "default"
        if any(k.cost_scope == scope for k in self.keys):
            return scope
        return OUTSIDE + scope


def _router(routes_file: str | None) -> Router:
    """The gateway's route patterns (TALLYGATE_CONFIG's [[routes]] model names), for
    resolving a ledger row's model the way the gateway did; keys and URLs are not read."""
    default = Route("default", "", "openai")
    exact: dict[str, Route] = {}
    prefixes: list[tuple[str, Route]] = []
    if routes_file:
        doc = _load(routes_file, "routes")
        for entry in doc.get("routes", []):
            model = entry.get("model") if isinstance(entry, dict) else None
            if not isinstance(model, str) or not model:
                raise KeyMapError(f"{routes_file}: each [[routes]] table needs a model name")
            route = Route(model, "", str(entry.get("provider", "openai")))
            if model.endswith("*"):
                prefixes.append((model[:-1], route))
            else:
                exact[model] = route
    return Router(default, exact, prefixes)


def _load(path: str, what: str) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise KeyMapError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise KeyMapError(f"the {what} file {path} is not valid TOML: {exc}") from None


def _text(entry: dict, name: str, where: str) -> str | None:
    value = entry.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise KeyMapError(f"{where}: {name} must be a non-empty string")
    return value


def load_keymap(keys_file: str | None, routes_file: str | None) -> KeyMap:
    router = _router(routes_file)
    if not keys_file:
        return KeyMap([], router)
    doc = _load(keys_file, "keys")
    entries = doc.get("keys")
    if not isinstance(entries, list) or not entries:
        raise KeyMapError(f"{keys_file}: no [[keys]] tables")
    keys: list[UpstreamKey] = []
    names: set[str] = set()
    routes_seen: dict[str, str] = {}
    for i, entry in enumerate(entries):
        where = f"{keys_file}: keys[{i}]"
        if not isinstance(entry, dict):
            raise KeyMapError(f"{where} must be a table")
        unknown = set(entry) - {"name", "api_key_id", "project_id", "workspace_id", "routes", "tenant"}
        if unknown:
            raise KeyMapError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        api_key_id = _text(entry, "api_key_id", where)
        project_id = _text(entry, "project_id", where)
        workspace_id = _text(entry, "workspace_id", where)
        if not (api_key_id or project_id or workspace_id):
            raise KeyMapError(f"{where}: name the provider's api_key_id, project_id or workspace_id")
        routes = entry.get("routes", [])
        if not isinstance(routes, list) or not all(isinstance(r, str) and r for r in routes):
            raise KeyMapError(f"{where}: routes must be a list of route names")
        name = _text(entry, "name", where) or api_key_id or project_id or workspace_id
        assert name is not None
        if name in names:
            raise KeyMapError(f"{where}: the name {name!r} is used twice")
        names.add(name)
        for route in routes:
            if route in routes_seen:
                raise KeyMapError(f"{where}: route {route!r} is already mapped to {routes_seen[route]!r}")
            routes_seen[route] = name
        keys.append(
            UpstreamKey(name, api_key_id, project_id, workspace_id, tuple(routes), _text(entry, "tenant", where))
        )
    return KeyMap(keys, router)
