"""One error hierarchy; every message says what failed, where, and how to fix it.

    NewsletterError
     ├── ConfigError            settings or the subscriber file (SubscriberConfigError lists all problems)
     │    └── SubscriberConfigError
     ├── IngestError            a dump that cannot be read (file, line)
     ├── NoListing              no listing stored for the requested date
     ├── FetchError             a day the source did not give (URL, reason, HTTP status)
     ├── StoreError             the database (URL, schema, lock held by another sender)
     │    ├── LockHeld
     │    ├── DatabaseTimeout   a lock or statement timeout ran out (names the setting)
     │    └── ConnectionLost    the server went away mid-run (run the command again)
     ├── RenderError            a template that fails to compile or render
     ├── BadToken               a link's token is forged, altered, swapped or expired
     ├── NotFound               no such reader, subscriber, paper, edition or day
     └── DeliveryError          a transport failure (temporary unless `permanent`)
          ├── RecipientRefused  the server refused one recipient (5xx: permanent)
          └── OutcomeUnknown    the whole message went out but no final reply came back

The CLI catches NewsletterError only, so a real bug still shows its traceback.
"""

from __future__ import annotations

from pathlib import Path


class NewsletterError(Exception):
    """Base class for every error a user can act on."""


class ConfigError(NewsletterError):
    """A setting or configuration file is invalid."""


class SubscriberConfigError(ConfigError):
    """The subscriber file is invalid; carries every problem found, not just the first."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        n = len(self.problems)
        head = f"{self.path}: {n} problem{'s' if n != 1 else ''} in the subscriber file"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


class IngestError(NewsletterError):
    """A dump cannot be ingested; the whole file is skipped."""

    def __init__(self, path: Path | str, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.reason = message
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class NoListing(NewsletterError):
    """No listing is stored for the requested date."""


class FetchError(NewsletterError):
    """A day could not be fetched from the source: unreachable, refused, or a malformed answer.
    Nothing of that day was stored."""

    def __init__(self, url: str, reason: str, *, status: int | None = None) -> None:
        self.url = url
        self.reason = reason
        self.status = status
        super().__init__(f"{url}: {reason}")


class StoreError(NewsletterError):
    """The database cannot be opened or used."""


class LockHeld(StoreError):
    """Another sender holds the lock for this work."""


class DatabaseTimeout(StoreError, TimeoutError):
    """A statement waited too long for a lock (`kind` "lock") or ran too long ("statement");
    `setting` is the environment variable that sets that timeout."""

    def __init__(self, message: str, *, kind: str, setting: str) -> None:
        self.kind = kind
        self.setting = setting
        super().__init__(message)


class ConnectionLost(StoreError, ConnectionError):
    """The connection to the database broke mid-run (`cause`: the driver's words); committed
    work is kept."""

    def __init__(self, message: str, *, cause: str) -> None:
        self.cause = cause
        super().__init__(message)


class RenderError(NewsletterError):
    """A template cannot be compiled or rendered."""


class BadToken(NewsletterError):
    """A link's token is forged, altered, made for another reader or purpose, or expired."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        self.expired = expired
        super().__init__(message)


class NotFound(NewsletterError):
    """The reader, subscriber, paper, edition or day asked for does not exist."""


class DeliveryError(NewsletterError):
    """Sending failed. `permanent` failures are never retried (except by an explicit resend)."""

    def __init__(self, message: str, *, code: int | None = None, permanent: bool = False) -> None:
        self.code = code
        self.permanent = permanent
        super().__init__(message)


class RecipientRefused(DeliveryError):
    """The server refused this recipient with a 5xx reply."""

    def __init__(self, recipient: str, code: int, reply: str) -> None:
        self.recipient = recipient
        self.reply = reply
        super().__init__(f"{recipient} refused: {code} {reply}", code=code, permanent=True)


class OutcomeUnknown(DeliveryError):
    """The whole message was transmitted, then the final reply never came (timeout or hang-up).

    The server may have queued it: sending it again at once could give the reader a copy, so
    the row becomes `unknown` and is tried again only after NEWSLETTER_UNKNOWN_RETRY_AFTER or by
    an explicit --resend (RFC 5321 4.5.3.2.6; Postfix defers the same way)."""
