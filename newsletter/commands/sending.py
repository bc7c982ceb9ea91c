"""`send`: an edition to every subscriber due (or those named)."""

from __future__ import annotations

import datetime as dt
import sys

import click

from newsletter.cli import (
    EXIT_FAILED,
    AppContext,
    emit_json,
    handle_errors,
    out,
    parse_date,
    pass_app,
)
from newsletter.deliver import run_send
from newsletter.pipeline import edition_listing


@click.command("send")
@click.option("--date", "date", callback=parse_date, help="Edition YYYY-MM-DD (default: newest).")
@click.option("--email", "emails", multiple=True, help="Only this subscriber (repeatable).")
@click.option("--dry-run", is_flag=True, help="Select, render and plan; send and record nothing.")
@click.option(
    "--resend",
    "resend",
    multiple=True,
    metavar="EMAIL",
    help="Send this subscriber the edition again, same Message-ID (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@pass_app
@handle_errors
def send_cmd(
    app: AppContext,
    date: dt.date | None,
    emails: tuple[str, ...],
    dry_run: bool,
    resend: tuple[str, ...],
    as_json: bool,
) -> None:
    """Send one edition to every subscriber (or the named ones) who has not had it yet.

    Safe to re-run: what was sent is never sent again, except with --resend. Exit 1 when a
    message failed (see `newsletter status`). Ctrl-C stops after the messages in flight.

    Example: newsletter send --date 2026-03-17 --json
    """

    subscribers = app.roster()
    edition = edition_listing(app.store, date).date
    report = run_send(
        app.settings,
        app.store,
        subscribers,
        edition,
        only=list(emails) or None,
        resend=resend,
        dry_run=dry_run,
        now=app.now,
    )
    if as_json:
        emit_json(report.to_json())
    else:
        out.print(report.summary(), highlight=False, markup=False)
    if report.failed or report.unknown or report.interrupted:
        sys.exit(EXIT_FAILED)
