"""The Daily Papers API's JSON format, decoded (pure: bytes in, typed records out).

`GET https://huggingface.co/api/daily_papers?date=YYYY-MM-DD` answers a JSON list with one entry
per paper listed that day. The fields used here, as in the Hub's OpenAPI description
(`APIGetDailyPapersResponseItem`) and the clients built on it:

    [{"paper": {"id": "2403.03950",              # the arXiv id
                "title": "...", "summary": "...",  # the abstract
                "authors": [{"name": "Ada Lovelace", "hidden": false, ...}, ...],
                "upvotes": 42, "publishedAt": "2024-03-06T...",
                "githubRepo": "https://github.com/...", "projectPage": "https://..."},  # optional
      "title": "...", "publishedAt": "...", "numComments": 3, ...}, ...]

Fields come and go, so only a title is required of an entry: the paper's, else the entry's
own. Everything else is kept when present and well-formed, and left out (None, empty) when
not. Whatever is not a list of entries (HTML from a proxy, a truncated body, an error object)
is refused whole with the reason, so a bad answer never replaces a good day.

Imports nothing from the package but the errors: `ingest` (which reads the dumps written from
these answers) and `fetch` (which checks an answer before writing it) both build on it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from newsletter.errors import IngestError

HF_PAPER_URL = "https://huggingface.co/papers/"
ARXIV_ABS_URL = "https://arxiv.org/abs/"
# New-style (2403.03950, 2403.03950v2) and old-style (cs/0112017) arXiv identifiers.
_ARXIV_ID = re.compile(r"^(?:\d{4}\.\d{4,5}|[a-z][a-z.-]*/\d{7})(?:v\d+)?$", re.I)


@dataclass(frozen=True, slots=True)
class ApiPaper:
    """One entry of a day's answer, in the API's order."""

    title: str
    summary: str
    arxiv_id: str | None = None
    authors: tuple[str, ...] = ()  # full names, as the source gave them
    upvotes: int | None = None
    links: tuple[str, ...] = ()  # the code repository and project page, when given
    position: int = 0  # 1-based place in the answer, for messages


@dataclass(frozen=True, slots=True)
class ApiDay:
    papers: tuple[ApiPaper, ...]
    warnings: tuple[str, ...] = ()


def is_arxiv_id(value: str) -> bool:
    return bool(_ARXIV_ID.match(value))


def paper_page(arxiv_id: str) -> str:
    return HF_PAPER_URL + arxiv_id


def arxiv_page(arxiv_id: str) -> str:
    return ARXIV_ABS_URL + arxiv_id


def decode_json(data: bytes | str, source: str) -> Any:
    """The JSON document in `data`; IngestError with the reason (truncated, not JSON, ...)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise IngestError(source, f"not UTF-8 (byte at offset {exc.start})") from None
    if not data.strip():
        raise IngestError(source, "the answer is empty (no JSON at all)")
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        # the text ends mid-document: at the error, or inside a string that never closes
        truncated = exc.pos >= len(data.rstrip()) or exc.msg.startswith("Unterminated string")
        what = "truncated JSON (the answer stops mid-document)" if truncated else "not valid JSON"
        start = data.lstrip()[:1]
        hint = "; it looks like an HTML page, not the API's JSON" if start == "<" else ""
        raise IngestError(
            source, f"{what}: {exc.msg} (line {exc.lineno}, column {exc.colno}){hint}"
        ) from None


def parse_daily_papers(data: bytes | str, *, source: str) -> ApiDay:
    """Decode one day's answer. A list that is not entries is refused whole; an entry without
    any title is left out with a warning (its abstract would have nothing to pair with)."""
    doc = decode_json(data, source)
    if isinstance(doc, dict) and isinstance(doc.get("dailyPapers"), list):
        doc = doc["dailyPapers"]  # the shape the papers page embeds
    if not isinstance(doc, list):
        kind = type(doc).__name__
        detail = f": {doc['error']}" if isinstance(doc, dict) and "error" in doc else ""
        raise IngestError(source, f"expected a JSON list of papers, got a {kind}{detail}")
    papers: list[ApiPaper] = []
    warnings: list[str] = []
    for position, entry in enumerate(doc, start=1):
        if not isinstance(entry, dict):
            raise IngestError(
                source, f"entry {position} is a {type(entry).__name__}, not a paper object"
            )
        paper = _paper(entry, position)
        if paper is None:
            warnings.append(f"{source}: entry {position} has no title; left out")
            continue
        if paper.arxiv_id is None and isinstance(_inner(entry).get("id"), str):
            warnings.append(
                f"{source}: entry {position} ({paper.title[:60]!r}) has id "
                f"{_inner(entry)['id']!r}, which is no arXiv id; it links to a search instead"
            )
        papers.append(paper)
    return ApiDay(tuple(papers), tuple(warnings))


def _inner(entry: dict[str, Any]) -> dict[str, Any]:
    """The `paper` object, or the entry itself when the answer is flat."""
    inner = entry.get("paper")
    return inner if isinstance(inner, dict) else entry


def _paper(entry: dict[str, Any], position: int) -> ApiPaper | None:
    inner = _inner(entry)
    title = _text(inner.get("title")) or _text(entry.get("title"))
    if not title:
        return None
    raw_id = inner.get("id")
    arxiv_id = raw_id.strip() if isinstance(raw_id, str) and is_arxiv_id(raw_id.strip()) else None
    return ApiPaper(
        title=title,
        summary=_text(inner.get("summary")) or _text(entry.get("summary")),
        arxiv_id=arxiv_id,
        authors=tuple(_authors(inner.get("authors"))),
        upvotes=_count(inner.get("upvotes")),
        links=tuple(dict.fromkeys(_links(inner))),
        position=position,
    )


def _text(value: object) -> str:
    """A string field with its whitespace folded (the API keeps the abstract's line breaks)."""
    return " ".join(value.split()) if isinstance(value, str) else ""


def _authors(value: object) -> Iterator[str]:
    if not isinstance(value, list):
        return
    for author in value:
        name = author.get("name") if isinstance(author, dict) else author
        if isinstance(name, str) and name.strip():
            yield " ".join(name.split())


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _links(inner: dict[str, Any]) -> Iterator[str]:
    for key in ("githubRepo", "projectPage"):
        url = inner.get(key)
        if isinstance(url, str) and url.strip().startswith(("https://", "http://")):
            yield url.strip()
