"""The subscriber file: valid examples load; a bad file reports every problem at once."""

from __future__ import annotations

import datetime as dt
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from newsletter import subscribers
from newsletter.addresses import address_key
from newsletter.cli import cli
from newsletter.errors import SubscriberConfigError
from newsletter.subscribers import check_subscribers, load_subscribers, parse_subscribers

from .conftest import EXAMPLE_SUBSCRIBERS

BAD = """\
defaults: {max_papers: 10, send_at: "7am", timezone: UTC}
colour: blue
subscribers:
  - email: ada@example.org
    name: Ada
    timezone: Europe/Lodnon
    send_at: "25:00"
    max_papers: 99
    topics:
      - name: X
        keywords: []
    hobby: chess
  - email: ADA@example.org
    topics: []
  - email: not-an-email
    name: "Eve\\r\\nBcc: victim@example.org"
    topics:
      - name: Y
        keywords: [a]
        weight: 3
"""


def test_example_file_is_valid_and_defaults_apply() -> None:
    subs = load_subscribers(EXAMPLE_SUBSCRIBERS)
    assert 4 <= len(subs) <= 6
    ada = subs[0]
    assert ada.email == "ada@example.org" and ada.timezone == "Europe/London"
    assert ada.send_at == dt.time(7, 30) and ada.max_papers == 10
    assert ada.topics[0].name == "Offline RL" and "offline RL" in ada.topics[0].keywords
    assert ada.exclude == ("survey",)
    kenji = next(s for s in subs if s.email.startswith("kenji"))
    assert kenji.send_at == dt.time(7, 0)  # from defaults
    assert ada.line > 0


def test_every_problem_is_reported_at_once_with_line_field_value_and_fix() -> None:
    with pytest.raises(SubscriberConfigError) as info:
        parse_subscribers(BAD, "subs.yaml")
    problems = info.value.problems
    text = "\n".join(problems)
    expected = [
        ("line 1", "defaults", "'send_at'", "'7am'", "HH:MM"),
        ("line 2", "'colour'", "unknown top-level key"),
        ("line 6", "'ada@example.org'", "'timezone'", "'Europe/Lodnon'", "IANA"),
        ("line 7", "'send_at'", "'25:00'"),
        ("line 8", "'max_papers'", "99", "1 to 50"),
        ("line 11", "'topics.0.keywords'", "at least one"),
        ("line 12", "'hobby'", "remove it"),
        ("line 13", "duplicates subscriber #1", "case-insensitively"),
        ("line 14", "subscriber #2", "'topics'"),
        ("line 15", "'not-an-email'", "not a valid email"),
        ("line 16", "'name'", "line break"),
        ("line 20", "'topics.0.weight'", "unknown field"),
    ]
    assert len(problems) == len(expected), text
    for problem, parts in zip(problems, expected, strict=True):
        assert problem.startswith("subs.yaml, ")
        for part in parts:
            assert part in problem, (part, problem)


def test_not_yaml_and_not_a_mapping() -> None:
    with pytest.raises(SubscriberConfigError, match=r"s\.yaml, line 3: not valid YAML"):
        parse_subscribers("subscribers:\n  - email: [unclosed\n", "s.yaml")
    with pytest.raises(SubscriberConfigError, match="expected a mapping"):
        parse_subscribers("- just a list\n", "s.yaml")
    with pytest.raises(SubscriberConfigError, match="at least one subscriber"):
        parse_subscribers("subscribers: []\n", "s.yaml")


