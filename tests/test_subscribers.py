"""The subscriber file: valid examples load; a bad file reports every problem at once."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from newsletter.errors import SubscriberConfigError
from newsletter.subscribers import load_subscribers, parse_subscribers

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


def test_missing_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(SubscriberConfigError, match="NEWSLETTER_SUBSCRIBERS_FILE"):
        load_subscribers(tmp_path / "nope.yaml")
