"""Ingest: parse the dumps of the "Daily Papers" listing into DailyListings.

Two kinds of dump, one day per file: the page's text (`*.txt`, below) and the API's JSON as
`newsletter fetch` saves it (`*.json`, named after its day: `daily-papers-2026-03-17.json`; see
`parse_json_dump`). `parse_dump` and `parse_json_dump` are pure (text in, listing out);
`read_dump` / `read_dumps` are the only functions that touch files. A dump is: header lines (anything before the first date line), a date line
such as `Mar 17` (no year), then blank-line-separated paragraphs alternating title and abstract
in trending order. A file that cannot be read safely is rejected whole, with the reason and line:
pairing a title with the wrong abstract would be worse than skipping the day.
"""

from __future__ import annotations

import calendar
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import stat
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from newsletter.dailypapers import ApiPaper, parse_daily_papers, strip_control_chars
from newsletter.errors import IngestError
from newsletter.models import DailyListing, ListingEntry, Paper

log = logging.getLogger(__name__)

_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
_MONTHS.update({name.lower(): i for i, name in enumerate(calendar.month_name) if name})
_DATE_LINE = re.compile(r"^([A-Za-z]{3,9})\.? +(\d{1,2})$")
_URL = re.compile(r"https?://[^\s<>\"'`]+")
_URL_TRAILING = ".,;:!?'\"*"
_SENTENCE_END = re.compile(r"[.!?](?:\s+|$)(?=[A-Z(\[]|$)")
_DATE_IN_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})\.json$")
DUMP_SUFFIXES = (".txt", ".json")
MAX_DUMP_BYTES = 32 * 1024 * 1024  # a day's dump is ~100 KB; a runaway file is refused unread

# A paragraph standing where a title should be is "abstract-like" when it is long or made of
# several sentences; real titles in the dumps are at most ~150 characters, abstracts 1,300+.
_TITLE_MAX_CHARS = 300
_ABSTRACT_MIN_CHARS = 200


@dataclass(frozen=True, slots=True)
class _Paragraph:
    text: str
    line: int  # 1-based line of its first line


@dataclass(frozen=True, slots=True)
class DumpResult:
    """Outcome of reading one file: a listing, or the error that rejected it."""

    path: Path
    listing: DailyListing | None = None
    error: IngestError | None = None


def normalise_title(title: str) -> str:
    """Fold case, Unicode compatibility forms, punctuation and spacing: one key per paper."""
    text = unicodedata.normalize("NFKC", title).casefold()
    return " ".join(re.findall(r"\w+", text))


def paper_id(title: str) -> str:
    """Stable id of a paper: a short hash of its normalised title."""
    return hashlib.blake2b(normalise_title(title).encode("utf-8"), digest_size=8).hexdigest()


def extract_links(text: str) -> tuple[str, ...]:
    """URLs in an abstract (code, project page), without trailing punctuation, in order."""
    links: dict[str, None] = {}
    for raw in _URL.findall(text):
        url = raw.rstrip(_URL_TRAILING)
        # A closing bracket belongs to the URL only when the URL opened it: "(see https://x.y/a)".
        for opener, closer in ("()", "[]", "{}"):
            while url.endswith(closer) and url.count(closer) > url.count(opener):
                url = url[:-1].rstrip(_URL_TRAILING)
        if len(url) > len("https://"):
            links.setdefault(url, None)
    return tuple(links)


def infer_date(month: int, day: int, reference: dt.date, year: int | None = None) -> dt.date:
    """The latest `month day` not after the day after `reference`, or that day in the pinned
    `year`. The day after: a page is dated in its publisher's time zone, which may already be
    at tomorrow (Tokyo's morning is the evening before in UTC); a year-old page is the rarity."""
    if year is not None:
        return dt.date(year, month, day)
    reference += dt.timedelta(days=1)
    for y in range(reference.year, reference.year - 8, -1):
        try:
            candidate = dt.date(y, month, day)
        except ValueError:  # Feb 29 outside a leap year: look further back
            continue
        if candidate <= reference:
            return candidate
    raise ValueError(f"no valid year for {calendar.month_abbr[month]} {day}")


