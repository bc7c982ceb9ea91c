"""The subscriber file: YAML validated with pydantic, every problem reported at once.

Each problem names the file, the line (`line N`), the subscriber, the field, the offending value
and the fix, so a user can correct the whole file in one pass. The validated file becomes plain
`Subscriber` dataclasses once, at the edge; nothing downstream sees YAML or pydantic.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import re
import zoneinfo
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeGuard

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from newsletter.addresses import address_key, validate_address
from newsletter.errors import SubscriberConfigError
from newsletter.mailboxes import Mailboxes
from newsletter.models import Subscriber, Topic
from newsletter.yamlfile import (
    Lines,
    Loader,
    MapLines,
    NotPlain,
    PureLoader,
    SeqLines,
    line_of,
    read_document,
    read_document_nodes,
    walk,
)
from newsletter.yamlscan import scan_document

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
NAME_MAX = 256  # characters in a display name; longer ones are surely a mistake
_SHOWN_MAX = 80  # a longer offending value is shortened in messages


def _check_time(value: str) -> str:
    if not _HHMM.match(value):
        raise ValueError('is not a 24-hour time; write it as "HH:MM", e.g. "07:30"')
    return value


def _check_zone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            'is not an IANA time zone; use a name such as "Europe/London" or "UTC"'
        ) from None
    return value


def _single_line(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("contains a line break or control character; keep it on one line")
    return value.strip()


def _display_name(value: str) -> str:
    if len(value) > NAME_MAX:
        raise ValueError(
            f"is {len(value)} characters long; shorten it to at most {NAME_MAX} (it is the "
            "display name in the digest's To: line and the greeting)"
        )
    return value


def _unquoted_time(value: object) -> object:
    """YAML 1.1 reads an unquoted 7:30 as the number 450 (base 60): name the quoted fix."""
    if isinstance(value, int) and not isinstance(value, bool):
        hours, minutes = divmod(value, 60)
        quoted = f'"{hours:02d}:{minutes:02d}"' if 0 <= hours < 24 else '"HH:MM"'
        raise ValueError(
            f"is a number: YAML reads an unquoted {quoted[1:-1]} as minutes; put the time "
            f"in quotes, e.g. {quoted}"
        )
    return value


TimeStr = Annotated[str, BeforeValidator(_unquoted_time), AfterValidator(_check_time)]
ZoneStr = Annotated[str, AfterValidator(_check_zone)]
Line = Annotated[str, AfterValidator(_single_line)]
DisplayName = Annotated[str, AfterValidator(_single_line), AfterValidator(_display_name)]
Term = Annotated[str, AfterValidator(_single_line), Field(min_length=1, max_length=200)]
MaxPapers = Annotated[int, Field(ge=1, le=50)]
OnEmpty = Literal["skip", "closest"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class TopicModel(_Strict):
    name: Line = Field(min_length=1, max_length=120)
    keywords: list[Term] = Field(min_length=1)
    description: Line = ""


class DefaultsModel(_Strict):
    max_papers: MaxPapers = 10
    send_at: TimeStr = "07:00"
    timezone: ZoneStr = "UTC"
    on_empty: OnEmpty = "skip"


class SubscriberModel(_Strict):
    email: str
    name: DisplayName = ""
    timezone: ZoneStr | None = None
    send_at: TimeStr | None = None
    max_papers: MaxPapers | None = None
    on_empty: OnEmpty | None = None
    topics: list[TopicModel] = Field(min_length=1)
    exclude: list[Term] = []

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return validate_address(value)


_FIXES = {
    "missing": "add it",
    "extra_forbidden": "remove it (allowed: {allowed})",
    "too_short": "give at least one",
    "string_too_short": "it must not be empty",
    "greater_than_equal": "use a number from 1 to 50",
    "less_than_equal": "use a number from 1 to 50",
    "int_parsing": "use a whole number from 1 to 50",
    "list_type": "write a YAML list, e.g. [a, b]",
    "string_type": "write text",
    "model_type": "write a mapping of field: value",
    "literal_error": "write skip (send nothing on a day nothing matches) or closest (send the "
    "3 closest papers, labelled)",
}


def _allowed(model: type[BaseModel]) -> str:
    return ", ".join(model.model_fields)


def _describe(err: Any, model: type[BaseModel]) -> str:
    kind = err["type"]
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    shown = f"{value!r}" if kind != "missing" and not isinstance(value, dict) else ""
    if len(shown) > _SHOWN_MAX:
        shown = shown[: _SHOWN_MAX - 3] + "..."
    fix = _FIXES.get(kind, "").format(allowed=_allowed(model))
    if kind == "extra_forbidden":
        return f"unknown field; {fix}"
    if kind == "missing":
        return f"is missing; {fix}"
    if kind.startswith("value_error") or kind == "assertion_error":
        return f"{shown} {msg}".strip()
    return f"{shown} {msg.lower()}{'; ' + fix if fix else ''}".strip()


def parse_subscribers(text: str, source: str = "<subscribers>") -> list[Subscriber]:
    """Validate the file's text; raise SubscriberConfigError listing every problem."""
    return _parse_pieces(lambda: (text,), source)


