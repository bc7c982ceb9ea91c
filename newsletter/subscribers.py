"""The subscriber file: YAML validated with pydantic, every problem reported at once.

Each problem names the file, the line (`line N`), the subscriber, the field, the offending value
and the fix, so a user can correct the whole file in one pass. The validated file becomes plain
`Subscriber` dataclasses once, at the edge; nothing downstream sees YAML or pydantic.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Sequence
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


class _Lines:
    """Line numbers of the YAML nodes, looked up by the path pydantic reports."""

    def __init__(self, node: yaml.Node | None) -> None:
        self.root = node

    def find(self, path: Sequence[str | int]) -> int:
        node, line = self.root, 1
        for part in path:
            if node is None:
                break
            line = node.start_mark.line + 1
            nxt: yaml.Node | None = None
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if k.value == part:
                        line, nxt = k.start_mark.line + 1, v
                        break
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(part, int)
                and part < len(node.value)
            ):
                nxt = node.value[part]
                line = nxt.start_mark.line + 1
            node = nxt
        return line


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
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise SubscriberConfigError(
            source, [f"{source}, {where}not valid YAML ({getattr(exc, 'problem', exc)})"]
        ) from None
    lines = _Lines(node)
    problems: list[tuple[int, str]] = []

    def problem(path: Sequence[str | int], who: str, field: str, text_: str) -> None:
        line = lines.find(path)
        problems.append((line, f"{source}, line {line}: {who}field {field!r}: {text_}"))

    if not isinstance(raw, dict):
        raise SubscriberConfigError(
            source, [f"{source}, line 1: expected a mapping with 'defaults' and 'subscribers'"]
        )
    for key in raw:
        if key not in ("defaults", "subscribers"):
            problem([key], "", str(key), "unknown top-level key; allowed: defaults, subscribers")

    defaults = DefaultsModel()
    try:
        defaults = DefaultsModel.model_validate(raw.get("defaults") or {})
    except ValidationError as exc:
        for e in exc.errors():
            path = ["defaults", *e["loc"]]
            problem(path, "defaults: ", ".".join(map(str, e["loc"])), _describe(e, DefaultsModel))

    entries = raw.get("subscribers")
    if not isinstance(entries, list) or not entries:
        problem(["subscribers"], "", "subscribers", "give a list with at least one subscriber")
        entries = []

    valid: list[tuple[int, SubscriberModel]] = []
    first_index: dict[str, tuple[int, str]] = {}
    for i, entry in enumerate(entries):
        email = entry.get("email") if isinstance(entry, dict) else None
        who = f"subscriber #{i + 1}" + (f" {email!r}" if email else "") + ", "
        model: SubscriberModel | None = None
        try:
            model = SubscriberModel.model_validate(entry)
            valid.append((i, model))
        except ValidationError as exc:
            for e in exc.errors():
                loc = [p for p in e["loc"]]
                field = ".".join(map(str, loc)) or "(entry)"
                kind = TopicModel if "topics" in loc and len(loc) > 2 else SubscriberModel
                problem(["subscribers", i, *loc], who, field, _describe(e, kind))
        if isinstance(email, str) and email.strip():
            key = address_key(model.email if model is not None else email)
            if key in first_index:
                n, first = first_index[key]
                problem(
                    ["subscribers", i, "email"],
                    who,
                    "email",
                    f"duplicate address: {email!r} duplicates subscriber #{n + 1} {first!r} "
                    f"(line {lines.find(['subscribers', n, 'email'])}); emails compare "
                    "case-insensitively, in Unicode NFC, with the domain in Unicode or "
                    "punycode alike; remove or merge one of them",
                )
            else:
                first_index[key] = (i, email)

    if problems:
        # In file order, so the user can fix them top to bottom.
        raise SubscriberConfigError(source, [m for _, m in sorted(problems, key=lambda p: p[0])])
    return [_to_subscriber(m, defaults, lines.find(["subscribers", i])) for i, m in valid]


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
