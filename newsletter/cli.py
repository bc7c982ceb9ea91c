"""The `newsletter` command: a thin layer over the library.

Each command parses its options, calls the library and prints. Library errors (NewsletterError)
become a one-line message and an exit code; anything else is a bug and keeps its traceback.
With --json, stdout carries exactly one JSON document; logs and progress go to stderr.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import sys
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar

import click
from rich.console import Console
from rich.text import Text

from newsletter.errors import ConfigError, NewsletterError, StoreError
from newsletter.logs import configure
from newsletter.models import Subscriber
from newsletter.roster import load_roster
from newsletter.settings import SEEDS_DIR, Settings, load_settings, prepare_database_folder
from newsletter.store import Store
from newsletter.subscribers import load_subscribers

P = ParamSpec("P")
R = TypeVar("R")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# No console markup: printed text carries file names, titles, addresses and server replies,
# and a "[/]" in one of them is text, not a style (it crashed the command; "[bold]" vanished).
# Styles are given as Text spans (`styled`).
out = Console(soft_wrap=True, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)
log = logging.getLogger("newsletter")


def styled(text: str, style: str, rest: str = "") -> Text:
    """`text` in `style`, then `rest` plain: markup-free, whatever either holds."""
    return Text.assemble((text, style), rest)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    err.print(styled("error:", "bold red", f" {message}"), highlight=False)
    sys.exit(code)


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn library errors into a message; config errors are exit 2, others exit 1."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            fail(str(exc), EXIT_USAGE)
        except NewsletterError as exc:
            fail(f"{type(exc).__name__}: {exc}", EXIT_FAILED)

    return wrapper


def parse_date(_ctx: click.Context, _param: click.Parameter, value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date; use YYYY-MM-DD") from None


def emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, ensure_ascii=False, default=str))


def setup_logging(settings: Settings) -> None:

    configure(settings.log_level, settings.log_format)


class AppContext:
    """What every command needs, built once from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.settings)
        return self._store

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def subscribers(self, path: Path | None = None) -> list[Subscriber]:
        """The validated subscriber file; an invalid file stops the command (exit 2)."""
        return load_subscribers(path or self.settings.subscribers_file)

    def roster(self) -> Sequence[Subscriber]:
        """The validated subscriber file for a run over all of it: checked whole, then read
        again a chunk at a time, so a send never holds them all (see `roster`)."""
        return load_roster(self.settings.subscribers_file)


def open_store(settings: Settings) -> Store:
    """The store at the start of a command. Only the default folder (var/) is created; a bad
    URL or an unreachable database is a configuration error (exit 2), not a failed run."""
    url = settings.database_url
    prepare_database_folder(url)
    try:
        return Store.open(
            url,
            lock_timeout=settings.db_lock_timeout,
            statement_timeout=settings.db_statement_timeout,
        )
    except StoreError as exc:
        raise ConfigError(str(exc)) from exc


def seeds_folder(settings: Settings, given: Path | None = None) -> Path:
    """The dumps to read (--seeds, else the setting); a missing one is a configuration error."""
    location = given or settings.seeds_dir
    if not given and "seeds_dir" not in settings.model_fields_set and location == SEEDS_DIR:
        location.mkdir(parents=True, exist_ok=True)  # the default home of fetched days
    if not location.exists():
        source = "--seeds" if given else "setting NEWSLETTER_SEEDS_DIR"
        raise ConfigError(
            f"{source}: no such folder {location}; correct the path or create the folder"
        )
    return location


pass_app = click.make_pass_decorator(AppContext)


class Commands(MutableMapping[str, click.Command]):
    """A group's commands by name, each imported from its module when first looked up: a
    command pays for the modules it uses, not for every command's (the daemon's scheduler,
    the web app and delivery cost a `subscribers check` nothing). `where` maps a name to
    "module:attribute"."""

    def __init__(self, where: Mapping[str, str]) -> None:
        self.where = dict(where)
        self.loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self.loaded:
            module, _, attribute = self.where[name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            assert isinstance(command, click.Command), self.where[name]
            self.loaded[name] = command
        return self.loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self.loaded[name] = command

    def __delitem__(self, name: str) -> None:
        self.where.pop(name, None)
        self.loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter({**dict.fromkeys(self.where), **dict.fromkeys(self.loaded)})

    def __len__(self) -> int:
        return len(self.where.keys() | self.loaded.keys())


_C = "newsletter.commands"
COMMANDS = {
    "ingest": f"{_C}.content:ingest_cmd",
    "fetch": f"{_C}.content:fetch_cmd",
    "papers": f"{_C}.content:papers_cmd",
    "select": f"{_C}.content:select_cmd",
    "preview": f"{_C}.content:preview_cmd",
    "unsubscribe": f"{_C}.people:unsubscribe_cmd",
    "resubscribe": f"{_C}.people:resubscribe_cmd",
    "serve": f"{_C}.web:serve_cmd",
    "send": f"{_C}.sending:send_cmd",
    "status": f"{_C}.status:status_cmd",
    "run": f"{_C}.daemon:run_cmd",
    "replay": f"{_C}.daemon:replay_cmd",
    "demo": f"{_C}.examples:demo_cmd",
    "init": f"{_C}.examples:init_cmd",
}
SUBSCRIBERS_COMMANDS = {
    "check": f"{_C}.check:subscribers_check_cmd",
    "list": f"{_C}.people:subscribers_list_cmd",
    "health": f"{_C}.people:subscribers_health_cmd",
}
FEEDBACK_COMMANDS = {
    "add": f"{_C}.people:feedback_add_cmd",
    "list": f"{_C}.people:feedback_list_cmd",
}


@click.group(commands=Commands(COMMANDS), context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="newsletter", prog_name="newsletter")
@click.pass_context
@handle_errors
def cli(ctx: click.Context) -> None:
    """Trending papers, matched to each subscriber's topics, delivered by email.

    Settings come from NEWSLETTER_* environment variables, .env, and the settings file
    (NEWSLETTER_SETTINGS_FILE, else config/newsletter.toml here, else the bundled example).
    `newsletter init` writes editable copies of the examples.
    """
    settings = load_settings()
    setup_logging(settings)
    if settings.lock_dir is not None:
        log.warning(
            "NEWSLETTER_LOCK_DIR is obsolete and ignored: the sender lock lives beside the "
            "database file now; remove the setting"
        )
    ctx.obj = AppContext(settings)
    ctx.call_on_close(lambda: ctx.obj._store and ctx.obj._store.close())


@cli.group("subscribers", commands=Commands(SUBSCRIBERS_COMMANDS))
def subscribers_group() -> None:
    """Work with the subscriber file."""


@cli.group("feedback", commands=Commands(FEEDBACK_COMMANDS))
def feedback_group() -> None:
    """Readers' thumbs up / down on papers."""


def main() -> None:
    cli(prog_name="newsletter")
