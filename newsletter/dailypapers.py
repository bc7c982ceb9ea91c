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
not: an upvote count that is no count (3.5, -1, 1e400, more than the store's 32-bit column
holds) is left out with a warning rather than clamped, since the count ranks the day and a
clamped garbage value would put its paper first. Control characters are dropped from every
string kept (PostgreSQL refuses NUL in text, XML refuses the other C0 controls). Whatever is
not a list of entries (HTML from a proxy, a truncated body, an error object), or not JSON
(NaN and Infinity are not), is refused whole with the reason, so a bad answer never replaces
a good day.

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
# C0 controls but tab, line feed and carriage return; DEL and the C1 controls; lone surrogates
# (a JSON escape such as "\ud800" decodes to one, and no database can encode it as UTF-8); and
# U+FFFE, U+FFFF, which are no characters at all.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
# A JSON string (skipped whole), or a NaN/Infinity token outside any string.
_CONSTANT = re.compile(r'"(?:[^"\\]|\\.)*"|(-?Infinity|NaN)')
MAX_COUNT = 2**31 - 1  # the store's upvotes column is an INTEGER: 32 bits on PostgreSQL


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


def strip_control_chars(text: str) -> str:
    """`text` without control characters (tab and line breaks stay), lone surrogates and
    U+FFFE/U+FFFF: none belongs in a title or an abstract, and each breaks a store or a feed."""
    return _CONTROL.sub("", text)


class _NotJsonNumber(ValueError):
    """NaN, Infinity or -Infinity: Python's json accepts them, JSON (RFC 8259) does not."""


def _refuse_constant(name: str) -> Any:
    raise _NotJsonNumber(name)


def _line_column(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def decode_json(data: bytes | str, source: str) -> Any:
    """The JSON document in `data`; IngestError with the reason (truncated, not JSON, NaN,
    nested too deeply, ...)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise IngestError(source, f"not UTF-8 (byte at offset {exc.start})") from None
    if not data.strip():
        raise IngestError(source, "the answer is empty (no JSON at all)")
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except _NotJsonNumber as exc:
        found = next((m for m in _CONSTANT.finditer(data) if m.group(1)), None)
        line, column = _line_column(data, found.start(1)) if found else (None, 0)
        where = f" (column {column})" if found else ""
        raise IngestError(
            source, f"not valid JSON: {exc} is no JSON number{where}", line=line
        ) from None
    except RecursionError:
        raise IngestError(source, "not usable JSON: nested too deeply") from None
    except json.JSONDecodeError as exc:
        # the text ends mid-document: at the error, or inside a string that never closes
        truncated = exc.pos >= len(data.rstrip()) or exc.msg.startswith("Unterminated string")
        what = "truncated JSON (the answer stops mid-document)" if truncated else "not valid JSON"
        start = data.lstrip()[:1]
        hint = "; it looks like an HTML page, not the API's JSON" if start == "<" else ""
        raise IngestError(
            source, f"{what}: {exc.msg} (line {exc.lineno}, column {exc.colno}){hint}"
        ) from None
    except ValueError as exc:  # a number too long to convert (over 4,300 digits)
        raise IngestError(source, f"not usable JSON: {str(exc).split(';')[0]}") from None


def parse_daily_papers(data: bytes | str, *, source: str) -> ApiDay:
    """Decode one day's answer. A list that is not entries is refused whole; an entry without
    any title is left out with a warning (its abstract would have nothing to pair with)."""
    doc = decode_json(data, source)
    if isinstance(doc, dict) and isinstance(doc.get("dailyPapers"), list):
        doc = doc["dailyPapers"]  # the shape the papers page embeds
    if not isinstance(doc, list):
        kind = type(doc).__name__
        error = doc.get("error") if isinstance(doc, dict) else None
        detail = f": {strip_control_chars(str(error))[:200]}" if error is not None else ""
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
        upvotes = _inner(entry).get("upvotes")
        if paper.upvotes is None and _is_number(upvotes):
            warnings.append(
                f"{source}: entry {position} ({paper.title[:60]!r}) has upvotes {upvotes!r:.40}, "
                f"which is no count (a whole number from 0 to {MAX_COUNT}); left out"
            )
        if paper.arxiv_id is None and isinstance(_inner(entry).get("id"), str):
            warnings.append(
                f"{source}: entry {position} ({paper.title[:60]!r}) has id "
                f"{_inner(entry)['id']!r}, which is no arXiv id; it links to a search instead"
            )
        papers.append(paper)
    if doc and not papers:
        # not a day without papers: the answer's shape changed (a renamed field), and calling
        # it an empty day would stop every edition without a word
        raise IngestError(
            source,
            f"none of its {len(doc)} entries has a title (looked for `paper.title` and `title`); "
            "the source's format may have changed: nothing stored",
        )
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
    """A string field with its whitespace folded (the API keeps the abstract's line breaks)
    and its control characters dropped."""
    return " ".join(strip_control_chars(value).split()) if isinstance(value, str) else ""


def _authors(value: object) -> Iterator[str]:
    if not isinstance(value, list):
        return
    for author in value:
        name = author.get("name") if isinstance(author, dict) else author
        if text := _text(name):
            yield text


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value: object) -> int | None:
    """A count the store can hold: a whole number (42 or 42.0) from 0 to MAX_COUNT."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():  # not 3.5, nor inf (JSON 1e400)
        value = int(value)
    if isinstance(value, int) and 0 <= value <= MAX_COUNT:
        return value
    return None


def _links(inner: dict[str, Any]) -> Iterator[str]:
    for key in ("githubRepo", "projectPage"):
        url = inner.get(key)
        if isinstance(url, str):
            url = strip_control_chars(url).strip()
            if url.startswith(("https://", "http://")):
                yield url
