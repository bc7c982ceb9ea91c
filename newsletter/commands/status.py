"""`status`: where an edition's sending stands, and the schedule."""

from __future__ import annotations

import datetime as dt

import click
from rich.table import Table

from newsletter.cli import (
    EXIT_FAILED,
    AppContext,
    emit_json,
    fail,
    handle_errors,
    out,
    parse_date,
    pass_app,
)
from newsletter.deliver import edition_status
from newsletter.schedule import group_subscribers, schedule_table


@click.command("status")
@click.option("--date", "date", callback=parse_date, help="Edition YYYY-MM-DD (default: newest).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@pass_app
@handle_errors
def status_cmd(app: AppContext, date: dt.date | None, as_json: bool) -> None:
    """Show an edition's delivery ledger (counts per status, every failure) and the schedule:
    each subscriber group's next run in its own time zone.

    Example: newsletter status --date 2026-03-17 --json
    """

    date = date or app.store.newest_date()
    if date is None:
        fail("no listing stored yet; run `newsletter ingest` first", EXIT_FAILED)
    doc = edition_status(app.store, date)
    doc["schedule"] = schedule_table(group_subscribers(app.subscribers()), app.now())
    if as_json:
        emit_json(doc)
        return
    counts = ", ".join(f"{k} {v}" for k, v in doc["counts"].items())
    out.print(f"edition {doc['edition']}: {counts}", highlight=False)
    for reason, n in doc["skipped"].items():
        out.print(f"  skipped {n}: {reason}", highlight=False, markup=False)
    for w in doc["workers"]:  # PostgreSQL: every process that worked on the edition
        out.print(
            f"  worker {w['id']}: {w['state']}, sent {w['sent']}, holds {w['held']} row(s), "
            f"lease until {w['lease_until'] or '-'}",
            highlight=False,
            markup=False,
        )
    if doc["failures"]:
        table = Table(title="Failures")
        for col in ("email", "status", "attempts", "last reply", "next attempt"):
            table.add_column(col)
        for f in doc["failures"]:
            table.add_row(
                f["email"],
                f["status"],
                str(f["attempts"]),
                f["last_reply"] or "",
                f["next_attempt_at"] or "-",
            )
        out.print(table)
    table = Table(title="Schedule")
    for col in ("group (zone|send_at)", "subscribers", "next run (local)", "next run (UTC)"):
        table.add_column(col)
    for g in doc["schedule"]:
        local = dt.datetime.fromisoformat(str(g["next_run_local"]))
        utc = dt.datetime.fromisoformat(str(g["next_run_utc"]))
        table.add_row(
            str(g["group"]),
            str(g["subscribers"]),
            f"{local:%a %d %b %H:%M} (UTC{local:%z})",
            f"{utc:%a %d %b %H:%M}",
        )
    out.print(table)
