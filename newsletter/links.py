"""The reader's links: every URL the emails and the web pages point at, in one place.

    /unsubscribe?r=READER&t=TOKEN          GET: confirm page; POST: unsubscribe (RFC 8058)
    /resubscribe?r=READER&u=WHEN&t=TOKEN   POST: undo the unsubscribe made at WHEN (own token,
                                           one hour; only on the page right after it)
    /archive/YYYY-MM-DD?r=READER&t=TOKEN   the reader's edition as sent
    /feed?r=READER&t=TOKEN                 the reader's Atom feed
    /vote/PAPER?vote=up|down|clear&r=READER&t=TOKEN   GET: confirm page; POST: record
    /day/YYYY-MM-DD                        the day's whole listing (public)

READER is the opaque reader id from the store, never the address; TOKEN binds it (and the
paper and vote) to the link's purpose (`tokens.py`).
"""

from __future__ import annotations

import datetime as dt
from typing import Literal
from urllib.parse import quote, urlencode

from newsletter.tokens import Tokens

VoteChoice = Literal["up", "down", "clear"]
VOTES: tuple[VoteChoice, ...] = ("up", "down", "clear")


class Links:
    def __init__(self, base_url: str, tokens: Tokens) -> None:
        self.base = base_url.rstrip("/")
        self.tokens = tokens

    def _url(self, path: str, **query: str) -> str:
        return f"{self.base}{path}?{urlencode(query)}" if query else f"{self.base}{path}"

    def unsubscribe(self, reader: str) -> str:
        return self._url("/unsubscribe", r=reader, t=self.tokens.sign("subscription", reader))

    def resubscribe(self, reader: str, unsubscribed: str) -> str:
        """The Undo button: `unsubscribed` names the unsubscribe it undoes (readers.stamp)."""
        token = self.tokens.sign("resubscribe", reader, unsubscribed)
        return self._url("/resubscribe", r=reader, u=unsubscribed, t=token)

    def archive(self, reader: str, edition: dt.date) -> str:
        token = self.tokens.sign("archive", reader)
        return self._url(f"/archive/{edition.isoformat()}", r=reader, t=token)

    def feed(self, reader: str) -> str:
        return self._url("/feed", r=reader, t=self.tokens.sign("feed", reader))

    def vote(self, reader: str, paper_id: str, vote: VoteChoice) -> str:
        token = self.tokens.sign("vote", reader, paper_id, vote)
        return self._url(f"/vote/{quote(paper_id, safe='')}", vote=vote, r=reader, t=token)

    def day(self, date: dt.date) -> str:
        return self._url(f"/day/{date.isoformat()}")

    def home(self) -> str:
        return self._url("/")


def one_click_allowed(base_url: str | None) -> bool:
    """RFC 8058 section 3.1: the one-click URI MUST be https. Plain http, even on the loopback,
    gets the link in List-Unsubscribe but no List-Unsubscribe-Post (providers and checkers
    treat such a pair as broken)."""
    return bool(base_url) and str(base_url).lower().startswith("https://")
