"""`subscribers check`: the one command that needs nothing but the subscriber file."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from newsletter.cli import EXIT_FAILED, AppContext, err, fail, out, pass_app
from newsletter.errors import SubscriberConfigError
from newsletter.subscribers import check_subscribers


@click.command("check")
@click.argument("file", required=False, type=click.Path(path_type=Path))
@pass_app
def subscribers_check_cmd(app: AppContext, file: Path | None) -> None:
    """Validate the subscriber file: exit 0 when valid, 1 listing every problem when not
    (2 when there is no such file).

    Example: newsletter subscribers check config/subscribers.yaml
    """
    path = file or app.settings.subscribers_file
    if not path.is_file():
        source = "FILE" if file else "setting NEWSLETTER_SUBSCRIBERS_FILE"
        fail(f"{source}: no such file {path}; correct the path (`newsletter init` writes one)")
    try:
        outline = check_subscribers(path)  # checks everything, keeps no subscriber
    except SubscriberConfigError as exc:
        err.print(str(exc), highlight=False, markup=False)
        sys.exit(EXIT_FAILED)
    count, topics = len(outline.lines), outline.topics
    out.print(f"{path}: valid ({count} subscribers, {topics} topics)", highlight=False)
