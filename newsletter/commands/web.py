"""`serve`: the reader's side over HTTP."""

from __future__ import annotations

import click

from newsletter.cli import AppContext, handle_errors, log, pass_app
from newsletter.web import serve


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@pass_app
@handle_errors
def serve_cmd(app: AppContext, host: str, port: int) -> None:
    """Serve the reader's side: one-click unsubscribe, the editions in a browser, the Atom
    feeds and the vote links, at NEWSLETTER_PUBLIC_BASE_URL (put a TLS proxy in front).

    Example: newsletter serve --host 127.0.0.1 --port 8080
    """
    if not app.settings.public_base_url:
        log.warning(
            "NEWSLETTER_PUBLIC_BASE_URL is unset: emails carry no links to this app; set it "
            "to the URL readers reach it at (https://...)"
        )
    app.subscribers()  # an invalid subscriber file stops us now (exit 2)
    serve(app.settings, app.store, host=host, port=port)