def _parse_pieces(pieces: Callable[[], Iterable[str]], source: str) -> list[Subscriber]:
    """Validate the text made of `pieces()` (each ending at a line end).

    The text is read once: by the scanner (`yamlscan`) when it is written in the plain subset
    of YAML subscriber files use, a piece at a time; else, whole, with LibYAML's C parser where
    PyYAML has it. A file that is not valid YAML is read again by the pure-Python parser, so the
    message (and its line) is the same whichever parser is installed."""
    subs: list[Subscriber]
    try:
        subs = _parse(pieces, source, Loader)
    except _NotYaml:
        if Loader is PureLoader:
            raise
        subs = _parse(pieces, source, PureLoader)
    return subs


class _NotYaml(SubscriberConfigError):
    pass


def _parse(
    pieces: Callable[[], Iterable[str]], source: str, loader: type[Any], outline: bool = False
) -> Any:
    # A load allocates millions of objects and frees few: collecting meanwhile is waste (the
    # subscribers built at the end would otherwise pay for full collections over the rest).
    collecting = gc.isenabled()
    gc.disable()
    try:
        check = _Check(source, keep=not outline)
        raw, lines = _read(pieces, source, loader, check)
        if outline:
            return check.outline(raw, lines)
        return check.finish(raw, lines)
    finally:
        if collecting:
            gc.enable()


@dataclass(frozen=True, slots=True)
class Outline:
    """A valid file without its subscribers: what reading them again a chunk at a time needs
    (see `roster`)."""

    defaults: DefaultsModel
    lines: array[int]  # each subscriber's line
    mailboxes: Mailboxes  # each subscriber's address_key, in file order
    end: int | None  # the line of the first top-level key after the list (None: end of file)
    topics: int  # topics in all
    scanned: bool  # read by the scanner: else the lines are not those of pieces of the text

    def index(self, key: str) -> int | None:
        """The index of the subscriber with this address_key, if any."""
        return self.mailboxes.find(key)


def outline_subscribers(pieces: Callable[[], Iterable[str]], source: str) -> Outline:
    """Check the text made of `pieces()` as `parse_subscribers` does (every problem at once),
    keeping only its outline."""
    outline: Outline
    try:
        outline = _parse(pieces, source, Loader, outline=True)
    except _NotYaml:
        if Loader is PureLoader:
            raise
        outline = _parse(pieces, source, PureLoader, outline=True)
    return outline


def read_chunk(
    text: str, source: str, defaults: DefaultsModel, lines: Sequence[int], shared: Shared
) -> list[Subscriber]:
    """The subscribers written in `text`, some items of a file's list as written there, each
    with its line in `lines`: a piece of a file checked before (see `roster`). `shared` is
    kept from one piece to the next."""
    check = _Check(source, shared=shared)
    try:
        raw, _ = scan_document(["subscribers:\n", text], "subscribers", check.entry)
    except NotPlain:
        raw = None
    entries = raw.get("subscribers") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or len(entries) != len(lines) or None in entries:
        raise SubscriberConfigError(source, [f"{source}: changed while it was read; run again"])
    return [_to_subscriber(e, defaults, line) for e, line in zip(entries, lines, strict=True)]


def _read(
    pieces: Callable[[], Iterable[str]], source: str, loader: type[Any], check: _Check
) -> tuple[Any, Lines | None]:
    """The document's values and lines, each subscriber checked by `check` as it is read."""
    try:
        return _read_any(pieces, loader, check)
    except RecursionError:  # the readers recurse per level: no real file nests this deep
        raise _NotYaml(
            source, [f"{source}: not valid YAML (lists or mappings nested too deeply)"]
        ) from None


