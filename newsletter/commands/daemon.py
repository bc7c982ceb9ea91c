"""The daemon (`run`) and `replay`."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import sys
from pathlib import Path

import click
from rich.table import Table

from newsletter.cli import (
    EXIT_FAILED,
    AppContext,
    err,
    fail,
    handle_errors,
    open_store,
    out,
    parse_date,
    pass_app,
    seeds_folder,
)
from newsletter.pipeline import copy_listings
from newsletter.schedule import Daemon, PassResult, replay, run_pass
from newsletter.settings import Settings
from newsletter.signals import graceful_stop
from newsletter.store import Store

REPLAY_DIR = Path("var/replay")  # the scratch store and Maildir of `replay` without --live


@click.command("run")
@click.option("--once", is_flag=True, help="Serve everything due now, then exit (for cron).")
@pass_app
@handle_errors
def run_cmd(app: AppContext, once: bool) -> None:
    """Send each subscriber's edition at their local send time (daemon), or one pass with --once.

    Examples: newsletter run            (daemon; SIGTERM/Ctrl-C stop it cleanly)
              newsletter run --once     (from cron: */10 * * * *)
    """

    seeds_folder(app.settings)
    subscribers = app.subscribers()
    if once:

        async def one_pass() -> PassResult:
            stop = asyncio.Event()
            task = asyncio.current_task()
            assert task is not None
            with graceful_stop(stop, task.cancel):
                return await run_pass(app.settings, app.store, subscribers, app.now, stop=stop)

        try:
            result = asyncio.run(one_pass())
        except asyncio.CancelledError:
            fail("interrupted: in-flight messages abandoned; the next run finishes", EXIT_FAILED)
        decisions = result.decisions
        table = Table(title="run --once")
        for col in ("group", "send time (UTC)", "action", "edition", "subscribers"):
            table.add_column(col)
        for d in decisions:
            action: str = d.action
            if action == "send":  # another sender held the edition, or the send was stopped
                action = "left open" if d.group.key in result.left_open else "sent"
            table.add_row(
                d.group.key,
                f"{d.firing:%Y-%m-%d %H:%M}",
                action,
                str(d.edition or "-"),
                str(len(d.recipients) if d.action == "send" else len(d.group.subscribers)),
            )
        err.print(table)
        for report in result.reports:
            err.print(report.summary(), highlight=False, markup=False)
        if result.failed:
            sys.exit(EXIT_FAILED)
        return
    asyncio.run(Daemon(app.settings, app.store, subscribers, app.now).run())


def scratch_copy(app: AppContext) -> tuple[Settings, Store]:
    """Settings and a store for a dry replay: a fresh store under var/replay/ holding a copy of
    every stored listing, and a Maildir beside it; SMTP is never used."""
    shutil.rmtree(REPLAY_DIR, ignore_errors=True)
    REPLAY_DIR.mkdir(parents=True)
    settings = app.settings.model_copy(
        update={
            "database_url": f"sqlite:///{REPLAY_DIR / 'newsletter.db'}",
            "outbox_dir": REPLAY_DIR / "outbox",
            "smtp_host": None,
        }
    )
    scratch = open_store(settings)
    copy_listings(app.store, scratch, now=app.now())
    return settings, scratch


@click.command("replay")
@click.option("--from", "start", callback=parse_date, help="First listing date (YYYY-MM-DD).")
@click.option("--to", "end", callback=parse_date, help="Last listing date (YYYY-MM-DD).")
@click.option(
    "--live",
    is_flag=True,
    help="Deliver for real: the configured store, ledger and SMTP or Maildir.",
)
@pass_app
@handle_errors
def replay_cmd(app: AppContext, start: dt.date | None, end: dt.date | None, live: bool) -> None:
    """Deliver every stored listing in date order with a simulated clock, as if the daemon had
    been running those days (backfill, demos). Shows the no-repeat rule at work.

    Without --live it runs in a scratch copy, renewed on each run: a store under var/replay/
    with the stored listings and an empty ledger, and the Maildir var/replay/outbox/. The real
    store and SMTP are left alone. With --live it sends and records for real (a backfill).

    Examples: newsletter replay --from 2026-03-11 --to 2026-03-17
              newsletter replay --live --from 2026-03-11
    """

    subscribers = app.subscribers()
    settings, store = app.settings, app.store
    if not live:
        settings, store = scratch_copy(app)
        err.print(
            f"replay in a scratch copy: store {REPLAY_DIR / 'newsletter.db'}, Maildir "
            f"{settings.outbox_dir}/ (the real store and SMTP are untouched; --live sends for real)",
            highlight=False,
        )
    try:
        rows = replay(settings, store, subscribers, start=start, end=end)
    finally:
        if not live:
            store.close()
    if not rows:
        fail("no stored listing in that range; run `newsletter ingest` first", EXIT_FAILED)
    table = Table(title="Replay")
    for col in ("edition", "subscriber", "papers", "repeats avoided", "status"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r.edition), r.email, str(r.papers), str(r.repeats_avoided), r.status)
    out.print(table)
    if any(r.status.startswith("failed") for r in rows):
        sys.exit(EXIT_FAILED)
