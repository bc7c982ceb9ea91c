"""The line scanner reads what the YAML parser reads, or leaves the text to it: never a different
value, line or message (generated, mutated and hand-written files)."""

from __future__ import annotations

import random
from typing import Any

import pytest
import yaml

from newsletter import subscribers
from newsletter.errors import SubscriberConfigError
from newsletter.subscribers import parse_subscribers
from newsletter.yamlfile import NotPlain, read_document
from newsletter.yamlscan import scan_document

from .conftest import EXAMPLE_SUBSCRIBERS
from .test_subscribers import BAD as SUBSCRIBERS_BAD

# Scalars people write, then some that read as other types, or that only the parser reads.
WORDS = ["RL", "offline RL", "Élodie", "naïve", "日本語", "v1.0", "100%", "Ada Lovelace", "5"]
WORDS += ["Europe/London", "07:30", "skip", "1_0", "0x1F", "010", "yes", "null", "~", "-1"]
WORDS += ["2026-01-01", "3.5", ".inf", "+1", "Grace\u00a0Hopper", "emoji 🎉", "e@x.org"]
ODD = ["a:b", "x # y", "C#", "a, b", "x]y", "tail  ", "a'b", 'a"b', "<<", "on", "true", "NO"]


def _scalar(rng: random.Random) -> str:
    word = rng.choice(ODD if rng.random() < 0.03 else WORDS)
    style = rng.randrange(4)
    if style == 0 and '"' not in word:
        return f'"{word}"'
    if style == 1 and "'" not in word:
        return f"'{word}'"
    return word


def _flow(rng: random.Random, depth: int = 0) -> str:
    kind = rng.randrange(5 if depth < 2 else 3)
    if kind < 3:
        return _scalar(rng)
    if kind == 3:
        items = [_flow(rng, depth + 1) for _ in range(rng.randrange(4))]
        return "[" + rng.choice([", ", ",", " , "]).join(items) + rng.choice(["]", " ]"])
    keys = ["name", "keywords", "description", "on_empty", "on" if rng.random() < 0.03 else "x"]
    keys = rng.sample(keys, rng.randrange(1, 4))
    return "{" + ", ".join(f"{k}: {_flow(rng, depth + 1)}" for k in keys) + "}"


def _value(rng: random.Random) -> str:
    value = _flow(rng)
    if rng.random() < 0.1:
        value += rng.choice(["  # note", " #", "   "])
    return value


def generated(rng: random.Random, n: int) -> str:
    """A subscriber-like file with the variety people write (and some they should not)."""
    lines = ["# subscribers", 'defaults: {max_papers: 10, send_at: "07:00", timezone: UTC}', ""]
    lines.append("subscribers:" + rng.choice(["", "  # everyone"]))
    dash = rng.choice(["  - ", "- ", "  -   "])
    pad = " " * len(dash)
    for i in range(n):
        quote = rng.choice(["", '"', "'"])
        lines.append(f"{dash}email: {quote}r{i}@example.org{quote}")
        for key in rng.sample(["name", "timezone", "send_at", "max_papers", "on_empty"], 2):
            if rng.random() < 0.1:
                lines.append(f"{pad}{key}:")
            else:
                lines.append(f"{pad}{key}: {_value(rng)}")
        if rng.random() < 0.2:
            lines.append(rng.choice(["", "   # a comment", "#"]))
        lines.append(f"{pad}topics:")
        inner = pad + rng.choice(["", "  ", "    "])
        for _ in range(rng.randint(1, 2)):
            if rng.random() < 0.3:
                lines.append(f"{inner}- {_flow(rng, 1)}")
                continue
            lines.append(f"{inner}- name: {_value(rng)}")
            lines.append(f"{inner}  keywords: {_value(rng)}")
            if rng.random() < 0.3:
                lines.append(f"{inner}  keywords2:")
                lines.append(f"{inner}    - {_value(rng)}")
                lines.append(f"{inner}    - {_value(rng)}")
    return "\n".join(lines) + rng.choice(["\n", "", "\n\n"])


MUTATIONS = [":", " ", "  ", "#", "-", "- ", '"', "'", "\t", "[", "]", "{", "}", ",", "&a ", "*a"]
MUTATIONS += ["!x ", "|", ">", "\\", "\r", "\ufeff", "? ", "\u2028", "---", "x: y", "on: 1"]


