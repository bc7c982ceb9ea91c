"""What every page module shares: the app's context, token checks, and page rendering.

Pages are Jinja templates from `templates/web/` (NEWSLETTER_TEMPLATE_DIR's `web/` first, then
the bundled ones), autoescaped, without JavaScript. Every response forbids scripts and
framing and sends no Referer, so the signed links never leak to the sites a page links to.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from newsletter.dailypapers import arxiv_page, paper_page, strip_control_chars
from newsletter.errors import BadToken, SubscriberConfigError
from newsletter.links import Links
from newsletter.models import Paper, Subscriber
from newsletter.render import author_line, link_view
from newsletter.settings import BUNDLED_TEMPLATES, Settings
from newsletter.store import Store
from newsletter.subscribers import load_subscribers
from newsletter.tokens import Purpose, Tokens

log = logging.getLogger("newsletter.web")
T = TypeVar("T")

BODY_LIMIT = 64 * 1024  # a one-click POST carries 26 bytes; anything big is not for us
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
PRIVATE_HEADERS = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex, nofollow"}


class SubscriberFile:
    """The subscriber file, re-read when it changes; an invalid new version is logged and
    the last good one stays (as the daemon does)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = self._stat()
        self._subscribers = load_subscribers(path)

    def _stat(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None

    def __call__(self) -> list[Subscriber]:
        mtime = self._stat()
        if mtime is not None and mtime != self._mtime:
            self._mtime = mtime
            try:
                self._subscribers = load_subscribers(self.path)
            except SubscriberConfigError as exc:
                log.error("%s; keeping the previous subscriber list", exc)
        return self._subscribers


@dataclass
class WebContext:
    settings: Settings
    store: Store
    tokens: Tokens
    subscribers: Callable[[], list[Subscriber]]
    now: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))

    def __post_init__(self) -> None:
        # root-relative, right behind any proxy; under the public URL's path when it has one
        # (https://example.org/digest: the proxy strips /digest, the browser must not)
        prefix = urlsplit(self.settings.public_base_url or "").path.rstrip("/")
        self.links = Links(prefix, self.tokens)
        web = Path(self.settings.template_dir) / "web"
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(
                [jinja2.FileSystemLoader(web), jinja2.FileSystemLoader(BUNDLED_TEMPLATES / "web")]
            ),
            autoescape=jinja2.select_autoescape(["html", "xml"]),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals.update(
            sender_name=self.settings.sender_name,
            postal_address=self.settings.postal_address,
            contact_address=self.settings.reply_to or self.settings.sender_address,
            links=self.links,
        )

    def page(
        self,
        name: str,
        *,
        status: int = 200,
        private: bool = True,
        media_type: str = "text/html",
        **context: Any,
    ) -> Response:
        # a control character stored before ingest dropped them (or from a template) would
        # make the Atom feed invalid XML, and is an HTML parse error too: dropped at output
        body = strip_control_chars(self.env.get_template(name).render(**context))
        headers = {**SECURITY_HEADERS, **(PRIVATE_HEADERS if private else {})}
        if media_type == "text/html":
            return HTMLResponse(body, status_code=status, headers=headers)
        return Response(body, status_code=status, headers=headers, media_type=media_type)

    def paper_url(self, paper: Paper) -> str:
        """As in the email: the paper's page when its arXiv id is known, else a search."""
        if paper.arxiv_id:
            return paper_page(paper.arxiv_id)
        return self.settings.paper_base_url + quote(" ".join(paper.title.split()), safe="")

    def paper_view(self, paper: Paper, rank: int = 0) -> dict[str, Any]:
        links = [link_view(u) for u in paper.links if u.startswith(("https://", "http://"))]
        return {
            "id": paper.id,
            "title": " ".join(paper.title.split()),
            "url": self.paper_url(paper),
            "authors": author_line(paper.authors),
            "arxiv_id": paper.arxiv_id or "",
            "arxiv_url": arxiv_page(paper.arxiv_id) if paper.arxiv_id else "",
            "abstract": " ".join(paper.abstract.split()),
            "links": links,
            "rank": rank,
        }


def context(request: Request) -> WebContext:
    web: WebContext = request.app.state.web
    return web


def verified_reader(request: Request, purpose: Purpose, *parts: str) -> str:
    """The reader id of a signed link (`r`, `t` in the query), checked for `purpose` and
    `parts`; BadToken (a 4xx page) for a missing, forged, swapped or expired token."""
    reader = request.query_params.get("r", "")
    token = request.query_params.get("t", "")
    if not reader or not token:
        raise BadToken("this link is incomplete: open it exactly as it is in the email")
    context(request).tokens.verify(purpose, token, reader, *parts)
    return reader


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A library call (blocking database work) off the event loop."""
    return await run_in_threadpool(fn, *args, **kwargs)


async def small_body(request: Request) -> bytes:
    size, chunks = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size > BODY_LIMIT:
            raise HTTPException(413, "request body too large")
        chunks.append(chunk)
    return b"".join(chunks)


def masked(email: str) -> str:
    """`a***@example.org`: enough for readers to recognise their address, not to harvest it."""
    local, _, domain = email.rpartition("@")
    return f"{local[:1]}***@{domain}" if local else email


def parse_day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise HTTPException(404, "no such day") from None
