"""`demo` and `init`: the bundled examples, run or copied."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click
from rich.table import Table

from newsletter.addresses import address_key
from newsletter.cli import (
    EXIT_FAILED,
    AppContext,
    err,
    fail,
    handle_errors,
    out,
    pass_app,
    seeds_folder,
)
from newsletter.commands.content import ingest_files
from newsletter.deliver import run_send
from newsletter.pipeline import edition_listing, write_previews
from newsletter.settings import BUNDLED, BUNDLED_TEMPLATES, SETTINGS_FILE, SUBSCRIBERS_FILE

TEMPLATES_DIR = Path("templates")  # where `init --templates` puts the copy, in DIR


@click.command("demo")
@pass_app
@handle_errors
def demo_cmd(app: AppContext) -> None:
    """The main job on the embedded defaults (what `make run` does): ingest the seeds, deliver
    the newest edition to every subscriber now (whatever their send_at), write previews.
    Always into the local Maildir (NEWSLETTER_OUTBOX_DIR), whatever SMTP is configured; in an
    empty folder it uses the bundled examples and keeps its data under ./var/.

    Example: newsletter demo
    """

    settings = app.settings.model_copy(update={"smtp_host": None})  # never real mail
    for r in ingest_files(app, seeds_folder(settings), None):
        err.print(
            f"ingest {Path(r['path']).name}: {r['status']} {r['date'] or ''} {r['error'] or ''}"
        )
    subscribers = app.subscribers()
    edition = edition_listing(app.store, None).date
    report = run_send(settings, app.store, subscribers, edition, now=app.now)
    index = write_previews(settings, app.store, subscribers, edition, now=app.now())
    rows = {r.email: r for r in app.store.ledger_rows(edition)}
    table = Table(title=f"Edition {edition}")
    for col in ("subscriber", "papers", "status"):
        table.add_column(col)
    for s in subscribers:
        row = rows.get(address_key(s.email))
        status = row.status if row else "-"
        if row and row.reason and row.status != "sent":
            status += f" ({row.reason})"
        table.add_row(s.email, str(len(row.paper_ids) if row else 0), status)
    out.print(table)
    out.print(report.summary(), highlight=False, markup=False)
    out.print(
        f"delivered via: Maildir {settings.outbox_dir}/ (open with: mutt -f {settings.outbox_dir})",
        highlight=False,
    )
    if app.settings.smtp_host:
        out.print(
            f"demo always delivers into the local Maildir; NEWSLETTER_SMTP_HOST "
            f"({app.settings.smtp_host}) was not used: `newsletter send` sends through it",
            highlight=False,
        )
    out.print(f"previews: {index}", highlight=False)
    if report.failed:
        sys.exit(EXIT_FAILED)


@click.command("init")
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--templates", is_flag=True, help="Also copy the email templates to customise.")
@handle_errors
def init_cmd(directory: Path, templates: bool) -> None:
    """Write an editable subscriber file and settings file into DIR/config/ (DIR: default the
    working folder), where every command run in DIR finds them; with --templates also a copy
    of the email templates in DIR/templates/. Never overwrites a file (exit 2).

    Example: newsletter init mydigest --templates
    """
    plan = {
        directory / SUBSCRIBERS_FILE: BUNDLED / SUBSCRIBERS_FILE,
        directory / SETTINGS_FILE: BUNDLED / SETTINGS_FILE,
    }
    if templates:
        plan[directory / TEMPLATES_DIR] = BUNDLED_TEMPLATES
    existing = [str(target) for target in plan if target.exists()]
    if existing:
        fail(
            f"already there: {', '.join(existing)}; nothing written (move them away, "
            "or init another folder)"
        )
    for target, source in plan.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copyfile(source, target)
        out.print(f"wrote {target}{'/' if source.is_dir() else ''}", highlight=False)
    if templates:
        with (directory / SETTINGS_FILE).open("a", encoding="utf-8") as fh:
            fh.write(
                "\n# Written by `newsletter init --templates`: the email templates to edit, "
                "relative to\n# the folder newsletter runs in. Remove it for the bundled ones.\n"
                f'template_dir = "{TEMPLATES_DIR}"\n'
            )
        out.print(
            f"the setting template_dir in {SETTINGS_FILE} (NEWSLETTER_TEMPLATE_DIR) points at "
            f"{TEMPLATES_DIR}/",
            highlight=False,
        )
    out.print(
        f"next: edit {directory / SUBSCRIBERS_FILE}, then in {directory}: "
        "`newsletter subscribers check`; put the day's dumps in seeds/ or run `newsletter "
        "fetch`; then `newsletter demo` (into the local Maildir) or `newsletter send`",
        highlight=False,
    )