def mutated(rng: random.Random, text: str) -> str:
    """The text with a few random edits: most make it other YAML, or no YAML at all."""
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(text) + 1)
        if rng.random() < 0.3:
            text = text[:at] + text[at + rng.randint(1, 4) :]
        else:
            text = text[:at] + rng.choice(MUTATIONS) + text[at:]
    return text


def read_both(text: str) -> tuple[Any, Any]:
    """(scanner's result or "NotPlain", parser's result or "error"), each as the value and
    lines of the document and the items passed out with their lines."""

    def run(read: Any) -> Any:
        items: list[Any] = []

        def on_item(i: int, entry: Any, lines: Any) -> int:
            items.append((i, entry, lines))
            return i

        try:
            return read(on_item), items
        except NotPlain:
            return "NotPlain"
        except yaml.YAMLError:
            return "error"

    scanned = run(lambda on: scan_document(_pieces(text), "subscribers", on))
    parsed = run(lambda on: read_document(text, yaml.CSafeLoader, "subscribers", on))
    return scanned, parsed


def _pieces(text: str) -> list[str]:
    """The text cut at a few line ends (as a file is read)."""
    lines = text.splitlines(keepends=True)
    cuts = sorted(random.Random(len(text)).sample(range(len(lines) + 1), min(3, len(lines))))
    return ["".join(lines[a:b]) for a, b in zip([0, *cuts], [*cuts, len(lines)], strict=True)]


def test_generated_files_read_the_same_by_both() -> None:
    rng = random.Random(5)
    taken = 0
    for _ in range(300):
        text = generated(rng, rng.randint(1, 4))
        scanned, parsed = read_both(text)
        if scanned != "NotPlain":
            taken += 1
            assert scanned == parsed, text
    assert taken >= 100  # the shortcut is taken on most plain files


def test_mutated_files_are_read_the_same_or_left_to_the_parser() -> None:
    rng = random.Random(7)
    taken = errors = 0
    for _ in range(1500):
        text = mutated(rng, generated(rng, rng.randint(1, 2)))
        scanned, parsed = read_both(text)
        errors += parsed == "error"
        if scanned != "NotPlain":
            taken += 1
            assert scanned == parsed, text  # never accepts what the parser refuses
    assert taken >= 120 and errors >= 200