def _read_any(
    pieces: Callable[[], Iterable[str]], loader: type[Any], check: _Check
) -> tuple[Any, Lines | None]:
    source = check.source
    try:
        check.scanned = True
        return scan_document(pieces(), "subscribers", check.entry)
    except NotPlain:
        check.restart()
    text = "".join(pieces())
    try:
        try:
            return read_document(text, loader, "subscribers", check.entry)
        except NotPlain:
            check.restart()
            raw, lines = read_document_nodes(text, loader)
            entries = raw.get("subscribers") if isinstance(raw, dict) else None
            if isinstance(entries, list):
                raw["subscribers"] = [
                    check.entry_at(i, entry, walk(lines, ["subscribers", i]))
                    for i, entry in enumerate(entries)
                ]
            return raw, lines
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise _NotYaml(
            source, [f"{source}, {where}not valid YAML ({getattr(exc, 'problem', exc)})"]
        ) from None


class _Check:
    """The checks of one file: each subscriber as it is read, then the whole."""

    def __init__(self, source: str, keep: bool = True, shared: Shared | None = None) -> None:
        self.source = source
        self.keep = keep  # False: check each subscriber, keep none
        self.given = shared
        self.restart()

    def restart(self) -> None:
        """Forget the subscribers checked so far (the file is read again another way)."""
        self.scanned = False
        self.topics = 0  # in the valid subscribers
        self.problems: list[tuple[int, int, str]] = []  # (line, phase, message)
        self.mailboxes = Mailboxes()  # each address_key once, where it was first
        # equal values read as one object (see fast_entry)
        self.shared = self.given or Shared(None if self.keep else SHARED_LIMIT)

    def problem(
        self, phase: int, at: tuple[Lines | None, int], who: str, field: str, text: str
    ) -> None:
        line = at[1]
        message = f"{self.source}, line {line}: {who}field {field!r}: {text}"
        self.problems.append((line, phase, message))

    def entry(self, i: int, entry: Any, lines: Lines) -> Entry | None:
        """Check subscriber #i+1 as it is read (`lines`: its own)."""
        valid = self.entry_at(i, entry, (lines, line_of(lines)))
        return valid if self.keep else None

    def entry_at(self, i: int, entry: Any, at: tuple[Lines | None, int]) -> Entry | None:
        """Check subscriber #i+1, found `at` in the lines; its fields, or None if invalid.

        An entry `fast_entry` vouches for skips pydantic; any other goes through the models,
        whose errors make the messages."""
        email = entry.get("email") if isinstance(entry, dict) else None
        valid = fast_entry(entry, self.shared)
        self.shared.bound()
        if valid is None:
            valid = self.validated(i, entry, at, email)
        if valid is not None:
            self.topics += len(valid[6])
        if isinstance(email, str) and email.strip():
            key = address_key(valid[0] if valid is not None else email)
            email_at = walk(at[0], ["email"], at[1])
            boxes = self.mailboxes
            first = boxes.add(i, key, email, email_at[1])
            if first is not None:
                n, first_email, first_line = boxes.place(first)
                self.problem(
                    2,
                    email_at,
                    f"subscriber #{i + 1} {email!r}, ",
                    "email",
                    f"duplicate address: {email!r} duplicates subscriber #{n + 1} "
                    f"{first_email!r} (line {first_line}); emails compare case-insensitively, "
                    "in Unicode NFC, with the domain in Unicode or punycode alike; remove or "
                    "merge one of them",
                )
        return valid

    def validated(
        self, i: int, entry: Any, at: tuple[Lines | None, int], email: Any
    ) -> Entry | None:
        """Subscriber #i+1 through the pydantic model: its fields, or None with its problems."""
        lines, start = at
        who = f"subscriber #{i + 1}" + (f" {email!r}" if email else "") + ", "
        try:
            m = SubscriberModel.model_validate(entry)
        except ValidationError as exc:
            for e in exc.errors():
                loc = list(e["loc"])
                field = ".".join(map(str, loc)) or "(entry)"
                kind = TopicModel if "topics" in loc and len(loc) > 2 else SubscriberModel
                self.problem(2, walk(lines, loc, start), who, field, _describe(e, kind))
            return None
        topics = tuple(Topic(t.name, tuple(t.keywords), t.description) for t in m.topics)
        return (
            m.email,
            m.name,
            m.timezone,
            m.send_at,
            m.max_papers,
            m.on_empty,
            topics,
            tuple(m.exclude),
        )

    def finish(self, raw: Any, lines: Lines | None) -> list[Subscriber]:
        """The top-level checks; the subscribers, or SubscriberConfigError with every problem."""
        defaults = self.verdict(raw, lines)
        items, _ = walk(lines, ["subscribers"])
        assert isinstance(items, SeqLines)
        return [
            _to_subscriber(m, defaults, line_of(item))
            for m, item in zip(raw["subscribers"], items.children, strict=True)
            if m is not None
        ]

    def outline(self, raw: Any, lines: Lines | None) -> Outline:
        """The top-level checks; the file's outline, or SubscriberConfigError."""
        defaults = self.verdict(raw, lines)
        items, _ = walk(lines, ["subscribers"])
        assert isinstance(items, SeqLines) and isinstance(lines, MapLines)
        after = lines.keys.index("subscribers") + 1
        return Outline(
            defaults,
            array("I", map(line_of, items.children)),
            self.mailboxes,
            lines.key_lines[after] if after < len(lines.keys) else None,
            self.topics,
            self.scanned,
        )

    def verdict(self, raw: Any, lines: Lines | None) -> DefaultsModel:
        """The top-level checks: the defaults, or SubscriberConfigError with every problem."""
        source = self.source
        if not isinstance(raw, dict):
            raise SubscriberConfigError(
                source, [f"{source}, line 1: expected a mapping with 'defaults' and 'subscribers'"]
            )
        for key in raw:
            if key not in ("defaults", "subscribers"):
                self.problem(
                    0,
                    walk(lines, [key]),
                    "",
                    str(key),
                    "unknown top-level key; allowed: defaults, subscribers",
                )

        defaults = DefaultsModel()
        try:
            defaults = DefaultsModel.model_validate(raw.get("defaults") or {})
        except ValidationError as exc:
            for e in exc.errors():
                at = walk(lines, ["defaults", *e["loc"]])
                field = ".".join(map(str, e["loc"]))
                self.problem(1, at, "defaults: ", field, _describe(e, DefaultsModel))

        entries = raw.get("subscribers")
        if not isinstance(entries, list) or not entries:
            at = walk(lines, ["subscribers"])
            self.problem(1, at, "", "subscribers", "give a list with at least one subscriber")
            entries = []

        if self.problems:
            # In file order, so the user can fix them top to bottom.
            raise SubscriberConfigError(
                source, [m for *_, m in sorted(self.problems, key=lambda p: p[:2])]
            )
        return defaults


