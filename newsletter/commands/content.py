"""The papers' side: `ingest`, `fetch`, `papers`, `select` and `preview`."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from newsletter.addresses import address_key
from newsletter.cli import (
    EXIT_FAILED,
    AppContext,
    emit_json,
    err,
    fail,
    handle_errors,
    log,
    out,
    parse_date,
    pass_app,
    seeds_folder,
    styled,
)
from newsletter.fetch import days_since, dump_folder, fetch_days
from newsletter.models import SelectedPaper, Subscriber
from newsletter.pipeline import (
    edition_listing,
    ingest_folder,
    matcher_tuning,
    paper_index,
    selections_for,
)
from newsletter.render import Renderer, write_preview, write_preview_index
from newsletter.selection import PaperIndex, rank_all


def ingest_files(app: AppContext, location: Path, year: int | None) -> list[dict[str, Any]]:
    return [
        r.as_dict()
        for r in ingest_folder(app.store, app.settings, location, year=year, now=app.now())
    ]


@click.command("ingest")
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
                r["status"]
                if r["error"] is None
                else styled(r["status"], colour, f": {r['error']}")
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


MAX_FETCH_DAYS = 366  # one --since run: a year at most (be polite to the source)


@click.command("fetch")
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
            status = (
                r["status"] if r["error"] is None else styled(r["status"], "red", f": {r['error']}")
            )
            table.add_row(r["date"], status, str(r["papers"]))
        out.print(table)
    if any(r["status"] == "failed" for r in rows):
        sys.exit(EXIT_FAILED)


@click.command("papers")
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


@click.command("select")
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


@click.command("preview")
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
