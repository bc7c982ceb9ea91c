"""The `newsletter` command: a thin layer over the library.

Each command parses its options, calls the library and prints. Library errors (NewsletterError)
become a one-line message and an exit code; anything else is a bug and keeps its traceback.
With --json, stdout carries exactly one JSON document; logs and progress go to stderr.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar

import click
from rich.console import Console
from rich.table import Table

from newsletter import feedback, readers
from newsletter.addresses import address_key, check_address
from newsletter.deliver import edition_status, run_send
from newsletter.errors import (
    ConfigError,
    NewsletterError,
    NotFound,
    StoreError,
    SubscriberConfigError,
)
from newsletter.fetch import days_since, dump_folder, fetch_days
from newsletter.logs import configure
from newsletter.models import SelectedPaper, Subscriber
from newsletter.pipeline import (
    copy_listings,
    edition_listing,
    health_report,
    ingest_folder,
    matcher_tuning,
    paper_index,
    selections_for,
    write_previews,
)
from newsletter.render import Renderer, write_preview, write_preview_index
from newsletter.roster import load_roster
from newsletter.schedule import (
    Daemon,
    PassResult,
    group_subscribers,
    replay,
    run_pass,
    schedule_table,
)
from newsletter.selection import PaperIndex, rank_all
from newsletter.settings import (
    BUNDLED,
    BUNDLED_TEMPLATES,
    SEEDS_DIR,
    SETTINGS_FILE,
    SUBSCRIBERS_FILE,
    Settings,
    load_settings,
    prepare_database_folder,
)
from newsletter.signals import graceful_stop
from newsletter.store import Store
from newsletter.subscribers import check_subscribers, load_subscribers
from newsletter.web import serve

P = ParamSpec("P")
R = TypeVar("R")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
TEMPLATES_DIR = Path("templates")  # where `init --templates` puts the copy, in DIR
REPLAY_DIR = Path("var/replay")  # the scratch store and Maildir of `replay` without --live

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("newsletter")


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    sys.exit(code)


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn library errors into a message; config errors are exit 2, others exit 1."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            fail(str(exc), EXIT_USAGE)
        except NewsletterError as exc:
            fail(f"{type(exc).__name__}: {exc}", EXIT_FAILED)

    return wrapper


def parse_date(_ctx: click.Context, _param: click.Parameter, value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date; use YYYY-MM-DD") from None


def emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, ensure_ascii=False, default=str))


def setup_logging(settings: Settings) -> None:

    configure(settings.log_level, settings.log_format)


class AppContext:
    """What every command needs, built once from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.settings)
        return self._store

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def subscribers(self, path: Path | None = None) -> list[Subscriber]:
        """The validated subscriber file; an invalid file stops the command (exit 2)."""
        return load_subscribers(path or self.settings.subscribers_file)

    def roster(self) -> Sequence[Subscriber]:
        """The validated subscriber file for a run over all of it: checked whole, then read
        again a chunk at a time, so a send never holds them all (see `roster`)."""
        return load_roster(self.settings.subscribers_file)


def open_store(settings: Settings) -> Store:
    """The store at the start of a command. Only the default folder (var/) is created; a bad
    URL or an unreachable database is a configuration error (exit 2), not a failed run."""
    url = settings.database_url
    prepare_database_folder(url)
    try:
        return Store.open(
            url,
            lock_timeout=settings.db_lock_timeout,
            statement_timeout=settings.db_statement_timeout,
        )
    except StoreError as exc:
        raise ConfigError(str(exc)) from exc


def seeds_folder(settings: Settings, given: Path | None = None) -> Path:
    """The dumps to read (--seeds, else the setting); a missing one is a configuration error."""
    location = given or settings.seeds_dir
    if not given and "seeds_dir" not in settings.model_fields_set and location == SEEDS_DIR:
        location.mkdir(parents=True, exist_ok=True)  # the default home of fetched days
    if not location.exists():
        source = "--seeds" if given else "setting NEWSLETTER_SEEDS_DIR"
        raise ConfigError(
            f"{source}: no such folder {location}; correct the path or create the folder"
        )
    return location