def _to_subscriber(e: Entry, d: DefaultsModel, line: int) -> Subscriber:
    email, name, timezone, send_at, max_papers, on_empty, topics, exclude = e
    return Subscriber(
        email=email,
        name=name,
        timezone=timezone or d.timezone,
        send_at=_clock(send_at or d.send_at),
        max_papers=max_papers or d.max_papers,
        topics=topics,
        exclude=exclude,
        line=line,
        on_empty=on_empty or d.on_empty,
    )


@lru_cache(maxsize=1024)
def _clock(hhmm: str) -> dt.time:
    hh, mm = hhmm.split(":")
    return dt.time(int(hh), int(mm))


# --- the fast path -----------------------------------------------------------------------------
# (email, name, timezone, send_at, max_papers, on_empty, topics, exclude): a valid entry's fields
# as the model gives them; None where the entry leaves a setting to the defaults.
Entry = tuple[
    str, str, str | None, str | None, int | None, str | None, tuple[Topic, ...], tuple[str, ...]
]
_ENTRY_KEYS = frozenset(SubscriberModel.model_fields)
_TOPIC_KEYS = frozenset(TopicModel.model_fields)


class Shared:
    """One file's values read as one object each: `values` (settings, term tuples), `terms`
    (keywords that passed the check) and `topics` (checked topics by their fields)."""

    __slots__ = ("limit", "terms", "topics", "values")

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit  # values kept at most (None: all; a pass that keeps nothing)
        self.values: dict[Any, Any] = {}
        self.terms: dict[str, str] = {}
        self.topics: dict[tuple[Any, ...], Topic] = {}

    def bound(self) -> None:
        """Forget what is over the limit (sharing is then only a cache): topics and settings
        first; the keywords, a few hundred that recur everywhere, only when they too are many."""
        if self.limit is None:
            return
        if len(self.topics) + len(self.values) > self.limit:
            self.values.clear()
            self.topics.clear()
        if len(self.terms) > self.limit:
            self.terms.clear()


SHARED_LIMIT = 20_000  # values a pass that keeps no subscriber remembers for sharing


