"""The README stays true: its settings table is the model's, and every command is documented."""

from __future__ import annotations

import re

from newsletter.cli import cli
from newsletter.settings import settings_reference

from .conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_settings_table_matches_the_model() -> None:
    block = re.search(r"<!-- settings:start -->\n(.*?)\n<!-- settings:end -->", README, re.S)
    assert block is not None
    assert block.group(1) == settings_reference(), "regenerate: see scripts/docs.py"


def test_two_commands_come_first() -> None:
    head = README[: README.index("## What it does")]
    assert "make run" in head and "make test" in head


def test_every_command_is_in_the_readme_and_has_an_example() -> None:
    def walk(group: object, prefix: str = "") -> list[tuple[str, object]]:
        found = []
        for name, cmd in group.commands.items():  # type: ignore[attr-defined]
            if hasattr(cmd, "commands"):
                found += walk(cmd, f"{prefix}{name} ")
            else:
                found.append((prefix + name, cmd))
        return found

    for name, cmd in walk(cli):
        assert f"`{name}" in README, f"command {name!r} missing from the README"
        assert "Example" in (cmd.help or ""), f"command {name!r} has no example in its help"  # type: ignore[attr-defined]