def parse_dump(
    text: str,
    *,
    source: str = "<text>",
    reference: dt.date,
    year: int | None = None,
    max_papers: int | None = None,
) -> DailyListing:
    """Parse one dump's text into a DailyListing; raise IngestError naming the line on bad input,
    or the count when the dump lists more than `max_papers` papers."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    if not any(lines):
        raise IngestError(source, "the file is empty; remove it or re-export the day's page")

    date_idx, when = _find_date(lines, source, reference, year)
    header = tuple(line.strip() for line in lines[:date_idx] if line.strip())
    paragraphs = list(_paragraphs(lines, start=date_idx + 1))
    _check_alignment(paragraphs, source)
    if max_papers is not None and len(paragraphs) // 2 > max_papers:
        raise IngestError(
            source,
            f"{len(paragraphs) // 2} papers, more than NEWSLETTER_MAX_PAPERS_PER_DUMP "
            f"({max_papers}) allows; a day's page lists far fewer, so check the export, or "
            "raise the setting if the file is right",
        )

    entries: list[ListingEntry] = []
    first_seen: dict[str, ListingEntry] = {}
    warnings: list[str] = []
    for title_p, abstract_p in zip(paragraphs[0::2], paragraphs[1::2], strict=True):
        pid = paper_id(title_p.text)
        if pid in first_seen:
            kept = first_seen[pid]
            warnings.append(
                f"{source}, line {title_p.line}: {title_p.text!r} is listed again; "
                f"kept its first listing at rank {kept.rank} (line {kept.line})"
            )
            continue
        paper = Paper(
            id=pid,
            title=title_p.text,
            abstract=abstract_p.text,
            links=extract_links(abstract_p.text),
        )
        entry = ListingEntry(rank=len(entries) + 1, paper=paper, line=title_p.line)
        first_seen[pid] = entry
        entries.append(entry)

    digest = hashlib.sha256("\n".join(lines).strip().encode("utf-8")).hexdigest()
    return DailyListing(
        date=when,
        source=source,
        entries=tuple(entries),
        content_hash=digest,
        header=header,
        warnings=tuple(warnings),
    )


def _find_date(
    lines: list[str], source: str, reference: dt.date, year: int | None
) -> tuple[int, dt.date]:
    for idx, line in enumerate(lines):
        m = _DATE_LINE.match(line.strip())
        if not m or m.group(1).lower() not in _MONTHS:
            continue
        month, day = _MONTHS[m.group(1).lower()], int(m.group(2))
        try:
            return idx, infer_date(month, day, reference, year)
        except ValueError:
            pinned = f" in {year}" if year is not None else ""
            raise IngestError(
                source,
                f"date line {line.strip()!r} is not a valid date{pinned}; fix the date line",
                line=idx + 1,
            ) from None
    raise IngestError(
        source,
        "no date line (such as 'Mar 17') found; the page text must carry the day before "
        "its first paper",
    )


def _paragraphs(lines: list[str], start: int) -> Iterator[_Paragraph]:
    buf: list[str] = []
    first = 0
    for idx in range(start, len(lines) + 1):
        line = lines[idx].strip() if idx < len(lines) else ""
        if line:
            if not buf:
                first = idx + 1
            buf.append(line)
        elif buf:
            yield _Paragraph(" ".join(buf), first)
            buf = []


def _sentences(text: str) -> int:
    return len(_SENTENCE_END.findall(text))


def _reads_like_abstract(text: str) -> bool:
    return len(text) > _TITLE_MAX_CHARS or (len(text) > 120 and _sentences(text) >= 2)


def _reads_like_title(text: str) -> bool:
    return len(text) < _ABSTRACT_MIN_CHARS and _sentences(text) <= 1


def _check_alignment(paragraphs: list[_Paragraph], source: str) -> None:
    if not paragraphs:
        raise IngestError(source, "no papers after the date line; the listing is empty")
    # Walk pairs first so the error points at the first place the alternation breaks.
    for i in range(0, len(paragraphs), 2):
        title = paragraphs[i]
        if _reads_like_abstract(title.text):
            raise IngestError(
                source,
                f"expected a title here but the paragraph reads like an abstract "
                f"({len(title.text)} characters, {_sentences(title.text)} sentences): "
                "a title or an abstract is missing before it",
                line=title.line,
            )
        if i + 1 < len(paragraphs):
            abstract = paragraphs[i + 1]
            if _reads_like_title(abstract.text):
                raise IngestError(
                    source,
                    f"expected the abstract of {title.text!r} (line {title.line}) but the "
                    f"paragraph reads like a title ({len(abstract.text)} characters): "
                    "that paper's abstract is missing",
                    line=abstract.line,
                )
    if len(paragraphs) % 2:
        last = paragraphs[-1]
        raise IngestError(
            source,
            f"odd number of paragraphs ({len(paragraphs)}) after the date line: the last "
            f"title {last.text[:60]!r} has no abstract; titles and abstracts must alternate",
            line=last.line,
        )


def json_dump_name(date: dt.date) -> str:
    """The file name `fetch` gives a day's JSON dump; ingest reads the day back from it."""
    return f"daily-papers-{date.isoformat()}.json"