def fast_entry(entry: Any, shared: Shared | None = None) -> Entry | None:
    """The fields of an entry that is plainly valid, as `SubscriberModel` would give them; None
    when it is not plainly so (then the model decides, and words any problem).

    "Plainly" is narrower than valid: exact types (str, int, list, dict; no coercion), text with
    nothing for `str_strip_whitespace` to strip and no control character, known keys only. Each
    check is the model's own rule, so anything accepted here the model accepts unchanged.

    Equal topics, keywords and settings become one object through `shared` (one per file):
    100,000 subscribers repeat a few hundred keywords and zones many times over."""
    if shared is None:
        shared = Shared()
    if type(entry) is not dict or not _ENTRY_KEYS.issuperset(entry):
        return None
    email = entry.get("email")
    name = entry.get("name", "")
    timezone = entry.get("timezone")
    send_at = entry.get("send_at")
    max_papers = entry.get("max_papers")
    on_empty = entry.get("on_empty")
    exclude = entry.get("exclude", [])
    if not _plain(email):
        return None
    if not (
        _line(name, 0, NAME_MAX)
        and (timezone is None or (_plain(timezone) and _zone_ok(timezone)))
        and (send_at is None or (_plain(send_at) and _HHMM.match(send_at) is not None))
        and (max_papers is None or (type(max_papers) is int and 1 <= max_papers <= 50))
        and (on_empty is None or on_empty in ("skip", "closest"))
        and type(exclude) is list
        and all(_line(term, 1, 200) for term in exclude)
    ):
        return None
    topics = _fast_topics(entry.get("topics"), shared)
    if topics is None:
        return None
    normal = _address(email)
    if normal is None:
        return None
    share = shared.values.setdefault
    return (
        normal,
        name,
        timezone and share(timezone, timezone),
        send_at and share(send_at, send_at),
        max_papers,
        on_empty,
        topics,
        share(tuple(exclude), tuple(exclude)) if exclude else (),
    )


def _fast_topics(given: Any, shared: Shared) -> tuple[Topic, ...] | None:
    if type(given) is not list or not given:
        return None
    topics = []
    known_terms, known_topics = shared.terms, shared.topics
    for t in given:
        if type(t) is not dict or not _TOPIC_KEYS.issuperset(t):
            return None
        name, keywords, description = t.get("name"), t.get("keywords"), t.get("description", "")
        if type(keywords) is not list or not keywords or type(name) is not str:
            return None
        if type(description) is not str:
            return None
        terms = []
        for k in keywords:
            term = known_terms.get(k) if type(k) is str else None
            if term is None:
                if not _line(k, 1, 200):
                    return None
                term = known_terms[k] = k
            terms.append(term)
        key = (name, tuple(terms), description)  # a tuple hashes in C; a dataclass in Python
        topic = known_topics.get(key)
        if topic is None:
            if not (_line(name, 1, 120) and _line(description, 0, None)):
                return None
            share = shared.values.setdefault
            topic = Topic(name, share(key[1], key[1]), share(description, description))
            known_topics[key] = topic
        topics.append(topic)
    return tuple(topics)


def _plain(value: Any) -> TypeGuard[str]:
    """A str with no leading or trailing whitespace (what the model's strip leaves as is)."""
    return type(value) is str and value.strip() == value


# One line with nothing to strip: no control character, no whitespace at either end (`\s` is
# what str.strip strips).
_ONE_LINE = re.compile(r"(?:[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?)?")


def _line(value: Any, shortest: int, longest: int | None) -> TypeGuard[str]:
    """A plain str, on one line, of an allowed length (the model's `Line`/`Term` rules)."""
    return (
        type(value) is str
        and shortest <= len(value)
        and (longest is None or len(value) <= longest)
        and _ONE_LINE.fullmatch(value) is not None
    )


@lru_cache(maxsize=1024)
def _zone_ok(name: str) -> bool:
    try:
        _check_zone(name)
    except ValueError:
        return False
    return True


def _address(email: str) -> str | None:
    try:
        return validate_address(email)
    except ValueError:
        return None


def load_subscribers(path: Path) -> list[Subscriber]:
    """Read and validate the subscriber file (this and `check_subscribers` do the I/O)."""
    with reading(path):
        return _parse_pieces(lambda: _pieces(path), str(path))


def check_subscribers(path: Path) -> Outline:
    """Validate the subscriber file as `load_subscribers` does, keeping only its outline."""
    with reading(path):
        return outline_subscribers(lambda: _pieces(path), str(path))


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """A file that cannot be read, or not as UTF-8 text, as a SubscriberConfigError."""
    try:
        yield
    except FileNotFoundError:
        raise SubscriberConfigError(
            path, [f"{path}: no such file; set NEWSLETTER_SUBSCRIBERS_FILE or create it"]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SubscriberConfigError(
            path, [f"{path}: cannot read it as UTF-8 text ({exc})"]
        ) from None


PIECE = 1 << 16  # characters of the file read at a time (and lines split at once)


def _pieces(path: Path) -> Iterator[str]:
    """The file's text in pieces of whole lines (line ends read as LF, as `read_text` does)."""
    with path.open(encoding="utf-8") as file:
        while lines := file.readlines(PIECE):
            yield "".join(lines)
