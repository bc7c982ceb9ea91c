"""Failure classification and retry timing: which errors are temporary, which permanent, which
stop the run (Fatal), and the brake that tells a relay refusing everyone from readers refused one
by one."""

from __future__ import annotations

import datetime as dt
import logging
import random
import re
from dataclasses import dataclass
from typing import Literal, TypeVar

import aiosmtplib

from newsletter.errors import DeliveryError, RecipientRefused

log = logging.getLogger(__name__)


T = TypeVar("T")


# --- failure classification ---------------------------------------------------------------------
def oneline(text: str) -> str:
    return " ".join(str(text).split())


def reply_text(err: DeliveryError) -> str:
    """The server's words (or ours) for the ledger's last_reply."""
    if isinstance(err, RecipientRefused):
        return f"{err.code} {err.reply}"
    return str(err)


def classify(exc: BaseException, recipient: str, where: str) -> DeliveryError:
    """An aiosmtplib or OS error as a DeliveryError: a 5xx for the recipient or the message is
    permanent; 4xx, timeouts and lost connections are temporary. Anything else is a bug and
    is raised again."""
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        code, text = exc.code, oneline(exc.message)
        if isinstance(exc, aiosmtplib.SMTPRecipientRefused) and 500 <= code < 600:
            return RecipientRefused(recipient, code, text)
        return DeliveryError(f"{code} {text}", code=code, permanent=500 <= code < 600)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError):
        return DeliveryError(f"timed out waiting for {where}")
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return DeliveryError(f"{where} cannot take this message: {exc}", permanent=True)
    if isinstance(exc, aiosmtplib.SMTPException | OSError):
        return DeliveryError(f"connection to {where} lost: {oneline(str(exc))}")
    if isinstance(exc, ValueError):  # aiosmtplib refuses an address it cannot quote safely
        return DeliveryError(f"cannot send to {recipient!r}: {exc}", permanent=True)
    raise exc


def backoff(base: float, attempt: int, cap: float = 300.0) -> float:
    """Exponential backoff with jitter: base x 2^(attempt-1), times a factor in [0.5, 1.5)."""
    delay: float = min(cap, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
    return delay


def next_attempt_after(now: dt.datetime, attempts: int) -> dt.datetime:
    """When the next run (the daemon) may try a temporary failure again: 1 min, doubling per
    attempt so far, at most 1 h."""
    return now + dt.timedelta(seconds=min(3600, 60 * 2 ** max(0, attempts - 1)))


class Fatal(Exception):
    """A failure no retry can fix (settings): the run stops and raises `error`."""

    def __init__(self, error: DeliveryError) -> None:
        super().__init__(str(error))
        self.error = error


class NotStarted(Exception):
    """The caller's `may_start` said no once the send's waits were over: nothing was sent."""


class Unreachable(Exception):
    """The server stayed unreachable for every connection attempt: give up for this run."""

    def __init__(self, error: DeliveryError) -> None:
        super().__init__(str(error))
        self.error = error


def find_cause(exc: BaseException | None, kind: type[T]) -> T | None:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, kind):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


@dataclass(slots=True)
class Brake:
    """Tells a relay that refuses everyone from readers it refuses one by one.

    Watches the first `after` recipient replies of a run, in the order they complete. If they
    are all the same 5xx refusal (the recipient's address masked), the fault is the relay or
    our login, not the addresses: the run stops and every refusal stays retryable. Any other
    reply (a 250, a 4xx, a different refusal) turns the brake off for the rest of the run.
    """

    after: int
    seen: int = 0
    first: str | None = None
    state: Literal["watching", "off", "engaged"] = "watching"

    def __post_init__(self) -> None:
        if self.after <= 0:
            self.state = "off"

    def observe(self, refusal: str | None) -> Literal["watching", "off", "engaged"]:
        """One recipient reply: the masked 5xx text, or None for any other reply."""
        if self.state != "watching":
            return self.state
        if refusal is None or (self.first is not None and refusal != self.first):
            self.state = "off"
            return self.state
        self.first = refusal
        self.seen += 1
        if self.seen >= self.after:
            self.state = "engaged"
        return self.state


def masked_reply(err: DeliveryError, recipient: str) -> str:
    return re.sub(re.escape(recipient), "<recipient>", reply_text(err), flags=re.IGNORECASE)
