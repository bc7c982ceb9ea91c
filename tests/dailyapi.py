"""A local stand-in for the Daily Papers API: answers in the API's shape, built from the bundled
seed dumps, served over real HTTP from a thread on 127.0.0.1 (never the real site).

Each day answers 200 with an ETag and a Last-Modified, and 304 to a request carrying either
validator. Scripted replies (`queue`) come first: a 503, a 429 with Retry-After, a slow or a
truncated answer. A day that was not added answers `[]`, as the API does on a weekend.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from newsletter.ingest import read_dump

from .conftest import REFERENCE

NAMES = [
    "Ada Lovelace",
    "Charles Babbage",
    "Grace Hopper",
    "Alan Turing",
    "Jean-Paul van der Berg",
    "Zhang Wei",
    "Emmy Noether",
]
LAST_MODIFIED = "Tue, 17 Mar 2026 12:00:00 GMT"


def arxiv_id(rank: int) -> str:
    return f"2403.{10000 + rank:05d}"


def api_entries(seed: Path, *, ids: bool = True) -> list[dict[str, Any]]:
    """One seed dump as the API answers it: entries in publishing order (the reverse of the
    trending order here), upvotes falling with the dump's rank, 2-4 authors each."""
    listing = read_dump(seed, reference=REFERENCE)
    entries = []
    for e in listing.entries:
        n = e.rank
        paper: dict[str, Any] = {
            "id": arxiv_id(n) if ids else f"not-an-id-{n}",
            "title": e.paper.title,
            "summary": e.paper.abstract,
            "authors": [
                {"_id": f"a{n}{i}", "name": NAMES[(n + i) % len(NAMES)], "hidden": False}
                for i in range(2 + n % 3)
            ],
            "upvotes": 500 - n,
            "publishedAt": "2026-03-15T00:00:00.000Z",
            "discussionId": f"d{n}",
        }
        if n % 4 == 0:
            paper["githubRepo"] = f"https://github.com/example/paper-{n}"
        entries.append(
            {
                "paper": paper,
                "title": e.paper.title,
                "publishedAt": "2026-03-16T00:00:00.000Z",
                "numComments": n % 5,
                "isAuthorParticipating": False,
            }
        )
    return entries[::-1]


def body(entries: list[dict[str, Any]]) -> bytes:
    return json.dumps(entries, ensure_ascii=False).encode("utf-8")


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"[]"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Request:
    date: str
    headers: dict[str, str]
    at: float
    path: str = ""  # with its query


class DailyApi:
    """The server's state: days, scripted replies, and every request received."""

    def __init__(self) -> None:
        self.days: dict[str, bytes] = {}
        self.queued: dict[str, list[Reply]] = defaultdict(list)
        self.requests: list[Request] = []
        self.etags = True
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/daily_papers"

    def add(self, date: dt.date | str, data: bytes) -> None:
        self.days[str(date)] = data

    def queue(self, date: dt.date | str, *replies: Reply) -> None:
        self.queued[str(date)].extend(replies)

    def asked(self, date: dt.date | str) -> list[Request]:
        return [r for r in self.requests if r.date == str(date)]

    def answer(self, date: str, headers: dict[str, str]) -> Reply:
        if self.queued[date]:
            return self.queued[date].pop(0)
        data = self.days.get(date, b"[]")
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        validators = {"Last-Modified": LAST_MODIFIED}
        if self.etags:
            validators["ETag"] = etag
        if (self.etags and headers.get("if-none-match") == etag) or (
            not self.etags and headers.get("if-modified-since") == LAST_MODIFIED
        ):
            return Reply(304, b"", validators)
        return Reply(200, data, {"Content-Type": "application/json", **validators})

    def __enter__(self) -> DailyApi:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(api: DailyApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            date = query.get("date", [""])[0]
            headers = {k.lower(): v for k, v in self.headers.items()}
            api.requests.append(Request(date, headers, time.monotonic(), self.path))
            reply = api.answer(date, headers)
            if reply.delay:
                time.sleep(reply.delay)
            try:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if reply.status != 304:
                    self.wfile.write(reply.body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
