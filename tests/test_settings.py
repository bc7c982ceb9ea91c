"""Settings: where the files are looked up, and which names are settings."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from newsletter.errors import ConfigError, StoreError
from newsletter.settings import (
    BUNDLED,
    Settings,
    check_setting_names,
    load_settings,
    prepare_database_folder,
    settings_file,
)
from newsletter.store import Store

from .conftest import ROOT


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NEWSLETTER_SETTINGS_FILE")
    return tmp_path


def test_without_local_files_the_bundled_examples_are_used(here: Path) -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.seeds_dir == BUNDLED / "seeds" and s.seeds_dir.is_dir()
    assert s.subscribers_file == BUNDLED / "config" / "subscribers.yaml"
    assert s.subscribers_file.is_file()
    assert s.template_dir == BUNDLED / "templates" and (s.template_dir / "digest.mjml").is_file()
    assert settings_file({}) == BUNDLED / "config" / "newsletter.toml"


def test_the_working_folder_comes_before_the_bundled_examples(here: Path) -> None:
    (here / "seeds").mkdir()
    (here / "config").mkdir()
    (here / "config" / "subscribers.yaml").write_text("subscribers: []\n", encoding="utf-8")
    (here / "config" / "newsletter.toml").write_text('sender_name = "Here"\n', encoding="utf-8")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.seeds_dir == Path("seeds") and s.subscribers_file == Path("config/subscribers.yaml")
    assert s.sender_name == "Here"


def test_an_empty_seeds_folder_does_not_hide_the_bundled_example_dumps(here: Path) -> None:
    """Commands make seeds/ as the home of fetched days: with the example subscribers, an empty
    one made `make run` find no listing (after `make test` had made one in the checkout)."""
    (here / "seeds").mkdir()
    assert Settings(_env_file=None).seeds_dir == BUNDLED / "seeds"  # type: ignore[call-arg]
    (here / "seeds" / "mar17.txt").write_text("Daily Papers\nMar 17\n", encoding="utf-8")
    assert Settings(_env_file=None).seeds_dir == Path("seeds")  # type: ignore[call-arg]


def test_an_explicit_setting_comes_first(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (here / "seeds").mkdir()
    other = here / "elsewhere.toml"
    other.write_text('sender_name = "Elsewhere"\n', encoding="utf-8")
    (here / ".env").write_text(f"NEWSLETTER_SETTINGS_FILE={other}\n", encoding="utf-8")
    monkeypatch.setenv("NEWSLETTER_SEEDS_DIR", "/srv/dumps")
    s = Settings()
    assert s.seeds_dir == Path("/srv/dumps") and s.sender_name == "Elsewhere"


def test_a_mistyped_settings_file_is_an_error_not_the_defaults(here: Path) -> None:
    """A typo in NEWSLETTER_SETTINGS_FILE once sent a whole edition into the local Maildir
    (no smtp_host) and recorded it as sent; /dev/null says "no settings file" on purpose."""
    with pytest.raises(ConfigError, match=r"NEWSLETTER_SETTINGS_FILE=.*prd\.toml: no such file"):
        check_setting_names({"NEWSLETTER_SETTINGS_FILE": str(here / "prd.toml")})
    (here / ".env").write_text(f"NEWSLETTER_SETTINGS_FILE={here / 'prd.toml'}\n", "utf-8")
    with pytest.raises(ConfigError, match="no such file"):
        check_setting_names({}, here / ".env")
    check_setting_names({"NEWSLETTER_SETTINGS_FILE": os.devnull})


def test_secrets_in_the_settings_file_are_refused_by_name(here: Path) -> None:
    """config/newsletter.toml is the file `init` writes and people commit: no secret in it."""
    toml = here / "config.toml"
    toml.write_text(
        'smtp_password = "hunter2secret"\nsigning_key = "k"\nsender_name = "Me"\n', "utf-8"
    )
    with pytest.raises(ConfigError) as caught:
        check_setting_names({"NEWSLETTER_SETTINGS_FILE": str(toml)})
    message = str(caught.value)
    assert "smtp_password is a secret" in message and "NEWSLETTER_SMTP_PASSWORD" in message
    assert "signing_key is a secret" in message and "signing_key_file" in message
    assert "hunter2secret" not in message


def test_every_name_in_the_readme_table_is_accepted() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    names = re.findall(r"^\| `(NEWSLETTER_[A-Z0-9_]+)` \|", readme, re.M)
    assert len(names) == len(Settings.model_fields)
    check_setting_names(
        {n: "x" for n in [*names, "HOME"]} | {"NEWSLETTER_SETTINGS_FILE": os.devnull}
    )


def test_closest_name_or_a_pointer_to_the_table() -> None:
    with pytest.raises(ConfigError) as caught:
        check_setting_names({"NEWSLETTER_XYZZY": "1", "newsletter_smtp_hots": "x"})
    lines = str(caught.value).splitlines()
    assert lines[0] == (
        "environment variable NEWSLETTER_XYZZY is not a setting; "
        "the README's Settings table lists every setting"
    )
    assert lines[1].endswith(
        "newsletter_smtp_hots is not a setting; did you mean NEWSLETTER_SMTP_HOST?"
    )


def test_only_the_default_database_folder_is_created(here: Path) -> None:
    prepare_database_folder("sqlite:///var/newsletter.db")
    assert (here / "var").is_dir()
    with pytest.raises(ConfigError, match="NEWSLETTER_DATABASE_URL"):
        prepare_database_folder(f"sqlite:///{here}/data/x.db")
    assert not (here / "data").exists()
    (here / "data").mkdir()
    prepare_database_folder(f"sqlite:///{here}/data/x.db")
    prepare_database_folder("sqlite:///:memory:")
    prepare_database_folder("postgresql+psycopg://u@h/db")


def test_a_log_level_that_is_none_is_a_setting_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """It crashed every command with a traceback from logging (ValueError: Unknown level)."""
    monkeypatch.setenv("NEWSLETTER_LOG_LEVEL", "LOUD")
    with pytest.raises(ConfigError, match=r"NEWSLETTER_LOG_LEVEL: .*'LOUD' is no log level; use"):
        load_settings()
    monkeypatch.setenv("NEWSLETTER_LOG_LEVEL", "debug")
    assert load_settings().log_level == "DEBUG"


@pytest.mark.parametrize(
    "name", ["NEWSLETTER_SMTP_HOST", "NEWSLETTER_SEEDS_DIR", "NEWSLETTER_DATABASE_URL"]
)
def test_an_empty_setting_is_refused_not_taken_for_the_default(
    here: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """`NEWSLETTER_SMTP_HOST=` (a unit file's placeholder) fell back to the local Maildir and
    recorded every digest as sent; an empty folder setting was the working folder."""
    monkeypatch.setenv("NEWSLETTER_SETTINGS_FILE", os.devnull)
    monkeypatch.setenv(name, "")
    with pytest.raises(ConfigError, match=f"setting {name}: is empty"):
        load_settings()


def test_smtp_credentials_without_a_host_are_refused_without_showing_them(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_SETTINGS_FILE", os.devnull)
    monkeypatch.setenv("NEWSLETTER_SMTP_USERNAME", "mailer")
    monkeypatch.setenv("NEWSLETTER_SMTP_PASSWORD", "hunter2-secret")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert (
        "NEWSLETTER_SMTP_USERNAME, NEWSLETTER_SMTP_PASSWORD set but NEWSLETTER_SMTP_HOST" in message
    )
    assert "hunter2" not in message and "mailer" not in message


def test_a_password_with_an_unencoded_at_never_becomes_the_host(tmp_path: Path) -> None:
    """us:er:p@ss@host parsed as host 'ss@host': the connection error showed that piece."""
    with pytest.raises(StoreError) as caught:
        Store.open("postgresql+psycopg://us:er:p@ss@127.0.0.1:5432/test")
    assert "percent-encoded" in str(caught.value)
    assert "ss@" not in str(caught.value) and "er:p" not in str(caught.value)