def json_dump_date(source: str) -> dt.date:
    """The day of a JSON dump, from its name: the API's answer does not carry the day it was
    asked for (`publishedAt` is when each paper was published, often days earlier)."""
    m = _DATE_IN_NAME.search(Path(source).name)
    with contextlib.suppress(ValueError):
        if m:
            return dt.date.fromisoformat(m.group(1))
    raise IngestError(
        source,
        "a JSON dump's name must end in its day, YYYY-MM-DD.json (as `newsletter fetch` "
        "names them: daily-papers-2026-03-17.json); rename it",
    )


def parse_json_dump(
    data: bytes | str, *, source: str, date: dt.date, max_papers: int | None = None
) -> DailyListing:
    """One day's Daily Papers API answer as a listing for `date`, ranked by upvotes (the
    page's trending order; ties keep the API's order). A paper keeps its id rule (the hash of
    its normalised title), so one already known from a text dump is the same record, now with
    its arXiv id, authors and upvotes. An empty list is a listing with no entries."""
    day = parse_daily_papers(data, source=source)
    if max_papers is not None and len(day.papers) > max_papers:
        raise IngestError(
            source,
            f"{len(day.papers)} papers, more than NEWSLETTER_MAX_PAPERS_PER_DUMP "
            f"({max_papers}) allows; raise the setting if the answer is right",
        )
    ranked = sorted(day.papers, key=lambda p: -(p.upvotes or 0))
    entries: list[ListingEntry] = []
    seen: dict[str, ListingEntry] = {}
    warnings = list(day.warnings)
    for api in ranked:
        paper = _api_paper(api)
        if paper.id in seen:
            warnings.append(
                f"{source}: entry {api.position} ({api.title[:60]!r}) is listed again; "
                f"kept it once, at rank {seen[paper.id].rank}"
            )
            continue
        seen[paper.id] = entry = ListingEntry(rank=len(entries) + 1, paper=paper)
        entries.append(entry)
    content = json.dumps(
        [[e.paper.id, e.paper.title, e.paper.abstract, list(e.paper.links)] for e in entries]
    )
    return DailyListing(
        date=date,
        source=source,
        entries=tuple(entries),
        content_hash=hashlib.sha256(content.encode("utf-8")).hexdigest(),
        warnings=tuple(warnings),
    )


def _api_paper(api: ApiPaper) -> Paper:
    links = dict.fromkeys([*api.links, *extract_links(api.summary)])
    return Paper(
        id=paper_id(api.title),
        title=api.title,
        abstract=api.summary,
        links=tuple(links),
        arxiv_id=api.arxiv_id,
        authors=api.authors,
        upvotes=api.upvotes,
    )


