"""The transport protocol and the choice between SMTP and the local Maildir."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from newsletter.deliver.maildir import MaildirTransport
from newsletter.deliver.smtp import Pacer, SmtpTransport
from newsletter.models import RenderedEmail
from newsletter.settings import Settings


# --- transports ---------------------------------------------------------------------------------
class Transport(Protocol):
    name: str
    concurrency: int  # how many messages it can usefully have in flight

    async def start(self) -> None: ...

    async def send(
        self,
        message: RenderedEmail,
        sender: str,
        wire: bytes | None = None,
        may_start: Callable[[], bool] | None = None,
    ) -> str:
        """Deliver one message; returns the final reply. Raises DeliveryError. `wire` is
        `wire_form(message.raw)` when the caller has it already; with `wire`, `message.raw`
        may be empty (what the render workers send back): raw_form(wire) is the message.
        `may_start` is asked after every wait (rate limit, free connection, connecting), just
        before the message goes out; False raises NotStarted."""
        ...

    async def close(self) -> None: ...


def make_transport(settings: Settings, *, pacer: Pacer | None = None) -> Transport:
    """SMTP when NEWSLETTER_SMTP_HOST is set, otherwise the Maildir outbox. `pacer` replaces
    the SMTP pool's own rate limit (a limit shared with other processes)."""
    if settings.smtp_host:
        return SmtpTransport(settings, pacer=pacer)
    return MaildirTransport(settings.outbox_dir)
