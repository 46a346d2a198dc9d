"""A stateful stand-in for gcloud, bq and curl (the Monitoring REST API), installed on PATH
under those names by tests/deploy/test_deploy_cloudrun_run.py.

Every call is appended to $FAKE_CLOUD_LOG (argv and stdin, one JSON object a line). What the
calls create is kept in the JSON file $FAKE_CLOUD_STATE, and describe/list/access answer from
it, so a second run of the whole deploy sees what the first one made. Like the real APIs:

* creating what exists fails (ALREADY_EXISTS), except where the API names the resource
  itself (dashboards, alert policies, channels, uptime checks): those are duplicated, which
  is what a deploy that does not converge would do;
* updating or describing what does not exist fails (NOT_FOUND);
* `gcloud monitoring policies` exists only as `gcloud alpha monitoring policies`, as in Cloud
  SDK 528 (set FAKE_GA_POLICIES=1 for a newer SDK);
* a deploy must name an image digest that a build pushed.

FAKE_FAIL=TEXT makes any call whose command line contains TEXT fail; FAKE_IAM_FLAKY=N makes
the first N IAM bindings fail (IAM's eventual consistency).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from typing import Any

NOT_FOUND, EXISTS = 1, 1


def _load() -> dict[str, Any]:
    path = os.environ["FAKE_CLOUD_STATE"]
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"resources": {}, "bindings": [], "counter": 0, "events": []}


def _save(state: dict[str, Any]) -> None:
    with open(os.environ["FAKE_CLOUD_STATE"], "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)


def _split(args: list[str]) -> tuple[list[str], dict[str, Any]]:
    words: list[str] = []
    flags: dict[str, Any] = {}
    for a in args:
        if a.startswith("--"):
            name, sep, value = a.partition("=")
            flags[name] = value if sep else True
        else:
            words.append(a)
    return words, flags


def _field(doc: Any, path: str) -> Any:
    for part in path.split("."):
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


def _matches(doc: dict, flt: str | None) -> bool:
    """gcloud --filter, the subset the deploy uses: KEY=VALUE or KEY="VALUE" joined by AND."""
    if not flt:
        return True
    for clause in flt.split(" AND "):
        key, _, value = clause.partition("=")
        if str(_field(doc, key.strip())) != value.strip().strip('"'):
            return False
    return True


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


class Fake:
    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.out: list[str] = []

    def coll(self, name: str) -> dict[str, Any]:
        return self.state["resources"].setdefault(name, {})

    def new_id(self) -> str:
        self.state["counter"] += 1
        return str(self.state["counter"])

    def event(self, text: str) -> None:
        self.state["events"].append(text)

    # ------------------------------------------------------------------ generic named resources
    def named(self, coll: str, verb: str, name: str, flags: dict, doc: dict | None = None) -> int:
        items = self.coll(coll)
        if verb == "create":
            if name in items:
                print(f"ERROR: (gcloud) ALREADY_EXISTS: {coll} {name}", file=sys.stderr)
                return EXISTS
            items[name] = doc or {"name": name}
            self.event(f"create {coll} {name}")
            return 0
        if name not in items:
            print(f"ERROR: (gcloud) NOT_FOUND: {coll} {name}", file=sys.stderr)
            return NOT_FOUND
        if verb in ("update", "patch", "set-password"):
            items[name].update(doc or {})
            self.event(f"update {coll} {name}")
            return 0
        if verb == "describe":
            fmt = flags.get("--format", "")
            m = re.fullmatch(r"value\((\w+)\)", fmt) if isinstance(fmt, str) else None
            if m:
                self.out.append(str(items[name].get(m.group(1), "")))
            return 0
        raise SystemExit(f"fake gcloud: unknown verb {verb} for {coll}")

    # ------------------------------------------------------------------ resources named by the API
    def listed(self, coll: str, verb: str, words: list[str], flags: dict, doc: dict | None, name_of) -> int:
        items = self.coll(coll)
        if verb == "create":
            name = name_of(self.new_id())
            items[name] = {**(doc or {}), "name": name}
            self.event(f"create {coll} {name}")
            if flags.get("--format") == "value(name)":
                self.out.append(name)
            return 0
        if verb in ("list", "list-configs"):
            found = [n for n, d in items.items() if _matches(d, flags.get("--filter"))]
            limit = int(flags.get("--limit", len(found) or 1))
            if flags.get("--format") == "value(name.basename())":
                found = [n.rsplit("/", 1)[-1] for n in found]
            self.out.extend(found[:limit])
            return 0
        if verb == "update":
            name = words[0]
            if name not in items:
                print(f"ERROR: NOT_FOUND {name}", file=sys.stderr)
                return NOT_FOUND
            items[name].update(doc or {})
            self.event(f"update {coll} {name}")
            return 0
        raise SystemExit(f"fake gcloud: unknown verb {verb} for {coll}")

    # ------------------------------------------------------------------ gcloud
    def gcloud(self, args: list[str], stdin: str) -> int:
        words, flags = _split(args)
        track = ""
        if words and words[0] in ("alpha", "beta"):
            track, words = words[0], words[1:]
        project = flags.get("--project", "")
        w = words
        if w[:2] == ["monitoring", "policies"] and not track and not os.environ.get("FAKE_GA_POLICIES"):
            print("ERROR: (gcloud.monitoring) Invalid choice: 'policies'.", file=sys.stderr)
            return 2
        if "--help" in flags:
            return 0
        if w[:2] == ["services", "enable"]:
            self.state.setdefault("services", [])
            self.state["services"] = sorted(set(self.state["services"]) | set(w[2:]))
            return 0
        if w[:1] == ["auth"] and w[1:2] == ["print-access-token"]:
            self.out.append("ya29.fake-access-token")
            return 0
        if w[:2] == ["projects", "add-iam-policy-binding"]:
            flaky = int(os.environ.get("FAKE_IAM_FLAKY", "0"))
            tries = self.state.setdefault("iam_failures", 0)
            if tries < flaky:
                self.state["iam_failures"] = tries + 1
                print("ERROR: (gcloud) INVALID_ARGUMENT: Service account does not exist.", file=sys.stderr)
                return 1
            binding = [*w[:3], flags["--member"], flags["--role"]]
            if "${" in flags["--member"] or not flags["--member"].startswith(("serviceAccount:", "user:", "group:")):
                print(f"ERROR: bad member {flags['--member']}", file=sys.stderr)
                return 1
            if binding not in self.state["bindings"]:
                self.state["bindings"].append(binding)
            return 0
        if w[:3] == ["artifacts", "repositories", "create"] or w[:3] == ["artifacts", "repositories", "describe"]:
            return self.named("repository", w[2], w[3], flags)
        if w[:2] == ["iam", "service-accounts"]:
            email = w[3] if "@" in w[3] else f"{w[3]}@{project}.iam.gserviceaccount.com"
            return self.named("service_account", w[2], email, flags)
        if w[:2] == ["builds", "submit"]:
            tag = flags["--tag"]
            account = flags.get("--service-account", "").rsplit("/", 1)[-1]
            if ["projects", "add-iam-policy-binding", project, f"serviceAccount:{account}",
                    "roles/cloudbuild.builds.builder"] not in self.state["bindings"]:
                print("ERROR: the build account may not push images", file=sys.stderr)
                return 1
            self.coll("image")[tag] = {"digest": "sha256:" + hashlib.sha256(tag.encode()).hexdigest()}
            return 0
        if w[:4] == ["artifacts", "docker", "images", "describe"]:
            image = self.coll("image").get(w[4])
            if image is None:
                return NOT_FOUND
            self.out.append(image["digest"])
            return 0
        if w[:2] == ["secrets", "versions"]:
            secret = w[3] if w[2] == "add" else flags["--secret"]
            if secret not in self.coll("secret"):
                return NOT_FOUND
            versions = self.coll("secret")[secret].setdefault("versions", [])
            if w[2] == "add":
                if not stdin and flags.get("--data-file") == "-":
                    print("ERROR: empty secret", file=sys.stderr)
                    return 1
                versions.append(stdin if flags.get("--data-file") == "-" else f"file:{flags['--data-file']}")
                self.event(f"create secret_version {secret}/{len(versions)}")
                return 0
            index = int(w[3]) - 1
            if not 0 <= index < len(versions):
                return NOT_FOUND
            if w[2] == "access":
                self.out.append(versions[index])
            return 0
        if w[:2] == ["secrets", "add-iam-policy-binding"]:
            if w[2] not in self.coll("secret"):
                return NOT_FOUND
            binding = ["secrets", w[2], flags["--member"], flags["--role"]]
            if binding not in self.state["bindings"]:
                self.state["bindings"].append(binding)
            return 0
        if w[:1] == ["secrets"]:
            return self.named("secret", w[1], w[2], flags, {"name": w[2]})
        if w[:2] == ["sql", "instances"]:
            doc = {"name": w[3]}
            if "--enable-point-in-time-recovery" in flags:
                doc["pitr"] = True
                doc["backup_start_time"] = flags.get("--backup-start-time")
            return self.named("sql_instance", w[2], w[3], flags, doc)
        if w[:2] == ["sql", "databases"]:
            if flags["--instance"] not in self.coll("sql_instance"):
                return NOT_FOUND
            return self.named("sql_database", w[2], f"{flags['--instance']}/{w[3]}", flags, {"name": w[3]})
        if w[:2] == ["sql", "users"]:
            doc = {"name": w[3]}
            if w[2] in ("create", "set-password"):
                m = re.fullmatch(r'"--password": "([A-Za-z0-9]+)"\n', stdin)
                if not m or flags.get("--flags-file") != "-":
                    print("ERROR: no password in the flags file", file=sys.stderr)
                    return 1
                doc["password"] = m.group(1)
            return self.named("sql_user", w[2], f"{flags['--instance']}/{w[3]}", flags, doc)
        if w[:2] == ["run", "deploy"] or w[:3] == ["run", "jobs", "deploy"]:
            image = flags["--image"]
            digests = {d["digest"] for d in self.coll("image").values()}
            if "@" not in image or image.split("@", 1)[1] not in digests:
                print(f"ERROR: image {image} was not built", file=sys.stderr)
                return 1
            kind, name = ("service", w[2]) if w[1] == "deploy" else ("job", w[3])
            items = self.coll(kind)
            record = items.setdefault(name, {"revisions": 0, "executions": 0})
            record["revisions"] += 1
            record["image"] = image
            if "--execute-now" in flags:
                record["executions"] += 1
            return 0
        if w[:3] == ["run", "services", "add-iam-policy-binding"]:
            binding = ["run", w[3], flags["--member"], flags["--role"]]
            if binding not in self.state["bindings"]:
                self.state["bindings"].append(binding)
            return 0
        if w[:2] == ["logging", "metrics"]:
            return self.named("log_metric", w[2], w[3], flags)
        if w[:2] == ["logging", "sinks"]:
            doc: dict[str, Any] = {"name": w[3]}
            if w[2] == "create":
                doc["writerIdentity"] = "serviceAccount:service-123@gcp-sa-logging.iam.gserviceaccount.com"
                doc["disabled"] = "--disabled" in flags
            elif "--no-disabled" in flags:
                doc["disabled"] = False
                granted = any(b[-1] == "roles/bigquery.dataEditor" for b in self.state["bindings"])
                if not granted:
                    self.event("sink exporting before its writer identity may write")
            if len(w) > 4:
                doc["destination"] = w[4]
            status = self.named("sink", w[2], w[3], flags, doc)
            sink = self.coll("sink").get(w[3])
            if status == 0 and w[2] == "update" and sink and "--disabled" in flags:
                sink["disabled"] = True
            return status
        if w[:2] == ["monitoring", "dashboards"]:
            doc = _read_json(flags["--config-from-file"]) if "--config-from-file" in flags else None
            return self.listed("dashboard", w[2], w[3:], flags, doc, lambda i: f"projects/{project}/dashboards/{i}")
        if w[:2] == ["monitoring", "policies"]:
            source = flags.get("--policy-from-file")
            doc = (json.loads(stdin) if source == "-" else _read_json(source)) if source else None
            for check_id in re.findall(r'check_id=\\?"([^"\\]*)', json.dumps(doc or {})):
                if not any(n.endswith("/" + check_id) for n in self.coll("uptime_check")):
                    print(f"ERROR: (gcloud) INVALID_ARGUMENT: no uptime check {check_id!r}", file=sys.stderr)
                    return 1
            channels = flags.get("--notification-channels") or flags.get("--set-notification-channels")
            if doc is not None and channels:
                doc["notificationChannels"] = channels.split(",")
            return self.listed(
                "alert_policy", w[2], w[3:], flags, doc, lambda i: f"projects/{project}/alertPolicies/{i}"
            )
        if w[:2] == ["monitoring", "channels"]:
            if track != "beta":
                return 2
            doc = None
            if w[2] == "create":
                labels = dict(kv.split("=", 1) for kv in flags["--channel-labels"].split(","))
                doc = {"type": flags["--type"], "labels": labels, "displayName": flags["--display-name"]}
            return self.listed(
                "channel", w[2], w[3:], flags, doc, lambda i: f"projects/{project}/notificationChannels/{i}"
            )
        if w[:2] == ["billing", "budgets"]:
            account = flags["--billing-account"]
            if "billingbudgets.googleapis.com" not in self.state.get("services", []):
                print("ERROR: (gcloud) PERMISSION_DENIED: billingbudgets.googleapis.com is not enabled", file=sys.stderr)
                return 1
            doc = None
            if w[2] in ("create", "update"):
                rules = flags.get("--threshold-rule") or flags.get("--add-threshold-rule")
                doc = {"amount": flags["--budget-amount"], "projects": flags["--filter-projects"], "rules": rules,
                       "channels": flags.get("--notifications-rule-monitoring-notification-channels")}
                if w[2] == "create":
                    doc["displayName"] = flags["--display-name"]
            return self.listed("budget", w[2], w[3:], flags, doc, lambda i: f"billingAccounts/{account}/budgets/{i}")
        if w[:2] == ["monitoring", "uptime"]:
            doc = {"path": flags.get("--path")}
            if w[2] == "create":
                doc["displayName"] = w[3]
            return self.listed(
                "uptime_check", w[2], w[3:], flags, doc, lambda i: f"projects/{project}/uptimeCheckConfigs/{i}"
            )
        raise SystemExit(f"fake gcloud: no answer for {' '.join(args)}")

    # ------------------------------------------------------------------ bq
    def bq(self, args: list[str]) -> int:
        words, flags = _split(args)
        if words[0] in ("show", "mk") and "--dataset" in flags:
            return self.named("dataset", "describe" if words[0] == "show" else "create", words[1], flags)
        raise SystemExit(f"fake bq: no answer for {' '.join(args)}")

    # ------------------------------------------------------------------ curl (Monitoring REST API)
    def curl(self, args: list[str], stdin: str) -> int:
        if "-H" not in args or args[args.index("-H") + 1] != "@-":
            return 2
        if not re.fullmatch(r"Authorization: Bearer ya29\.fake-access-token\n", stdin):
            print("curl: (22) The requested URL returned error: 401", file=sys.stderr)
            return 22
        method = args[args.index("-X") + 1]
        url = args[-1]
        body = None
        if "--data-binary" in args:
            body = _read_json(args[args.index("--data-binary") + 1][1:])
        path, _, query = url.partition("?")
        if method == "POST":
            rid = query.split("=", 1)[1]
            path = f"{path}/{rid}"
        items = self.coll("rest")
        if method == "GET":
            return 0 if path in items else 22
        if method == "POST":
            if path in items:
                print("curl: (22) The requested URL returned error: 409", file=sys.stderr)
                return 22
            parent = path.rsplit("/", 2)[0]
            if "/serviceLevelObjectives/" in path and parent not in items:
                return 22
            items[path] = body or {}
            self.event(f"create rest {path}")
            return 0
        if method == "PATCH":
            if path not in items:
                return 22
            items[path] = body or {}
            return 0
        return 2


def main() -> int:
    tool = os.path.basename(sys.argv[0])
    args = sys.argv[1:]
    stdin = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    with open(os.environ["FAKE_CLOUD_LOG"], "a") as f:
        f.write(json.dumps({"argv": [tool, *args], "stdin": stdin}) + "\n")
    fail = os.environ.get("FAKE_FAIL")
    if fail and fail in " ".join([tool, *args]):
        print("ERROR: (gcloud) simulated failure", file=sys.stderr)
        return 3
    state = _load()
    fake = Fake(state)
    if tool == "gcloud":
        status = fake.gcloud(args, stdin)
    elif tool == "bq":
        status = fake.bq(args)
    else:
        status = fake.curl(args, stdin)
    _save(state)
    if fake.out:
        print("\n".join(fake.out))
    return status


if __name__ == "__main__":
    sys.exit(main())
