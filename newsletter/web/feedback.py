"""Thumbs up / down links: GET shows a one-button confirm page, only POST records.

Link scanners GET every link in a mail, so a GET must never vote. A POST to the link itself,
with any body (an empty one too), records the vote, as one-click unsubscribe does. The token
binds reader, paper and vote; the result page offers the other votes (and "clear" when there
is a vote to clear), with tokens made on the spot.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from newsletter import feedback, readers
from newsletter.addresses import address_key
from newsletter.errors import NotFound
from newsletter.links import VOTES, VoteChoice
from newsletter.models import Paper
from newsletter.web.pages import call, context, masked, small_body, verified_reader


def _choice(request: Request) -> tuple[str, VoteChoice]:
    paper_id = request.path_params["paper_id"]
    choice = request.query_params.get("vote", "")
    if choice not in VOTES:
        raise HTTPException(400, "the link names no vote (up, down or clear)")
    return paper_id, choice


def _page(
    request: Request, reader: str, paper: Paper, choice: str, current: str | None, state: str
) -> Response:
    web = context(request)
    return web.page(
        "vote.html",
        state=state,  # confirm | recorded
        paper=web.paper_view(paper),
        choice=choice,
        current=current,
        action=web.links.vote(reader, paper.id, choice),  # type: ignore[arg-type]
        others={
            v: web.links.vote(reader, paper.id, v)
            for v in VOTES
            if v != current and (current or v != "clear")  # no vote: nothing to clear
        },
    )


async def confirm_vote(request: Request) -> Response:
    paper_id, choice = _choice(request)
    reader = verified_reader(request, "vote", paper_id, choice)
    paper, current = await call(feedback.paper_vote, context(request).store, reader, paper_id)
    return _page(request, reader, paper, choice, current, "confirm")


async def record_vote(request: Request) -> Response:
    paper_id, choice = _choice(request)
    reader = verified_reader(request, "vote", paper_id, choice)
    await small_body(request)  # any body is fine; read it so the connection stays clean
    web = context(request)
    row = await call(readers.reader, web.store, reader)
    subscribers = web.subscribers()
    if not any(address_key(s.email) == row.email for s in subscribers):
        # the page is for whoever holds the link: the address masked, as on every other page
        raise NotFound(
            f"{masked(row.email)} is no longer on the list; votes are taken from subscribers only"
        )
    paper = await call(
        feedback.vote, web.store, subscribers, row.email, paper_id, choice, now=web.now()
    )
    current = None if choice == "clear" else choice
    return _page(request, reader, paper, choice, current, "recorded")
