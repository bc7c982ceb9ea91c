"""The subscriber file: YAML validated with pydantic, every problem reported at once.

Each problem names the file, the line (`line N`), the subscriber, the field, the offending value
and the fix, so a user can correct the whole file in one pass. The validated file becomes plain
`Subscriber` dataclasses once, at the edge; nothing downstream sees YAML or pydantic.
"""

from __future__ import annotations

import datetime as dt
import gc
import re
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from newsletter.addresses import address_key, validate_address
from newsletter.errors import SubscriberConfigError
from newsletter.models import Subscriber, Topic
from newsletter.yamlfile import (
    Lines,
    Loader,
    NotPlain,
    PureLoader,
    line_of,
    read_document,
    read_document_nodes,
    walk,
)

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


TimeStr = Annotated[str, AfterValidator(_check_time)]
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
    """Validate the file's text; raise SubscriberConfigError listing every problem.

    The text is read once, with LibYAML's C parser where PyYAML has it. A file that is not
    valid YAML is read again by the pure-Python parser, so the message (and its line) is the
    same whichever parser is installed."""
    try:
        return _parse(text, source, Loader)
    except _NotYaml:
        if Loader is PureLoader:
            raise
        return _parse(text, source, PureLoader)


class _NotYaml(SubscriberConfigError):
    pass


def _parse(text: str, source: str, loader: type[Any]) -> list[Subscriber]:
    check = _Check(source)
    gc.disable()  # a load allocates millions of objects and frees none: collecting is waste
    try:
        try:
            raw, lines = read_document(text, loader, "subscribers", check.entry)
        except NotPlain:
            check = _Check(source)
            raw, lines = read_document_nodes(text, loader)
            entries = raw.get("subscribers") if isinstance(raw, dict) else None
            if isinstance(entries, list):
                raw["subscribers"] = [
                    check.entry_at(i, entry, walk(lines, ["subscribers", i]))
                    for i, entry in enumerate(entries)
                ]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise _NotYaml(
            source, [f"{source}, {where}not valid YAML ({getattr(exc, 'problem', exc)})"]
        ) from None
    finally:
        gc.enable()
    return check.finish(raw, lines)


class _Check:
    """The checks of one file: each subscriber as it is read, then the whole."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[tuple[int, int, str]] = []  # (line, phase, message)
        self.first_index: dict[str, tuple[int, str, int]] = {}

    def problem(
        self, phase: int, at: tuple[Lines | None, int], who: str, field: str, text: str
    ) -> None:
        line = at[1]
        message = f"{self.source}, line {line}: {who}field {field!r}: {text}"
        self.problems.append((line, phase, message))

    def entry(self, i: int, entry: Any, lines: Lines) -> SubscriberModel | None:
        """Check subscriber #i+1 as it is read (`lines`: its own)."""
        return self.entry_at(i, entry, (lines, line_of(lines)))

    def entry_at(self, i: int, entry: Any, at: tuple[Lines | None, int]) -> SubscriberModel | None:
        """Check subscriber #i+1, found `at` in the lines; the model, or None if invalid."""
        lines, start = at
        email = entry.get("email") if isinstance(entry, dict) else None
        who = f"subscriber #{i + 1}" + (f" {email!r}" if email else "") + ", "
        model: SubscriberModel | None = None
        try:
            model = SubscriberModel.model_validate(entry)
        except ValidationError as exc:
            for e in exc.errors():
                loc = list(e["loc"])
                field = ".".join(map(str, loc)) or "(entry)"
                kind = TopicModel if "topics" in loc and len(loc) > 2 else SubscriberModel
                self.problem(2, walk(lines, loc, start), who, field, _describe(e, kind))
        if isinstance(email, str) and email.strip():
            key = address_key(model.email if model is not None else email)
            at = walk(lines, ["email"], start)
            if key in self.first_index:
                n, first, first_line = self.first_index[key]
                self.problem(
                    2,
                    at,
                    who,
                    "email",
                    f"duplicate address: {email!r} duplicates subscriber #{n + 1} {first!r} "
                    f"(line {first_line}); emails compare "
                    "case-insensitively, in Unicode NFC, with the domain in Unicode or "
                    "punycode alike; remove or merge one of them",
                )
            else:
                self.first_index[key] = (i, email, at[1])
        return model

    def finish(self, raw: Any, lines: Lines | None) -> list[Subscriber]:
        """The top-level checks; the subscribers, or SubscriberConfigError with every problem."""
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
        items, _ = walk(lines, ["subscribers"])
        return [
            _to_subscriber(m, defaults, walk(items, [i])[1])
            for i, m in enumerate(entries)
            if m is not None
        ]


def _to_subscriber(m: SubscriberModel, d: DefaultsModel, line: int) -> Subscriber:
    hh, mm = (m.send_at or d.send_at).split(":")
    return Subscriber(
        email=m.email,
        name=m.name,
        timezone=m.timezone or d.timezone,
        send_at=dt.time(int(hh), int(mm)),
        max_papers=m.max_papers or d.max_papers,
        topics=tuple(
            Topic(name=t.name, keywords=tuple(t.keywords), description=t.description)
            for t in m.topics
        ),
        exclude=tuple(m.exclude),
        line=line,
        on_empty=m.on_empty or d.on_empty,
    )


def load_subscribers(path: Path) -> list[Subscriber]:
    """Read and validate the subscriber file (the only function here that does I/O)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SubscriberConfigError(
            path, [f"{path}: no such file; set NEWSLETTER_SUBSCRIBERS_FILE or create it"]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SubscriberConfigError(
            path, [f"{path}: cannot read it as UTF-8 text ({exc})"]
        ) from None
    return parse_subscribers(text, str(path))
