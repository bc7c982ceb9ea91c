"""Readers: `subscribers list` and `health`, `unsubscribe`, `resubscribe`, `feedback`."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from newsletter import feedback, readers
from newsletter.addresses import address_key, check_address
from newsletter.cli import AppContext, emit_json, err, fail, handle_errors, out, pass_app, styled
from newsletter.errors import NotFound
from newsletter.pipeline import health_report


@click.command("list")
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
            r.email, styled(r.status, colour), since, r.how or "-", "yes" if r.in_file else "no"
        )
    out.print(table)


def _address(email: str) -> str:
    try:
        check_address(email.strip())
    except ValueError as exc:
        fail(f"EMAIL: {exc}")
    return email.strip()


@click.command("unsubscribe")
@click.argument("email")
@pass_app
@handle_errors
def unsubscribe_cmd(app: AppContext, email: str) -> None:
    """Unsubscribe an address: it gets no digest from now on, whatever the subscriber file
    says (also none of an edition being sent right now), until `resubscribe`.

    Example: newsletter unsubscribe ada@example.org
    """
    row = readers.unsubscribe(app.store, _address(email), how="cli", now=app.now())
    if not any(address_key(s.email) == row.email for s in app.subscribers()):
        err.print(
            f"warning: {email} is not in the subscriber file (a typo?): nobody of that address "
            "was getting digests; check the spelling with `newsletter subscribers list`"
        )
    out.print(
        f"{email}: {row.status} (since {row.status_at:%Y-%m-%d %H:%M} UTC, {row.status_how})",
        highlight=False,
    )


@click.command("resubscribe")
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


@click.command("add")
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


@click.command("list")
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


@click.command("health")
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