@pytest.mark.parametrize("anchored", [False, True])
def test_a_date_that_does_not_exist_is_a_located_problem_not_a_crash(
    anchored: bool, tmp_path: Path
) -> None:
    """`2026-13-45` resolves as a YAML date that cannot be built: both the plain reader and the
    node-tree reader (anchors) report its line and the fix."""
    anchor = "defaults: &d\n  max_papers: 5\n" if anchored else ""
    text = f"{anchor}subscribers:\n  - email: a@example.org\n    name: 2026-13-45\n"
    line = 5 if anchored else 3
    with pytest.raises(SubscriberConfigError) as caught:
        parse_subscribers(text, "s.yaml")
    assert caught.value.problems == [
        f"s.yaml, line {line}: not valid YAML ('2026-13-45' reads as a date but is not one "
        "(month must be in 1..12); put it in quotes to keep it as text)"
    ]
    path = tmp_path / "s.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SubscriberConfigError, match=f"line {line}: not valid YAML"):
        check_subscribers(path)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (  # a second list appended to the file: commands crashed, the check said valid
            "subscribers:\n  - email: a@example.org\nsubscribers:\n  - email: b@example.org\n",
            "line 3: not valid YAML (the key 'subscribers' is written twice in one mapping "
            "(lines 1 and 3); keep one)",
        ),
        (  # a subscriber's second `topics:` silently replaced the first
            "subscribers:\n  - email: a@example.org\n    topics:\n      - name: RL\n"
            "        keywords: [offline RL]\n    topics:\n      - name: Robots\n"
            "        keywords: [robot]\n",
            "line 6: not valid YAML (the key 'topics' is written twice in one mapping "
            "(lines 3 and 6); keep one)",
        ),
        (  # in a flow mapping, on one line
            "subscribers:\n  - {email: a@example.org, email: b@example.org}\n",
            "line 2: not valid YAML (the key 'email' is written twice in one mapping "
            "(line 2); keep one)",
        ),
    ],
)
def test_a_key_written_twice_is_a_located_problem(
    text: str, problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """YAML forbids a key twice in one mapping; every reader (scanner, C and pure-Python
    parsers, the file check) reports it at its line instead of keeping one or crashing."""
    for loader in (yaml.CSafeLoader, yaml.SafeLoader):
        monkeypatch.setattr(subscribers, "Loader", loader)
        with pytest.raises(SubscriberConfigError) as caught:
            parse_subscribers(text, "s.yaml")
        assert caught.value.problems == [f"s.yaml, {problem}"]
    path = tmp_path / "s.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SubscriberConfigError) as caught:
        check_subscribers(path)
    assert caught.value.problems == [f"{path}, {problem}"]


def test_missing_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(SubscriberConfigError, match="NEWSLETTER_SUBSCRIBERS_FILE"):
        load_subscribers(tmp_path / "nope.yaml")


# --- one address, one subscriber --------------------------------------------------------------
NFD_ELODIE = unicodedata.normalize("NFD", "élodie@example.org")
NFD_CAFE = unicodedata.normalize("NFD", "elodie@café.example")
SAME_MAILBOX = f"""\
subscribers:
  - email: reader@bücher.example
    topics: [{{name: A, keywords: [a]}}]
  - email: elodie@café.example
    topics: [{{name: A, keywords: [a]}}]
  - email: ok@example.org
    topics: [{{name: A, keywords: [a]}}]
  - email: READER@xn--bcher-kva.example
    topics: [{{name: A, keywords: [a]}}]
  - email: {NFD_CAFE}
    topics: [{{name: A, keywords: [a]}}]
"""


def test_address_key_folds_case_unicode_forms_and_punycode() -> None:
    key = address_key("reader@bücher.example")
    assert address_key("READER@xn--bcher-kva.example") == key
    assert address_key(" Reader@BÜCHER.example ") == key
    assert address_key(NFD_ELODIE) == address_key("élodie@example.org") == "élodie@example.org"
    assert address_key("ada@example.org") == "ada@example.org"  # stored ledger keys stay valid
    assert address_key("ada@example.org") != address_key("ada@example.com")
    assert address_key("not an address") == "not an address"


def test_one_mailbox_spelled_twice_is_a_duplicate_naming_both_lines() -> None:
    with pytest.raises(SubscriberConfigError) as info:
        parse_subscribers(SAME_MAILBOX, "subs.yaml")
    first, second = info.value.problems
    assert first.startswith("subs.yaml, line 8: ") and "duplicate" in first
    assert "subscriber #1 'reader@bücher.example' (line 2)" in first
    assert second.startswith("subs.yaml, line 10: ") and "duplicate" in second
    assert "subscriber #2 'elodie@café.example' (line 4)" in second


def test_an_address_that_needs_smtputf8_is_refused_with_its_line() -> None:
    """The sender speaks plain SMTP: a non-ASCII name before the @ could never be sent to, so
    the file is refused before anything goes out, not failed every day at send time."""
    topics = "    topics: [{name: A, keywords: [a]}]\n"
    text = (
        f"subscribers:\n  - email: ok@example.org\n{topics}  - email: élodie@example.org\n{topics}"
    )
    with pytest.raises(SubscriberConfigError) as info:
        parse_subscribers(text, "subs.yaml")
    (problem,) = info.value.problems
    assert problem.startswith("subs.yaml, line 4: ") and "SMTPUTF8" in problem, problem
    assert parse_subscribers(text.replace("élodie", "elodie"), "subs.yaml")


def test_subscribers_check_exits_1_on_a_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "subs.yaml"
    path.write_text(SAME_MAILBOX, encoding="utf-8")
    result = CliRunner().invoke(cli, ["subscribers", "check", str(path)])
    assert result.exit_code == 1
    assert "duplicate" in result.output and "line 8" in result.output
    assert "(line 2)" in result.output and "line 10" in result.output


def test_a_display_name_over_256_characters_is_refused_with_its_length() -> None:
    entry = "  - email: {e}\n    name: {n}\n    topics: [{{name: A, keywords: [a]}}]\n"
    ok = "subscribers:\n" + entry.format(e="a@example.org", n="A" * 256)
    assert parse_subscribers(ok, "subs.yaml")[0].name == "A" * 256
    bad = ok + entry.format(e="b@example.org", n="Ada " * 250)
    with pytest.raises(SubscriberConfigError) as info:
        parse_subscribers(bad, "subs.yaml")
    (problem,) = info.value.problems
    assert problem.startswith("subs.yaml, line 6: subscriber #2 'b@example.org', field 'name'")
    assert "is 999 characters long" in problem and "at most 256" in problem
    assert len(problem) < 400  # the offending value is shortened, not printed whole


def test_on_empty_comes_from_the_subscriber_or_the_defaults() -> None:
    text = (
        "defaults: {on_empty: closest}\n"
        "subscribers:\n"
        "  - {email: a@example.org, topics: [{name: T, keywords: [x]}]}\n"
        "  - {email: b@example.org, on_empty: skip, topics: [{name: T, keywords: [x]}]}\n"
    )
    a, b = parse_subscribers(text)
    assert (a.on_empty, b.on_empty) == ("closest", "skip")
    (c,) = parse_subscribers(
        "subscribers:\n  - {email: c@x.org, topics: [{name: T, keywords: [x]}]}\n"
    )
    assert c.on_empty == "skip"
    with pytest.raises(SubscriberConfigError) as err:
        parse_subscribers(
            "subscribers:\n  - {email: d@x.org, on_empty: never, topics: [{name: T, keywords: [x]}]}\n"
        )
    assert (
        "line 2" in str(err.value) and "on_empty" in str(err.value) and "closest" in str(err.value)
    )


# --- one reading, whichever YAML parser is installed ------------------------------------------
ANCHORED = """\
subscribers:
  - email: a@example.org
    topics: [&rl {name: RL, keywords: [offline RL]}]

  - <<: {email: b@example.org, hobby: chess}
    topics: [*rl]
"""
NOT_YAML = BAD.replace("    hobby: chess\n", "    hobby: [chess\n")


@pytest.mark.parametrize(
    "text", [EXAMPLE_SUBSCRIBERS.read_text(encoding="utf-8"), BAD, SAME_MAILBOX, ANCHORED, NOT_YAML]
)
def test_c_and_pure_python_parsers_give_the_same_subscribers_and_messages(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def outcome(loader: type[Any]) -> object:
        monkeypatch.setattr(subscribers, "Loader", loader)
        try:
            return parse_subscribers(text, "subs.yaml")
        except SubscriberConfigError as exc:
            return exc.problems

    assert yaml.__with_libyaml__, "production reads with LibYAML: the C path must be tested"
    assert subscribers.Loader is yaml.CSafeLoader
    with_c, pure = outcome(yaml.CSafeLoader), outcome(yaml.SafeLoader)
    assert with_c == pure
    if text is NOT_YAML:  # the line, in the words of the pure-Python parser, as always
        assert with_c == ["subs.yaml, line 13: not valid YAML (expected ',' or ']', but got ':')"]
    elif text is BAD:
        assert isinstance(with_c, list) and len(with_c) == 12
    else:
        assert isinstance(with_c, list) and len(with_c) in (1, 2, 5)  # problems or subscribers


def test_anchors_aliases_and_merge_keys_still_load_with_their_lines() -> None:
    with pytest.raises(SubscriberConfigError) as info:
        parse_subscribers(ANCHORED, "subs.yaml")
    (problem,) = info.value.problems
    assert problem.startswith("subs.yaml, line 5: subscriber #2 'b@example.org', field 'hobby'")
    a = parse_subscribers(ANCHORED.replace(", hobby: chess", ""), "subs.yaml")
    assert [s.email for s in a] == ["a@example.org", "b@example.org"]
    assert a[1].topics == a[0].topics and [s.line for s in a] == [2, 5]


def test_a_large_file_reads_in_one_pass_with_each_subscribers_line() -> None:
    entry = "  - email: reader{i}@example.org\n    topics: [{{name: T, keywords: [k{i}]}}]\n"
    text = "subscribers:\n" + "".join(entry.format(i=i) for i in range(2000))
    subs = parse_subscribers(text)
    assert len(subs) == 2000 and subs[1999].line == 2 + 2 * 1999
    assert subs[1999].topics[0].keywords == ("k1999",)


# (field, value, whether the fast check takes it): plainly written valid values take the fast
# path; anything else (invalid, coerced, stripped) is left to the model.
FAST_VARIANTS: list[tuple[str, Any, bool]] = [
    ("email", " ada@example.org", False),
    ("email", "Ada@Example.ORG", True),
    ("email", "ada@bücher.example", True),
    ("email", "not-an-email", False),
    ("email", 5, False),
    ("name", "Ada\u00a0", False),
    ("name", "Ada\u2028Lovelace", True),  # a line separator is no control character
    ("name", "x" * 257, False),
    ("name", "x" * 256, True),
    ("name", None, False),
    ("timezone", "Europe/Lodnon", False),
    ("timezone", "Asia/Tokyo", True),
    ("timezone", None, True),
    ("send_at", "7:30", False),
    ("send_at", "07:30", True),
    ("send_at", "07:30\n", False),
    ("max_papers", True, False),
    ("max_papers", "5", False),
    ("max_papers", 5.0, False),
    ("max_papers", 50, True),
    ("max_papers", 51, False),
    ("on_empty", "closest", True),
    ("on_empty", "Closest", False),
    ("exclude", ["survey", ""], False),
    ("exclude", ("survey",), False),
    ("exclude", ["survey"], True),
    ("hobby", "chess", False),
    ("topics", [], False),
    ("topics", [{"name": "RL", "keywords": ["offline RL"], "description": None}], False),
    ("topics", [{"name": "RL", "keywords": ["offline RL "]}], False),
    ("topics", [{"name": "RL", "keywords": ["offline\tRL"]}], False),
    ("topics", [{"name": "", "keywords": ["RL"]}], False),
    ("topics", [{"name": "x" * 121, "keywords": ["RL"]}], False),
    ("topics", [{"name": "RL", "keywords": ["k" * 201]}], False),
    ("topics", [{"name": "RL", "keywords": ["RL"], "weight": 3}], False),
    ("topics", [{"name": "RL", "keywords": ["RL", "world models"], "description": "a"}], True),
]


@pytest.mark.parametrize(("field", "value", "fast_path"), FAST_VARIANTS)
def test_the_fast_check_gives_what_the_model_gives_or_leaves_the_entry_to_it(
    field: str, value: Any, fast_path: bool
) -> None:
    entry: dict[str, Any] = {
        "email": "ada@example.org",
        "name": "Ada",
        "topics": [{"name": "RL", "keywords": ["offline RL"], "description": "d"}],
    }
    entry[field] = value
    fast = subscribers.fast_entry(entry)
    model = subscribers._Check("subs.yaml").validated(0, entry, (None, 1), entry.get("email"))
    assert (fast is not None) == fast_path
    if fast is not None:
        assert fast == model


def test_every_generated_subscriber_takes_the_fast_path() -> None:
    entry = "  - email: r{i}@example.org\n    name: R {i}\n    send_at: '07:30'\n    topics:\n"
    entry += "      - {{name: T, keywords: [k{i}, RL], description: about {i}}}\n"
    text = "subscribers:\n" + "".join(entry.format(i=i) for i in range(50))
    raw = yaml.safe_load(text)
    assert all(subscribers.fast_entry(e) is not None for e in raw["subscribers"])
    subs = parse_subscribers(text)
    assert subs[49].send_at == dt.time(7, 30)
    # equal keywords are one object across subscribers (memory for 100,000 of them)
    assert subs[0].topics[0].keywords[1] is subs[49].topics[0].keywords[1] == "RL"


def test_an_unquoted_send_time_names_the_quoted_fix() -> None:
    """YAML 1.1 reads `send_at: 17:30` as 1050 (base 60): the message said "input should be a
    valid string"."""
    text = (
        "defaults:\n  send_at: 7:30\nsubscribers:\n  - email: a@example.org\n    send_at: 17:30\n"
        "    topics: [{name: RL, keywords: [reinforcement learning]}]\n"
    )
    with pytest.raises(SubscriberConfigError) as caught:
        parse_subscribers(text, "s.yaml")
    assert caught.value.problems == [
        "s.yaml, line 2: defaults: field 'send_at': 450 is a number: YAML reads an unquoted "
        '07:30 as minutes; put the time in quotes, e.g. "07:30"',
        "s.yaml, line 5: subscriber #1 'a@example.org', field 'send_at': 1050 is a number: YAML "
        'reads an unquoted 17:30 as minutes; put the time in quotes, e.g. "17:30"',
    ]


def test_lists_nested_too_deeply_are_a_problem_not_a_crash() -> None:
    deep = "subscribers:\n  - email: " + "[" * 1200 + "]" * 1200 + "\n"
    with pytest.raises(SubscriberConfigError) as caught:
        parse_subscribers(deep, "s.yaml")
    assert caught.value.problems == ["s.yaml: not valid YAML (lists or mappings nested too deeply)"]