TRICKY = [
    "subscribers:\n  - email: a@x.org\n    name: &n Ada\n    topics: [*n]\n",  # anchors
    "subscribers:\n  - email: a@x.org\n    name: Ada\n      Lovelace\n",  # multi-line plain
    'subscribers:\n  - email: a@x.org\n    name: "Ada\n      Lovelace"\n',  # multi-line quoted
    "subscribers:\n  - email: a@x.org\n    name: |\n      Ada\n",  # block scalar
    "subscribers:\n  - email: a@x.org\n    name: >-\n      Ada\n",
    "subscribers:\n\t- email: a@x.org\n",  # a tab
    "subscribers:\n  - email: a@x.org\n    name:\tAda\n",
    "subscribers:\n  - email: a@x.org\n    email: b@x.org\n",  # duplicate keys
    "subscribers: []\nsubscribers:\n  - email: a@x.org\n",
    "subscribers:\n  - {email: a@x.org, email: b@x.org}\n",
    'subscribers:\n  - email: a@x.org\n    name: "Ada: the first"\n',  # quotes with colons
    "subscribers:\n  - email: a@x.org\n    name: 'Ada: #1'\n",
    "subscribers:\n  - email: a@x.org\n    name: Ada: first\n",  # not YAML
    'subscribers:\n  - email: a@x.org\n    name: "Ada \\u00e9"\n',  # an escape
    "subscribers:\n  - email: a@x.org\n    name: 'it''s'\n",
    "subscribers:\n  - email: Élodie@bücher.example\n    name: 日本語 🎉\n",  # unicode
    "\ufeffsubscribers:\n  - email: a@x.org\n",  # a byte-order mark
    "subscribers:\r\n  - email: a@x.org\r\n",  # CRLF
    "---\nsubscribers:\n  - email: a@x.org\n...\n",  # document markers
    "subscribers:\n  - email: a@x.org\n---\nother: 1\n",
    "on: 1\nsubscribers:\n  - email: a@x.org\n",  # a key that reads as a boolean
    "subscribers:\n  - email: a@x.org\n    <<: {name: Ada}\n",  # merge key
    "subscribers:\n  - email: a@x.org\n    topics: [a, ]\n",  # trailing comma
    "subscribers:\n  - email: a@x.org\n    topics: [a,\n      b]\n",  # flow over two lines
    "subscribers:\n  - email: a@x.org\n    topics: !!str 5\n",  # a tag
    "subscribers:\n- email: a@x.org\n  topics:\n  - name: T\n    keywords: [k]\n",
    "subscribers:\n  # first\n  - email: a@x.org # who\n\n    # then\n    topics: # list\n"
    "      - name: T\n",  # comments everywhere
    "subscribers:\n  - email: a@x.org\n   name: Ada\n",  # indentation the parser refuses
    "subscribers:\n  - email: a@x.org\n  name: Ada\n",
    "subscribers:\n  -\n    email: a@x.org\n",  # an item on the next line
    "subscribers:\n  - - a@x.org\n",
    "subscribers:\n  - email: a@x.org\n    max_papers: 0o12\n    send_at: 07:30\n",
    "subscribers:\n  - email: a@x.org\n    name: x#y\n    send_at: 12:30:00\n",
    'subscribers:\n  - email: a@x.org\n    name: "x"#y\n',
    "  subscribers:\n    - email: a@x.org\n",  # the whole document indented
    "# nothing\n",
    "",
    "subscribers\n",
    "subscribers:\n  - email: a@x.org\n    name: a\u2028b\n",  # a line separator
    "subscribers:\n  - email: a@x.org\n    name: a\x85b\n",
    "subscribers:\n  - email: a@x.org\n    'name': Ada\n",  # a quoted key
    "subscribers:\n  - email: a@x.org\n    ? name\n    : Ada\n",
]


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_yaml_reads_the_same_or_is_left_to_the_parser(text: str) -> None:
    scanned, parsed = read_both(text)
    assert scanned in ("NotPlain", parsed)


@pytest.mark.parametrize(
    "index", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 14, 16, 17, 18, 20, 21, 22, 23, 24, 30]
)
def test_what_the_scanner_must_leave_to_the_parser(index: int) -> None:
    """Anchors, multi-line and block scalars, tabs, duplicate keys, escapes, a BOM, CRLF,
    markers, boolean keys, merge keys, trailing commas, multi-line flows, tags, nested dashes."""
    with pytest.raises(NotPlain):
        scan_document([TRICKY[index]], "subscribers", lambda i, e, lines: i)


def test_the_scanner_takes_the_example_and_a_generated_large_file() -> None:
    text = EXAMPLE_SUBSCRIBERS.read_text(encoding="utf-8")
    scanned, parsed = read_both(text)
    assert scanned == parsed and len(parsed[1]) == 5


def _problems(text: str) -> Any:
    try:
        return parse_subscribers(text, "subs.yaml")
    except SubscriberConfigError as exc:
        return exc.problems


def _parser_only(*_: Any) -> Any:
    raise NotPlain("the test reads with the parser")


# test_subscribers' file with every kind of problem, written in the subset the scanner reads
# (its name's escaped CR LF would send it to the parser), and two more subscribers' problems.
BAD = (
    SUBSCRIBERS_BAD.replace("Eve\\r\\nBcc", "Eve Bcc")
    + """\
  - email: b@example.org
    on_empty: never
    exclude: ["", ok]
    topics:
    - {name: "", keywords: [a, b], description: 5}
"""
)


def test_subscribers_and_every_message_are_the_same_through_either_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(11)
    texts = [BAD, EXAMPLE_SUBSCRIBERS.read_text(encoding="utf-8"), *TRICKY]
    texts += [mutated(rng, BAD) for _ in range(150)]
    texts += [generated(rng, 3) for _ in range(50)]
    scanned = [_problems(t) for t in texts]
    monkeypatch.setattr(subscribers, "scan_document", _parser_only)
    parsed = [_problems(t) for t in texts]
    for text, a, b in zip(texts, scanned, parsed, strict=True):
        assert a == b, text
    assert len(scanned[0]) >= 12 and all(" line " in p for p in scanned[0])