pass_app = click.make_pass_decorator(AppContext)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="newsletter", prog_name="newsletter")
@click.pass_context
@handle_errors
def cli(ctx: click.Context) -> None:
    """Trending papers, matched to each subscriber's topics, delivered by email.

    Settings come from NEWSLETTER_* environment variables, .env, and the settings file
    (NEWSLETTER_SETTINGS_FILE, else config/newsletter.toml here, else the bundled example).
    `newsletter init` writes editable copies of the examples.
    """
    settings = load_settings()
    setup_logging(settings)
    if settings.lock_dir is not None:
        log.warning(
            "NEWSLETTER_LOCK_DIR is obsolete and ignored: the sender lock lives beside the "
            "database file now; remove the setting"
        )
    ctx.obj = AppContext(settings)
    ctx.call_on_close(lambda: ctx.obj._store and ctx.obj._store.close())


# --- ingest -----------------------------------------------------------------------------------
def ingest_files(app: AppContext, location: Path, year: int | None) -> list[dict[str, Any]]:
    return [
        r.as_dict()
        for r in ingest_folder(app.store, app.settings, location, year=year, now=app.now())
    ]


@cli.command("ingest")
@click.option("--seeds", "seeds", type=click.Path(path_type=Path), help="Folder or file of dumps.")
@click.option("--year", type=click.IntRange(1970, 2999), help="Pin the year of every dump.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@pass_app
@handle_errors
def ingest_cmd(app: AppContext, seeds: Path | None, year: int | None, as_json: bool) -> None:
    """Ingest every daily dump in a folder (default: the seeds folder).

    Example: newsletter ingest --seeds seeds/ --year 2026
    """
    location = seeds_folder(app.settings, seeds)
    rows = ingest_files(app, location, year)
    if as_json:
        emit_json({"files": rows})
    elif rows:
        table = Table(title="Ingest")
        for col in ("file", "date", "papers", "new papers", "status"):
            table.add_column(col)
        for r in rows:
            colour = "yellow" if r["status"] == "skipped" else "red"
            status = (
                r["status"] if r["error"] is None else f"[{colour}]{r['status']}[/]: {r['error']}"
            )
            table.add_row(
                Path(r["path"]).name,
                r["date"] or "-",
                str(r["papers"]),
                str(r["new_papers"]),
                status,
            )
        out.print(table)
    if not rows:
        fail(f"no dump in {location} (a dump is a .txt file): nothing ingested", EXIT_FAILED)
    if any(r["status"] == "rejected" for r in rows):
        sys.exit(EXIT_FAILED)


# --- fetch ------------------------------------------------------------------------------------
MAX_FETCH_DAYS = 366  # one --since run: a year at most (be polite to the source)


@cli.command("fetch")
@click.option("--date", "date", callback=parse_date, help="The day, YYYY-MM-DD (default: today).")
@click.option("--since", "since", callback=parse_date, help="Every day from YYYY-MM-DD to today.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@pass_app
@handle_errors
def fetch_cmd(app: AppContext, date: dt.date | None, since: dt.date | None, as_json: bool) -> None:
    """Fetch days from the Daily Papers API (NEWSLETTER_SOURCE_URL) into the seeds folder and
    the store. Today is the date in NEWSLETTER_TIMEZONE. Exit 1 when a day failed (the others
    are still stored).

    Examples: newsletter fetch
              newsletter fetch --since 2026-03-01 --json
    """
    if date is not None and since is not None:
        fail("give --date or --since, not both")
    now = app.now()
    today = app.settings.local_date(now)
    if since is not None and since > today:
        fail(f"--since {since} is after today ({today} in {app.settings.timezone})")
    dates = days_since(since, today) if since is not None else [date or today]
    if len(dates) > MAX_FETCH_DAYS:
        fail(f"--since {since} asks for {len(dates)} days; fetch at most {MAX_FETCH_DAYS} a run")
    rows = [o.as_dict() for o in asyncio.run(fetch_days(app.settings, app.store, dates, now=now))]
    if as_json:
        emit_json({"days": rows})
        for r in rows:  # the reasons, for whoever reads stderr
            if r["error"] is not None:
                log.error("fetch %s failed: %s", r["date"], r["error"])
    else:
        table = Table(
            title=f"Fetch from {app.settings.source_url} into {dump_folder(app.settings)}"
        )
        for col in ("date", "status", "papers"):
            table.add_column(col)
        for r in rows:
            status = r["status"] if r["error"] is None else f"[red]{r['status']}[/]: {r['error']}"
            table.add_row(r["date"], status, str(r["papers"]))
        out.print(table)
    if any(r["status"] == "failed" for r in rows):
        sys.exit(EXIT_FAILED)


# --- papers -----------------------------------------------------------------------------------
@cli.command("papers")
@click.option("--date", "date", callback=parse_date, help="YYYY-MM-DD (default: newest).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@pass_app
@handle_errors
def papers_cmd(app: AppContext, date: dt.date | None, as_json: bool) -> None:
    """Show one day's listing in trending order.

    Example: newsletter papers --date 2026-03-17 --json
    """

    store = app.store
    listing = edition_listing(store, date)
    appearances = store.paper_dates(e.paper.id for e in listing.entries)
    if as_json:
        emit_json(
            [
                {
                    "id": e.paper.id,
                    "title": e.paper.title,
                    "abstract": e.paper.abstract,
                    "rank": e.rank,
                    "links": list(e.paper.links),
                    "arxiv_id": e.paper.arxiv_id,
                    "authors": list(e.paper.authors),
                    "upvotes": e.paper.upvotes,
                    "dates": [d.isoformat() for d, _, _ in appearances.get(e.paper.id, [])],
                }
                for e in listing.entries
            ]
        )
        return
    table = Table(title=f"Trending papers, {listing.date:%a %d %b %Y} ({listing.source})")
    table.add_column("#", justify="right")
    table.add_column("title")
    table.add_column("seen on")
    for e in listing.entries:
        seen = ", ".join(f"{d:%b %d}" for d, _, _ in appearances.get(e.paper.id, []))
        table.add_row(str(e.rank), e.paper.title, seen)
    out.print(table)


# --- select ---------------------------------------------------------------------------------
def pick_subscribers(subs: list[Subscriber], emails: tuple[str, ...]) -> list[Subscriber]:
    """The named subscribers (case-insensitive), or all; an unknown email is a usage error."""
    if not emails:
        return subs
    by_email = {address_key(s.email): s for s in subs}
    unknown = [e for e in emails if address_key(e) not in by_email]
    if unknown:
        fail(
            f"not in the subscriber file: {', '.join(repr(e) for e in unknown)}; "
            "check the spelling or add them to the file"
        )
    return [by_email[address_key(e)] for e in dict.fromkeys(emails)]


@cli.command("select")
@click.option("--subscribers", "file", type=click.Path(path_type=Path), help="Subscriber file.")
@click.option("--date", "date", callback=parse_date, help="Edition YYYY-MM-DD (default: newest).")
@click.option("--all", "all_papers", is_flag=True, help="Rank every stored paper by relevance.")
@click.option("--email", "emails", multiple=True, help="Only this subscriber (repeatable).")
@click.option("--limit", type=click.IntRange(1), help="At most N papers per subscriber.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@pass_app
@handle_errors
def select_cmd(
    app: AppContext,
    file: Path | None,
    date: dt.date | None,
    all_papers: bool,
    emails: tuple[str, ...],
    limit: int | None,
    as_json: bool,
) -> None:
    """Show the papers each subscriber would get, with scores and matched terms.

    Example: newsletter select --email ada@example.org --date 2026-03-17
    """
    if all_papers and date is not None:
        fail("--all and --date exclude each other: --all ranks every stored paper")
    subs = pick_subscribers(app.subscribers(file), emails)
    index = paper_index(app.store)
    threshold = app.settings.relevance_threshold
    near: dict[str, list[SelectedPaper]] = {}
    if all_papers:
        tuning = matcher_tuning(app.settings)
        votes = app.store.vote_map([s.email for s in subs])  # `sent` with the reader's votes
        picked = [
            (
                s,
                rank_all(
                    index,
                    s,
                    threshold=threshold,
                    limit=limit,
                    tuning=tuning,
                    votes=votes.get(address_key(s.email)),
                ),
            )
            for s in subs
        ]
        if limit is None:  # every stored paper: the unranked last (score 0 or excluded)
            picked = [(s, papers + _unranked(index, papers)) for s, papers in picked]
        title = "All stored papers by relevance"
    else:
        edition = edition_listing(app.store, date).date
        selections = selections_for(app.store, app.settings, subs, edition, index=index)
        picked = [(sel.subscriber, list(sel.papers[:limit])) for sel in selections]
        near = {sel.subscriber.email: list(sel.near_misses) for sel in selections}
        title = f"Edition {edition}"
    if as_json:
        emit_json(
            {
                "subscribers": [
                    {
                        "email": s.email,
                        "papers": [_paper_json(p) for p in papers],
                        "near_misses": [_paper_json(p) for p in near.get(s.email, [])],
                    }
                    for s, papers in picked
                ]
            }
        )
        return
    for s, papers in picked:
        table = Table(title=f"{title}: {s.email} ({len(papers)} papers)", title_justify="left")
        order = "score" if all_papers else "order (score x trending bonus)"
        for col in ("trending #", order, "send", "title", "topics", "matched"):
            table.add_column(col)
        for p in papers:
            table.add_row(
                str(p.rank or "-"),
                f"{p.score:.2f}" if all_papers else f"{p.mixed:.2f} ({p.score:.2f})",
                "closest" if p.near_miss else "yes" if p.sent else "no",
                p.paper.title,
                ", ".join(p.topics),
                ", ".join(p.matched_terms) + (f"; like {p.liked!r}" if p.liked else ""),
            )
        out.print(table)
        misses = near.get(s.email, [])
        if not papers and misses:
            out.print(
                "Nothing reached the send threshold. Closest (not sent; `on_empty: closest` "
                "would send them, labelled; `newsletter subscribers health` says what to change):"
            )
            for p in misses:
                terms = ", ".join(p.matched_terms) or "-"
                out.print(f"  {p.score:.2f}  {p.paper.title}  [{terms}]", highlight=False)


def _unranked(index: PaperIndex, ranked: list[SelectedPaper]) -> list[SelectedPaper]:
    """The stored papers `ranked` leaves out (nothing matched, or an exclude term), by id."""
    seen = {p.paper.id for p in ranked}
    rest = sorted((p for p in index.papers if p.id not in seen), key=lambda p: p.id)
    return [SelectedPaper(p, 0.0, sent=False) for p in rest]


def _paper_json(p: SelectedPaper) -> dict[str, Any]:
    return {
        "id": p.paper.id,
        "title": p.paper.title,
        "score": round(p.score, 4),
        "sent": p.sent,
        "near_miss": p.near_miss,
        "trending_rank": p.rank or None,
        "order": round(p.mixed, 4),
        "topics": list(p.topics),
        "matched_terms": list(p.matched_terms),
        "liked": p.liked or None,
    }


# --- preview --------------------------------------------------------------------------------
@cli.command("preview")
@click.option("--email", "email", help="The subscriber to preview.")
@click.option("--all", "everyone", is_flag=True, help="Every subscriber, plus an index.html.")
@click.option("--date", "date", callback=parse_date, help="Edition YYYY-MM-DD (default: newest).")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="FILE.html (or DIR with --all)."
)
@click.option("--eml", type=click.Path(path_type=Path), help="Also write the complete .eml.")
@click.option("--text", is_flag=True, help="Print the plain-text part on stdout.")
@pass_app
@handle_errors
def preview_cmd(
    app: AppContext,
    email: str | None,
    everyone: bool,
    date: dt.date | None,
    output: Path | None,
    eml: Path | None,
    text: bool,
) -> None:
    """Render digests exactly as they would be sent, without sending anything.

    Examples: newsletter preview --email ada@example.org -o ada.html --eml ada.eml
              newsletter preview --all -o var/preview
    """

    if everyone == (email is not None):
        fail("give either --email EMAIL or --all")
    if everyone and (eml or text):
        fail("--eml and --text preview one subscriber; use them with --email")
    renderer = Renderer(app.settings)  # templates compile (or fail) before any work
    subs = pick_subscribers(app.subscribers(), (email,) if email else ())
    edition = edition_listing(app.store, date).date
    selections = selections_for(app.store, app.settings, subs, edition)
    if not everyone:
        sel = selections[0]
        if not sel.papers:
            err.print(
                f"nothing matched for {sel.subscriber.email} in the {edition} edition: "
                "that subscriber gets no email that day; nothing written"
            )
            return
        message = renderer.render(sel, now=app.now())
        if text:
            click.echo(message.text, nl=False)
        if eml is not None:
            eml.parent.mkdir(parents=True, exist_ok=True)
            eml.write_bytes(message.raw)
            err.print(f"wrote {eml}")
        if output is not None or not (text or eml):
            html_path = (
                output or app.settings.preview_dir / f"{edition}-{sel.subscriber.email}.html"
            )
            html_path.parent.mkdir(parents=True, exist_ok=True)
            html_path.write_text(message.html, encoding="utf-8")
            err.print(f"wrote {html_path} ({len(message.paper_ids)} papers)")
        return
    out_dir = output or app.settings.preview_dir
    entries = []
    for sel in selections:
        if sel.papers:
            entries.append(write_preview(renderer.render(sel, now=app.now()), out_dir))
        else:
            err.print(f"{sel.subscriber.email}: nothing matched; no email that day")
    index = write_preview_index(entries, out_dir)
    err.print(f"{len(entries)} previews of the {edition} edition; open {index}")


# --- subscribers ------------------------------------------------------------------------------
@cli.group("subscribers")
def subscribers_group() -> None:
    """Work with the subscriber file."""


@subscribers_group.command("check")
@click.argument("file", required=False, type=click.Path(path_type=Path))
@pass_app
def subscribers_check_cmd(app: AppContext, file: Path | None) -> None:
    """Validate the subscriber file: exit 0 when valid, 1 listing every problem when not
    (2 when there is no such file).

    Example: newsletter subscribers check config/subscribers.yaml
    """
    path = file or app.settings.subscribers_file
    if not path.is_file():
        source = "FILE" if file else "setting NEWSLETTER_SUBSCRIBERS_FILE"
        fail(f"{source}: no such file {path}; correct the path (`newsletter init` writes one)")
    try:
        outline = check_subscribers(path)  # checks everything, keeps no subscriber
    except SubscriberConfigError as exc:
        err.print(str(exc), highlight=False, markup=False)
        sys.exit(EXIT_FAILED)
    count, topics = len(outline.lines), outline.topics
    out.print(f"{path}: valid ({count} subscribers, {topics} topics)", highlight=False)


@subscribers_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@pass_app
@handle_errors
def subscribers_list_cmd(app: AppContext, as_json: bool) -> None:
    """List every subscriber with their state: active, or unsubscribed (when, and how: one-click,
    page or cli). Addresses removed from the file but still unsubscribed come last.

    Example: newsletter subscribers list --json
    """
    rows = readers.subscription_list(app.store, app.subscribers())
    if as_json:
        emit_json({"subscribers": [r.as_dict() for r in rows]})
        return
    table = Table(title="Subscribers")
    for col in ("email", "status", "since", "how", "in file"):
        table.add_column(col)
    for r in rows:
        since = f"{r.changed_at:%Y-%m-%d %H:%M}" if r.changed_at else "-"
        colour = "green" if r.status == "active" else "yellow"
        table.add_row(
            r.email, f"[{colour}]{r.status}[/]", since, r.how or "-", "yes" if r.in_file else "no"
        )
    out.print(table)


def _address(email: str) -> str:
    try:
        check_address(email.strip())
    except ValueError as exc:
        fail(f"EMAIL: {exc}")
    return email.strip()


@cli.command("unsubscribe")
@click.argument("email")
@pass_app
@handle_errors
def unsubscribe_cmd(app: AppContext, email: str) -> None:
    """Unsubscribe an address: it gets no digest from now on, whatever the subscriber file
    says (also none of an edition being sent right now), until `resubscribe`.

    Example: newsletter unsubscribe ada@example.org
    """
    row = readers.unsubscribe(app.store, _address(email), how="cli", now=app.now())
    out.print(
        f"{email}: {row.status} (since {row.status_at:%Y-%m-%d %H:%M} UTC, {row.status_how})",
        highlight=False,
    )


@cli.command("resubscribe")
@click.argument("email")
@pass_app
@handle_errors
def resubscribe_cmd(app: AppContext, email: str) -> None:
    """Subscribe an unsubscribed address again (from the next edition on).

    Example: newsletter resubscribe ada@example.org
    """
    row = readers.resubscribe(app.store, _address(email), how="cli", now=app.now())
    if not any(address_key(s.email) == row.email for s in app.subscribers()):
        err.print(f"warning: {email} is not in the subscriber file, so it still gets nothing")
    out.print(f"{email}: {row.status}", highlight=False)


# --- feedback ---------------------------------------------------------------------------------
@cli.group("feedback")
def feedback_group() -> None:
    """Readers' thumbs up / down on papers."""


@feedback_group.command("add")
@click.argument("email")
@click.argument("paper_id")
@click.argument("vote", type=click.Choice(["up", "down", "clear"]))
@pass_app
@handle_errors
def feedback_add_cmd(app: AppContext, email: str, paper_id: str, vote: str) -> None:
    """Record a subscriber's vote on a paper (the latest wins; `clear` removes it). PAPER_ID is
    the id that `papers --json` and `select --json` show.

    Example: newsletter feedback add ada@example.org 3f2a9c0d1e2b4a5f up
    """
    had = {v.paper_id for v in feedback.votes(app.store, email)} if vote == "clear" else set()
    try:
        paper = feedback.vote(
            app.store,
            app.subscribers(),
            email,
            paper_id,
            feedback.check_choice(vote),
            now=app.now(),
        )
    except NotFound as exc:
        fail(str(exc))
    if vote == "clear":
        done = "cleared the vote on" if paper.id in had else "had no vote to clear on"
    else:
        done = f"voted {vote} on"
    out.print(f"{email}: {done} {paper.title}", highlight=False, markup=False)


@feedback_group.command("list")
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@pass_app
@handle_errors
def feedback_list_cmd(app: AppContext, email: str, as_json: bool) -> None:
    """Show a reader's votes, newest first.

    Example: newsletter feedback list ada@example.org --json
    """
    rows = feedback.votes(app.store, email)
    if as_json:
        emit_json(feedback.votes_json(rows))
        return
    table = Table(title=f"Votes of {email}")
    for col in ("paper id", "vote", "at", "title"):
        table.add_column(col)
    for v in rows:
        table.add_row(v.paper_id, v.vote, f"{v.at:%Y-%m-%d %H:%M}", v.title)
    out.print(table)


# --- the web app ------------------------------------------------------------------------------
@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@pass_app
@handle_errors
def serve_cmd(app: AppContext, host: str, port: int) -> None:
    """Serve the reader's side: one-click unsubscribe, the editions in a browser, the Atom
    feeds and the vote links, at NEWSLETTER_PUBLIC_BASE_URL (put a TLS proxy in front).

    Example: newsletter serve --host 127.0.0.1 --port 8080
    """
    if not app.settings.public_base_url:
        log.warning(
            "NEWSLETTER_PUBLIC_BASE_URL is unset: emails carry no links to this app; set it "
            "to the URL readers reach it at (https://...)"
        )
    app.subscribers()  # an invalid subscriber file stops us now (exit 2)
    serve(app.settings, app.store, host=host, port=port)


@subscribers_group.command("health")
@click.option("--subscribers", "file", type=click.Path(path_type=Path), help="Subscriber file.")
@click.option("--days", type=click.IntRange(1), default=7, show_default=True, help="Editions.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@pass_app
@handle_errors
def subscribers_health_cmd(app: AppContext, file: Path | None, days: int, as_json: bool) -> None:
    """How each subscriber's topics fared over the last N stored editions: editions where
    nothing matched, editions flooded (more than half the listing matched), keywords that
    never match a stored paper, the closest near misses, and what to change.

    Example: newsletter subscribers health --days 14 --json
    """
    reports = health_report(app.store, app.settings, app.subscribers(file), days=days)
    if as_json:
        emit_json({"subscribers": [r.as_dict() for r in reports]})
        return
    for r in reports:
        out.print(
            f"{r.email}: {r.editions} editions, {len(r.empty)} with nothing matched, "
            f"{len(r.flooded)} flooded",
            highlight=False,
        )
        for m in r.near_misses:
            out.print(
                f"  near miss {m.edition}: {m.score:.2f} (bar {m.needed:.2f}) {m.title}",
                highlight=False,
            )
        for line in r.advice:
            out.print(f"  - {line}", highlight=False, markup=False)


# --- send and status --------------------------------------------------------------------------
@cli.command("send")
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


@cli.command("status")
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


# --- the daemon, replay and the one-shot main job ---------------------------------------------
@cli.command("run")
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


@cli.command("replay")
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


@cli.command("demo")
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


# --- init -------------------------------------------------------------------------------------
@cli.command("init")
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


def main() -> None:
    cli(prog_name="newsletter")