def decode_dump(data: bytes, source: str) -> str:
    """Bytes to text, rejecting empty, binary and non-UTF-8 files with the line at fault."""
    if not data.strip(b"\xef\xbb\xbf \t\r\n"):
        raise IngestError(source, "the file is empty; remove it or re-export the day's page")
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise IngestError(
            source, "binary data (NUL byte); expected the page's text saved as UTF-8", line=line
        )
    try:
        # a stray control character (a bell, a backspace pasted from a terminal) would reach
        # the store and break the reader's Atom feed; tab and line breaks are the text's own
        return strip_control_chars(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise IngestError(
            source,
            f"not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the page text as UTF-8",
            line=line,
        ) from None


def read_dump(
    path: Path, *, reference: dt.date, year: int | None = None, max_papers: int | None = None
) -> DailyListing:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_DUMP_BYTES + 1)  # bounded: never the whole of a runaway file
    except OSError as exc:
        raise IngestError(path, f"cannot read the file: {exc.strerror}") from exc
    if len(data) > MAX_DUMP_BYTES:
        raise IngestError(
            path,
            f"the file is larger than {MAX_DUMP_BYTES // 2**20} MiB, far more than a day's "
            "listing (~100 KB); refused unread: is it the right file? (move it out of the "
            "seeds folder)",
        )
    if path.suffix == ".json":
        date = json_dump_date(str(path))
        return parse_json_dump(data, source=str(path), date=date, max_papers=max_papers)
    text = decode_dump(data, str(path))
    return parse_dump(text, source=str(path), reference=reference, year=year, max_papers=max_papers)


@dataclass(frozen=True, slots=True)
class Skipped:
    """An entry of the seeds folder that is not ingested, and why."""

    path: Path
    reason: str


def scan_dumps(location: Path) -> tuple[list[Path], list[Skipped]]:
    """The dumps in a folder (`*.txt` and `*.json` regular files or symlinks to them, sorted by
    name) and
    every other entry with the reason it is skipped; or the single file given. Hidden entries
    (dotfiles) are left alone silently. Nothing is opened: a FIFO would block."""
    if location.is_file():
        return [location], []
    if not location.is_dir():
        raise IngestError(location, "no such folder; set NEWSLETTER_SEEDS_DIR or pass --seeds")
    dumps: list[Path] = []
    skipped: list[Skipped] = []
    for path in sorted(location.iterdir()):
        if path.name.startswith("."):
            continue
        reason = _not_a_dump(path)
        if reason is None:
            dumps.append(path)
        else:
            skipped.append(Skipped(path, reason))
    return dumps, skipped


def _not_a_dump(path: Path) -> str | None:
    """Why `path` is not read as a dump, or None when it is one (symlinks are followed)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        target = os.readlink(path) if path.is_symlink() else "?"
        return f"a broken symlink (its target {target!r} does not exist); fix or remove the link"
    except OSError as exc:  # a symlink loop, a folder we may not enter
        return f"cannot be examined ({exc.strerror}); fix or remove it"
    if stat.S_ISDIR(mode):
        return "a folder; dumps are read from the top level of the seeds folder only"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not a regular file; not read"
    if stat.S_ISSOCK(mode):
        return "a socket, not a regular file; not read"
    if not stat.S_ISREG(mode):
        return "not a regular file (a device?); not read"
    if path.suffix not in DUMP_SUFFIXES:
        return "not named *.txt (page text) or *.json (a fetched day); rename it if it is a dump"
    if not os.access(path, os.R_OK):
        return "not readable (permission denied); make it readable or remove it"
    return None


def dump_files(location: Path) -> list[Path]:
    """The dumps in a folder (`*.txt`, `*.json`, sorted by name), or the single file given."""
    return scan_dumps(location)[0]


def read_dumps(
    paths: Iterable[Path],
    *,
    reference: dt.date,
    year: int | None = None,
    max_papers: int | None = None,
) -> list[DumpResult]:
    """Read every file; a bad file becomes an error result and the others still ingest, even
    when reading it fails in a way no check foresaw (a bug: logged with its traceback)."""
    results: list[DumpResult] = []
    for path in paths:
        try:
            listing = read_dump(path, reference=reference, year=year, max_papers=max_papers)
            results.append(DumpResult(path, listing=listing))
        except IngestError as exc:
            results.append(DumpResult(path, error=exc))
        except Exception as exc:
            log.exception("%s: unexpected error while reading it", path)
            results.append(DumpResult(path, error=unexpected(path, exc)))
    return results


def unexpected(path: Path | str, exc: Exception) -> IngestError:
    """The error of a dump that failed in a way no check caught: named, with what to do."""
    return IngestError(
        path,
        f"not ingested: unexpected {type(exc).__name__}: {first_line(exc)}; "
        "the other files go on; fix or remove this file (and report the error, with the file)",
    )


def first_line(exc: BaseException) -> str:
    """An exception's message for one line of a report (a driver's error runs to many)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else repr(exc)
