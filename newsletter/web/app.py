"""The web app: routes, error pages, access log, and `serve` (uvicorn).

    GET  /                      the stored days                      (archive.home)
    GET  /day/DATE              a day's whole listing                (archive.day)
    GET  /archive/DATE?r&t      a reader's edition as sent           (archive.reader_edition)
    GET  /feed?r&t              a reader's Atom feed                 (archive.reader_feed)
    GET  /unsubscribe?r&t       confirm page     POST: unsubscribe   (subscription)
    GET  /resubscribe?r&t       confirm page     POST: resubscribe   (subscription)
    GET  /vote/PAPER?vote&r&t   confirm page     POST: record        (feedback)
    GET  /healthz               JSON, 200 with the store reachable   (health)

GET also answers HEAD; neither ever changes anything. The access log names method, path (no
query string: that is where reader ids and tokens are), status and time; never an address.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from newsletter.errors import BadToken, NotFound
from newsletter.settings import Settings
from newsletter.store import Store
from newsletter.tokens import Tokens, signing_keys
from newsletter.web import archive, feedback, health, subscription
from newsletter.web.pages import SubscriberFile, WebContext

access_log = logging.getLogger("newsletter.web.access")


def routes() -> list[Route]:
    return [
        Route("/", archive.home, methods=["GET"]),
        Route("/day/{date}", archive.day, methods=["GET"]),
        Route("/archive/{date}", archive.reader_edition, methods=["GET"]),
        Route("/feed", archive.reader_feed, methods=["GET"]),
        Route("/unsubscribe", subscription.confirm_unsubscribe, methods=["GET"]),
        Route("/unsubscribe", subscription.unsubscribe, methods=["POST"]),
        Route("/resubscribe", subscription.confirm_resubscribe, methods=["GET"]),
        Route("/resubscribe", subscription.resubscribe, methods=["POST"]),
        Route("/vote/{paper_id}", feedback.confirm_vote, methods=["GET"]),
        Route("/vote/{paper_id}", feedback.record_vote, methods=["POST"]),
        Route("/healthz", health.healthz, methods=["GET"]),
    ]


def _error(request: Request, status: int, title: str, message: str) -> Response:
    web: WebContext = request.app.state.web
    return web.page("error.html", status=status, title=title, message=message)


async def bad_token(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadToken)
    if exc.expired:
        return _error(request, 410, "This link has expired", str(exc))
    return _error(request, 403, "This link does not work", str(exc))


async def not_found(request: Request, exc: Exception) -> Response:
    return _error(request, 404, "Not found", str(exc))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(request, exc.status_code, "Sorry", str(exc.detail))


class AccessLog:
    """One line per request: method, path without the query, status, milliseconds."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            access_log.info(
                "%s %s %d %.1fms",
                scope["method"],
                _printable_path(scope),
                status[0],
                (time.perf_counter() - started) * 1000,
            )


def _printable_path(scope: Scope) -> str:
    """The path as the client sent it (still percent-encoded, so a %0A cannot start a forged
    log line), control characters escaped where a server gives only the decoded one."""
    raw = scope.get("raw_path")
    if isinstance(raw, bytes):
        return raw.decode("ascii", "backslashreplace")
    return str(scope["path"]).encode("unicode_escape").decode("ascii")


def create_app(
    settings: Settings,
    store: Store,
    *,
    tokens: Tokens | None = None,
    subscribers: Callable[[], Any] | None = None,
    now: Callable[[], dt.datetime] | None = None,
) -> Starlette:
    """The ASGI app over an open store. The signing key is loaded (or created) here, so a
    short key or an unreadable key file stops `serve` before it listens."""
    tokens = tokens or Tokens(signing_keys(settings), max_age_days=settings.link_max_age_days)
    web = WebContext(
        settings=settings,
        store=store,
        tokens=tokens,
        subscribers=subscribers or SubscriberFile(settings.subscribers_file),
    )
    if now is not None:
        web.now = now
    app = Starlette(
        routes=routes(),
        exception_handlers={
            BadToken: bad_token,
            NotFound: not_found,
            HTTPException: http_error,
        },
    )
    app.state.web = web
    app.add_middleware(AccessLog)
    return app


def serve(settings: Settings, store: Store, *, host: str, port: int) -> None:
    """Run the app under uvicorn until SIGINT/SIGTERM. Behind a reverse proxy, uvicorn takes
    X-Forwarded-* from the addresses in FORWARDED_ALLOW_IPS (default 127.0.0.1)."""
    app = create_app(settings, store)
    access_log.info(
        "serving on http://%s:%d (public base URL %s)",
        host,
        port,
        settings.public_base_url or "unset",
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        access_log=False,  # ours (AccessLog) leaves out the query string and its tokens
        log_config=None,  # keep the service's logging (NEWSLETTER_LOG_FORMAT)
        proxy_headers=True,
        server_header=False,
    )
