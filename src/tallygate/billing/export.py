"""Running an export once (a Cloud Run job, cron) or in a loop (`--loop`): the leader
(pg advisory lock, held by the loop's connection) exports, the others stand by."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable

from .config import ExportError, ExportOptions, openmeter_config, stripe_config
from .db import ExportDB, open_export_db

log = logging.getLogger("tallygate.billing")


def run_export(
    target: str,
    settings,
    opts: ExportOptions,
    loop: bool = False,
    interval: float = 60.0,
    env=None,
    write: Callable[[str], None] = print,
) -> int:
    """Exit status: 0 done (or standing by), 1 an error or an event Stripe refused."""
    import psycopg

    from . import openmeter, stripe_export

    env = os.environ if env is None else env
    stripe_cfg = om_cfg = client = None
    if target == "stripe":
        stripe_cfg = stripe_config(env, need_key=not opts.dry_run)
        client = None if opts.dry_run else stripe_export.stripe_client(stripe_cfg)
    else:
        om_cfg = openmeter_config(env, need_url=not opts.dry_run)
    db: ExportDB | None = None
    was_leading: bool | None = None
    try:
        while True:
            status = 0
            try:
                if db is None:
                    db = open_export_db(settings)
                # a standby says so once, not every round
                if stripe_cfg is not None:
                    run = stripe_export.export_stripe(db, stripe_cfg, opts, client)
                    status = 1 if run.sent.failed else 0
                    if run.led or was_leading is not False:
                        stripe_export.report(run, opts, write)
                    was_leading = run.led
                else:
                    assert om_cfg is not None
                    om_run = openmeter.export_openmeter(db, om_cfg, opts)
                    if om_run.led or was_leading is not False:
                        openmeter.report(om_run, opts, write)
                    was_leading = om_run.led
            except ExportError as exc:
                write(f"tallygate: billing export {target}: {exc}")
                status = 1
            except (psycopg.OperationalError, psycopg.InterfaceError, sqlite3.OperationalError) as exc:
                write(f"tallygate: billing export {target}: the ledger database: {exc}")
                status = 1
                if db is not None:
                    try:
                        db.close()
                    except Exception:
                        log.debug("closing the export connection", exc_info=True)
                db = None  # reconnect (and contend for the lead again) on the next round
            if not loop or opts.dry_run:
                return status
            time.sleep(interval)
    finally:
        if db is not None:
            db.close()


def start_in_gateway(settings, env) -> threading.Thread | None:
    """TALLYGATE_BILLING_EXPORT=stripe|openmeter: the export's --loop in a thread of the
    gateway (its own database connection; the instance holding the lead exports, the others
    try again every TALLYGATE_BILLING_INTERVAL). Its lines go to the log, not stdout's JSON
    stream. A bad setting stops start-up with its message."""
    target = env.get("TALLYGATE_BILLING_EXPORT", "").strip()
    if not target:
        return None
    if target not in ("stripe", "openmeter"):
        raise ExportError("TALLYGATE_BILLING_EXPORT must be stripe or openmeter")
    from .config import duration_seconds, settle_seconds

    opts = ExportOptions(
        window_seconds=duration_seconds(env.get("TALLYGATE_BILLING_WINDOW", "1h"), "TALLYGATE_BILLING_WINDOW"),
        settle_seconds=settle_seconds(env),
    )
    interval = duration_seconds(env.get("TALLYGATE_BILLING_INTERVAL", "60s"), "TALLYGATE_BILLING_INTERVAL")
    if target == "stripe":
        stripe_config(env)  # checked now, not in the thread
    else:
        openmeter_config(env)

    def loop() -> None:
        try:
            run_export(target, settings, opts, loop=True, interval=float(interval), env=env, write=log.info)
        except Exception:  # noqa: BLE001 - a thread's end must be visible in the log
            log.exception("billing export %s stopped", target)

    thread = threading.Thread(target=loop, name=f"tallygate-billing-{target}", daemon=True)
    thread.start()
    return thread


def export_status(db: ExportDB, tenant_id: str | None = None) -> list[dict]:
    """Each export's cursor and its outbox's events: sent, unsent, held (no Stripe
    customer), refused; with `tenant_id`, that tenant's events only (the cursors are
    every tenant's). Times are aware datetimes, None where nothing happened yet."""
    out = []
    p = db.dialect.placeholder
    for name, w, since, closed, scanned, updated in db.fetch(
        "SELECT name, window_seconds, since, closed_before, scanned_to, updated_at FROM billing_export_state "
        "ORDER BY name"
    ):
        where, params = f"name = {p}", [name]
        if tenant_id is not None:
            where, params = f"{where} AND tenant_id = {p}", [name, tenant_id]
        (sent, unsent, held, refused), *_ = db.fetch(
            "SELECT count(sent_at), "
            "sum(CASE WHEN sent_at IS NULL THEN 1 ELSE 0 END), "
            "sum(CASE WHEN sent_at IS NULL AND customer_id IS NULL THEN 1 ELSE 0 END), "
            "sum(CASE WHEN sent_at IS NULL AND last_error IS NOT NULL THEN 1 ELSE 0 END) "
            f"FROM billing_export_outbox WHERE {where}",
            params,
        )
        t = db.time
        out.append(
            {
                "name": name,
                "window_seconds": int(w),
                "since": t(since),
                "closed_before": t(closed) if closed else None,
                "scanned_to": t(scanned) if scanned else None,
                "updated_at": t(updated) if updated else None,
                "outbox": {
                    "sent": int(sent or 0),
                    "unsent": int(unsent or 0),
                    "held": int(held or 0),
                    "refused": int(refused or 0),
                },
            }
        )
    return out


def status_lines(db: ExportDB) -> list[str]:
    """What each export has done and what waits: the cursor, and the outbox's unsent,
    held (no Stripe customer) and refused events."""

    def iso(t) -> str:
        return t.isoformat() if t else "-"

    lines = []
    for e in export_status(db):
        lines.append(
            f"{e['name']}: since {e['since'].isoformat()}, window {e['window_seconds']}s, closed before "
            f"{iso(e['closed_before'])}, scanned to {iso(e['scanned_to'])}, updated {iso(e['updated_at'])}"
        )
        o = e["outbox"]
        lines.append(
            f"  outbox: {o['sent']} sent, {o['unsent']} unsent ({o['held']} held: no Stripe customer, "
            f"{o['refused']} refused by Stripe)"
        )
    return lines or ["no billing export has run yet"]
