"""Delivery: send one edition to every subscriber exactly once, through faults, crashes, restarts.

Transports: SMTP through aiosmtplib (a pool of reused connections; this is the only module that
imports aiosmtplib) or, when NEWSLETTER_SMTP_HOST is unset, a local Maildir (`maildir.py`).

The run streams. Subscribers are taken in chunks: the chunk's ledger rows are read, papers are
selected and digests rendered (in a process pool on large runs, so rendering uses the other
core), the `planned` rows are committed, and the messages go into a bounded queue that the
senders drain. Memory stays flat however many subscribers there are.

Failures are classified, never allowed to stop the batch: a lost connection, a timeout or a 4xx
reply is retried with exponential backoff and jitter up to NEWSLETTER_SMTP_MAX_ATTEMPTS, then
left as a temporary failure (`failed`, with a next attempt time) for the next run; 421 also
closes that connection and shrinks the pool for a while; a 5xx for the recipient or the message
is permanent for that subscriber only (`failed_permanent`, sent again only by --resend). Errors
that no retry can fix (login refused, untrusted certificate, sender refused) stop the run with a
DeliveryError naming the setting to check; unsent rows stay `planned` for the next run.

Delivery guarantee. Every (edition, subscriber) is one ledger row. Before a message's SMTP
transaction starts, its row is committed as `planned` with the Message-ID and paper ids; it
becomes `sent`, together with the subscriber's paper history in one transaction, only after
the server answered 250 to the end of DATA. `sent` rows are committed in groups (everything
that got its 250 while the previous group was committing), and a sender takes no new message
until the group holding its 250 has committed, so at most one message per sender is ever in
flight, handed to the server but not yet recorded as sent: 2 x NEWSLETTER_SMTP_POOL_SIZE
(32 by default) for SMTP, 4 for the Maildir. A run sends every row that is not already `sent`,
`skipped` or `failed_permanent`, so after a crash, even SIGKILL, the next run loses no
subscriber and sends at most those in-flight messages a second time, with the same
Message-ID (derived from edition and address), so clients can tell the copy. A timeout while
waiting for the reply to DATA is the same ambiguity (the server may have kept the message)
and is retried the same way. `--resend` is the only way to send a `sent` row again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import multiprocessing
import os
import random
import re
import signal
import socket
import sqlite3
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import aiosmtplib
import sqlalchemy as sa
from aiosmtplib.protocol import normalize_message_line_endings

from newsletter.addresses import address_key
from newsletter.errors import (
    ConfigError,
    DeliveryError,
    NewsletterError,
    OutcomeUnknown,
    RecipientRefused,
    StoreError,
)
from newsletter.maildir import MaildirTransport
from newsletter.models import RenderedEmail, Subscriber
from newsletter.settings import Settings
from newsletter.signals import graceful_stop
from newsletter.store import LedgerRow, Store, history, ledger

log = logging.getLogger(__name__)
T = TypeVar("T")

SKIP_NO_MATCH = "no paper above the relevance threshold"
SKIP_ALL_SEEN = "every matching paper already received"
CHUNK = 64  # subscribers per select/render task
POOL_MIN_SUBSCRIBERS = 1000  # below this, rendering in a process pool costs more than it saves
PROGRESS_LOG_EVERY = 10.0  # seconds between progress lines when stderr is not a terminal
COMMIT_BATCH, COMMIT_GATHER_S = 32, 0.002  # a smaller group waits this long for company


# --- the report ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What one run did; rows finished by earlier runs are not counted (see `unchanged`).

    With `dry_run`, `sent` and `skipped` count what a real run would send and skip.
    `failures` maps "temporary: <reply>" / "permanent: <reply>" to the number of subscribers.
    """

    edition: dt.date
    sent: int = 0
    skipped: int = 0
    failed_temporary: int = 0
    failed_permanent: int = 0
    unknown: int = 0  # transmitted, no final reply: not resent until NEWSLETTER_UNKNOWN_RETRY_AFTER
    failures: Mapping[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    unchanged: int = 0  # already sent/skipped/failed_permanent, or a retry not yet due
    pending: int = 0  # planned but not attempted: the run was stopped
    interrupted: bool = False
    dry_run: bool = False
    transport: str = ""

    @property
    def failed(self) -> int:
        return self.failed_temporary + self.failed_permanent

    @property
    def complete(self) -> bool:
        """Every subscriber in scope has a final or scheduled outcome: nothing left planned."""
        return not self.interrupted and self.pending == 0

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "edition": self.edition.isoformat(),
            "sent": self.sent,
            "skipped": self.skipped,
            "failed_temporary": self.failed_temporary,
            "failed_permanent": self.failed_permanent,
            "unknown": self.unknown,
            "pending": self.pending,
            "elapsed_s": round(self.elapsed_s, 3),
        }

    def summary(self) -> str:
        verb = "would send" if self.dry_run else "sent"
        head = (
            f"edition {self.edition}: {verb} {self.sent}, skipped {self.skipped}, "
            f"failed {self.failed} ({self.failed_temporary} temporary, "
            f"{self.failed_permanent} permanent), unknown {self.unknown}, "
            f"already done {self.unchanged}; "
            f"{self.elapsed_s:.1f} s, {self.rate:.0f} messages/s"
        )
        lines = [head + (f" via {self.transport}" if self.transport else "")]
        if self.interrupted:
            lines.append(f"  interrupted: {self.pending} planned message(s) left for the next run")
        if self.unknown:
            lines.append(
                f"  unknown: {self.unknown} message(s) went out but the server never confirmed "
                "them; not resent at once (NEWSLETTER_UNKNOWN_RETRY_AFTER, or send --resend)"
            )
        for reason, n in sorted(self.failures.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {n:>6}  {reason}")
        return "\n".join(lines)


@dataclass(slots=True)
class _Tally:
    sent: int = 0
    skipped: int = 0
    failed_temporary: int = 0
    failed_permanent: int = 0
    unknown: int = 0
    unchanged: int = 0
    pending: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def done(self) -> int:
        return (
            self.sent
            + self.skipped
            + self.failed_temporary
            + self.failed_permanent
            + self.unknown
            + self.unchanged
        )


# --- failure classification ---------------------------------------------------------------------
def _oneline(text: str) -> str:
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
        code, text = exc.code, _oneline(exc.message)
        if isinstance(exc, aiosmtplib.SMTPRecipientRefused) and 500 <= code < 600:
            return RecipientRefused(recipient, code, text)
        return DeliveryError(f"{code} {text}", code=code, permanent=500 <= code < 600)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError):
        return DeliveryError(f"timed out waiting for {where}")
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return DeliveryError(f"{where} cannot take this message: {exc}", permanent=True)
    if isinstance(exc, aiosmtplib.SMTPException | OSError):
        return DeliveryError(f"connection to {where} lost: {_oneline(str(exc))}")
    if isinstance(exc, ValueError):  # aiosmtplib refuses an address it cannot quote safely
        return DeliveryError(f"cannot send to {recipient!r}: {exc}", permanent=True)
    raise exc


def backoff(base: float, attempt: int, cap: float = 300.0) -> float:
    """Exponential backoff with jitter: base x 2^(attempt-1), times a factor in [0.5, 1.5)."""
    return min(cap, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)


def next_attempt_after(now: dt.datetime, attempts: int) -> dt.datetime:
    """When the next run (the daemon) may try a temporary failure again: 1 min, doubling per
    attempt so far, at most 1 h."""
    return now + dt.timedelta(seconds=min(3600, 60 * 2 ** max(0, attempts - 1)))


class _Fatal(Exception):
    """A failure no retry can fix (settings): the run stops and raises `error`."""

    def __init__(self, error: DeliveryError) -> None:
        super().__init__(str(error))
        self.error = error


class _Unreachable(Exception):
    """The server stayed unreachable for every connection attempt: give up for this run."""

    def __init__(self, error: DeliveryError) -> None:
        super().__init__(str(error))
        self.error = error


def _find(exc: BaseException | None, kind: type[T]) -> T | None:
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


# --- transports ---------------------------------------------------------------------------------
class Transport(Protocol):
    name: str
    concurrency: int  # how many messages it can usefully have in flight

    async def start(self) -> None: ...

    async def send(self, message: RenderedEmail, sender: str, wire: bytes | None = None) -> str:
        """Deliver one message; returns the final reply. Raises DeliveryError. `wire` is
        `wire_form(message.raw)` when the caller has it already."""
        ...

    async def close(self) -> None: ...


def smtp_endpoint(settings: Settings) -> tuple[str, int]:
    """(security, port): security defaults by port (465 tls, 25 none, else starttls)."""
    port, security = settings.smtp_port, settings.smtp_security
    if security is None:
        security = {465: "tls", 25: "none"}.get(port or 587, "starttls")
    if port is None:
        port = {"tls": 465, "none": 25}.get(security, 587)
    return security, port


# An ASCII addr-spec that needs no quoting in MAIL FROM:<...> / RCPT TO:<...>.
_PLAIN_ADDRESS = re.compile(r"[!#-;=?-~]+@[A-Za-z0-9.-]+", re.ASCII)


def wire_form(raw: bytes) -> bytes | None:
    """What DATA transmits for `raw` (dot-stuffed, ending in ".\r\n"), or None when `raw`
    has a bare CR or LF or no final CRLF (aiosmtplib's sendmail() then normalises it).

    A rendered digest already has CRLF endings, so three C-level counts and one replace do
    what sendmail() does with three regex passes (~0.5 ms per 30 KB). The run computes this
    in the render workers, off the event loop.
    """
    crlf = raw.count(b"\r\n")
    if not (raw.endswith(b"\r\n") and raw.count(b"\n") == crlf and raw.count(b"\r") == crlf):
        return None
    # RFC 5321 4.5.2: a line that starts with "." gets one more; lines end only in CRLF here
    body = b"." + raw if raw.startswith(b".") else raw
    return body.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def _sender_fatal(code: int) -> bool:
    """A 5xx to MAIL FROM is about us, not the subscriber; 552 is this message's size."""
    return 500 <= code < 600 and code != 552


class _Client(aiosmtplib.SMTP):
    """One pooled connection: aiosmtplib.SMTP plus a fast path for messages in wire form.

    sendmail() runs a line-ending regex over the message twice (once for SIZE, once in DATA)
    and a dot-stuffing regex once, and parses both addresses with email.utils: together more
    CPU than everything else the sender does. The fast path sends MAIL, RCPT and DATA itself
    with the payload from `wire_form`; any other message goes through sendmail() unchanged.
    """

    def __init__(self, *, data_timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_timeout = data_timeout  # the final reply to DATA (RFC 5321: 10 minutes)
        self.messages = 0  # sent on this connection

    async def send_raw(
        self, sender: str, recipient: str, raw: bytes, wire: bytes | None = None
    ) -> str:
        plain = _PLAIN_ADDRESS.fullmatch(sender) and _PLAIN_ADDRESS.fullmatch(recipient)
        if plain and wire is None:
            wire = wire_form(raw)
        if not plain or wire is None:
            _errors, reply = await self.sendmail(sender, [recipient], raw)
            return f"250 {_oneline(reply)}"
        if self.is_ehlo_or_helo_needed:  # learn SIZE and 8BITMIME before the first MAIL
            try:
                await self.ehlo()
            except aiosmtplib.SMTPHeloError:
                await self.helo()
        options = []
        if self.supports_extension("size"):
            options.append(b"SIZE=%d" % len(raw))
        if not raw.isascii() and self.supports_extension("8bitmime"):
            options.append(b"BODY=8BITMIME")
        try:
            # MAIL and RCPT by hand: mail()/rcpt() parse each address with email.utils
            # (~70 us each); ours were checked once (_PLAIN_ADDRESS) and the protocol still
            # refuses any control character in a command.
            reply = await self.execute_command(b"MAIL", b"FROM:<%s>" % sender.encode(), *options)
            if reply.code != 250:
                raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)
            reply = await self.execute_command(b"RCPT", b"TO:<%s>" % recipient.encode())
            if reply.code not in (250, 251):
                raise aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)
            reply = await self._data_wire(wire)
            return f"{reply.code} {_oneline(reply.message)}"
        except aiosmtplib.SMTPResponseException:
            # reset the envelope so the connection can carry the next message
            with contextlib.suppress(ConnectionError, aiosmtplib.SMTPResponseException):
                await self.rset()
            raise

    async def login(
        self,
        username: str | bytes,
        password: str | bytes,
        /,
        timeout: Any = None,  # noqa: ASYNC109 (aiosmtplib's signature)
    ) -> aiosmtplib.SMTPResponse:
        """aiosmtplib's login tries every mechanism the server offers; after a 535 (the
        credentials are wrong) each further try is one more failed login at the provider,
        which may lock the account. Stop at the first 535."""
        await self._ehlo_or_helo_if_needed()
        if not self.supports_extension("auth"):
            return await super().login(username, password)  # its clear error
        last: aiosmtplib.SMTPAuthenticationError | None = None
        for name in self.supported_auth_methods:
            method = getattr(self, f"auth_{name.replace('-', '')}")
            try:
                response: aiosmtplib.SMTPResponse = await method(
                    username, password, timeout=self.timeout
                )
                return response
            except aiosmtplib.SMTPAuthenticationError as exc:
                if exc.code == 535:
                    raise
                last = exc  # a mechanism the server offers but does not support: next one
        raise last or aiosmtplib.SMTPException("No suitable authentication method found.")

    async def data(
        self,
        message: str | bytes,
        /,
        *,
        timeout: Any = None,  # noqa: ASYNC109 (aiosmtplib's signature; ours are per phase)
    ) -> aiosmtplib.SMTPResponse:
        """sendmail()'s DATA (addresses that need quoting) goes through `_data_wire` too, so
        every message gets the same phase timeouts and the same `unknown` rule."""
        raw = message.encode("ascii") if isinstance(message, str) else message
        wire = wire_form(normalize_message_line_endings(raw))
        assert wire is not None  # normalised: CRLF endings throughout
        return await self._data_wire(wire)

    async def _data_wire(self, wire: bytes) -> aiosmtplib.SMTPResponse:
        """DATA, the message, the final reply. Until the message has been handed over, a
        failure means "not sent" (temporary); after it, a timeout or a hang-up means the server
        may have queued it: OutcomeUnknown, never an immediate resend."""
        start = await self.execute_command(b"DATA")
        if start.code != 354:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        protocol = self.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        try:
            # as aiosmtplib's own DATA does: a reply is expected from now on (its protocol
            # drops data that arrives while no reply is pending, and the drain below yields)
            protocol._response_pending = True
            protocol.write(wire)
            # flow control: returns once the transport buffer is below its high-water mark,
            # i.e. (for a digest) once the kernel has taken the whole message
            await asyncio.wait_for(protocol._drain_helper(), self.timeout)
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError, TimeoutError) as exc:
            self.close()
            raise aiosmtplib.SMTPServerDisconnected(
                "connection lost while sending the message"
            ) from exc
        try:
            reply = await protocol.read_response(timeout=self.data_timeout)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError) as exc:
            self.close()
            what = (
                f"no reply within {self.data_timeout:g} s"
                if isinstance(exc, aiosmtplib.SMTPTimeoutError)
                else "the connection was lost"
            )
            raise OutcomeUnknown(
                f"the whole message was sent but {what} after it; the server may have it"
            ) from exc
        if reply.code == 421:
            self.close()
        if reply.code != 250:
            raise aiosmtplib.SMTPDataError(reply.code, reply.message)
        return reply


class _Gate:
    """A counting semaphore whose size can change (the pool shrinks after a 421)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        while self.used >= self.size:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut in self._waiters:
                    self._waiters.remove(fut)
                else:
                    self._wake()  # we were woken but will not run: pass the turn on
                raise
        self.used += 1

    def release(self) -> None:
        self.used -= 1
        self._wake()

    def resize(self, size: int) -> None:
        self.size = size
        self._wake()

    def _wake(self) -> None:
        free = self.size - self.used
        while free > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                free -= 1


class _RateLimit:
    """Spaces message starts evenly: at most `rate` per second across all connections."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next = 0.0

    async def wait(self) -> None:
        now = time.monotonic()
        at = max(now, self._next)
        self._next = at + self.interval
        if at > now:
            await asyncio.sleep(at - now)


def _tls_context(settings: Settings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if settings.smtp_ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(settings.smtp_ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"setting NEWSLETTER_SMTP_CA_FILE: cannot load {str(settings.smtp_ca_file)!r} "
                f"({exc}); point it at a PEM CA bundle"
            ) from exc
    if not settings.smtp_validate_certs:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class SmtpTransport:
    """A pool of reused SMTP connections with reconnects, a per-connection message cap, an
    optional rate limit and a shared connection backoff: when the server is down, senders wait
    for one probe instead of each hammering it, and after NEWSLETTER_SMTP_MAX_ATTEMPTS failed
    rounds the remaining messages fail fast (temporary) until a later probe succeeds."""

    def __init__(self, settings: Settings) -> None:
        if not settings.smtp_host:
            raise ConfigError("setting NEWSLETTER_SMTP_HOST: not set; SMTP needs a server name")
        self.host = settings.smtp_host
        self.security, self.port = smtp_endpoint(settings)
        if (
            settings.smtp_username
            and self.security == "none"
            and not settings.smtp_allow_plaintext_auth
        ):
            raise ConfigError(
                f"setting NEWSLETTER_SMTP_USERNAME is set but NEWSLETTER_SMTP_SECURITY is none "
                f"(port {self.port}): the password would cross the network in clear; use "
                "starttls (587) or tls (465), or set NEWSLETTER_SMTP_ALLOW_PLAINTEXT_AUTH=true "
                "for a relay on a trusted network"
            )
        self.where = f"{self.host}:{self.port}"
        self.name = f"SMTP {self.where} ({self.security})"
        self.username = settings.smtp_username
        self._password = settings.smtp_secret()  # never logged, never in a message
        self.timeout = settings.smtp_timeout
        self.data_timeout = settings.smtp_data_timeout
        self.helo = settings.smtp_helo_name
        self.pool_size = settings.smtp_pool_size
        self.concurrency = 2 * settings.smtp_pool_size  # extra senders wait on ledger commits
        self.max_per_connection = settings.smtp_max_per_connection
        self.max_attempts = settings.smtp_max_attempts
        self.retry_base = settings.smtp_retry_base
        self._tls = _tls_context(settings) if self.security != "none" else None
        self._gate = _Gate(self.pool_size)
        self._rate = _RateLimit(settings.smtp_rate_limit) if settings.smtp_rate_limit else None
        self._idle: list[_Client] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._round = 0  # connection failures in one round count once
        self._failures = 0  # consecutive failed rounds
        self._retry_at = 0.0
        self._last_error: DeliveryError | None = None
        self._ok_since_421 = 0
        # Until one connection has worked, connect one at a time: a refused login then costs
        # one attempt per run, not one per pooled connection (providers lock accounts).
        self._first = asyncio.Lock()
        self._connected_once = False
        self._fatal: DeliveryError | None = None

    def __repr__(self) -> str:
        return f"<SmtpTransport {self.where} user={self.username!r}>"

    async def start(self) -> None:
        if not self.helo:  # aiosmtplib would look it up again for every connection
            self.helo = await asyncio.to_thread(socket.getfqdn)

    async def send(self, message: RenderedEmail, sender: str, wire: bytes | None = None) -> str:
        if self._rate is not None:
            await self._rate.wait()
        await self._gate.acquire()
        client: _Client | None = None
        reusable = False
        try:
            client = await self._checkout()
            try:
                reply = await client.send_raw(sender, message.to, message.raw, wire)
            except (aiosmtplib.SMTPException, OSError, ValueError) as exc:
                if isinstance(exc, aiosmtplib.SMTPSenderRefused) and _sender_fatal(exc.code):
                    raise _Fatal(
                        DeliveryError(
                            f"{self.where} refused the sender address {sender!r}: {exc.code} "
                            f"{_oneline(exc.message)}; check NEWSLETTER_SENDER_ADDRESS and "
                            "that this server relays for it (NEWSLETTER_SMTP_USERNAME)",
                            code=exc.code,
                            permanent=True,
                        )
                    ) from exc
                err = classify(exc, message.to, self.where)
                if err.code == 421:  # the server wants fewer of us: drop this connection
                    self._slow_down()
                    client.close()
                # after a reply (and RSET) the connection is clean; after anything else, not
                replied = (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused)
                reusable = isinstance(exc, replied) and client.is_connected
                raise err from exc
            client.messages += 1
            reusable = True
            self._after_success()
            return reply
        finally:
            if client is not None:
                self._checkin(client, reusable)
            self._gate.release()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            self._retire(client)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # -- connections ------------------------------------------------------------------------
    async def _checkout(self) -> _Client:
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client
            client.close()
        return await self._connect()

    def _checkin(self, client: _Client, reusable: bool) -> None:
        if not reusable:  # mid-transaction (cancelled, or an error we cannot read): hang up
            client.close()
        elif client.is_connected and client.messages < self.max_per_connection:
            self._idle.append(client)
        else:
            self._retire(client)

    def _retire(self, client: _Client) -> None:
        if not client.is_connected:
            client.close()
            return
        task = asyncio.get_running_loop().create_task(self._quit(client))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _quit(self, client: _Client) -> None:
        try:
            await client.quit(timeout=min(self.timeout, 5.0))
        except (aiosmtplib.SMTPException, OSError):
            pass
        finally:
            client.close()

    async def _connect(self) -> _Client:
        if self._connected_once:
            return await self._open()
        async with self._first:
            if self._fatal is not None:
                raise _Fatal(self._fatal)
            client = await self._open()
            self._connected_once = True
            return client

    async def _open(self) -> _Client:
        while True:
            wait = self._retry_at - time.monotonic()
            if wait > 0 and self._failures >= self.max_attempts and self._last_error:
                raise _Unreachable(self._last_error)
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            round_ = self._round
            try:
                client = self._new_client()
            except ValueError as exc:  # e.g. a HELO name aiosmtplib will not send
                raise _Fatal(
                    DeliveryError(
                        f"cannot talk to {self.where}: {exc}; check NEWSLETTER_SMTP_HOST and "
                        "NEWSLETTER_SMTP_HELO_NAME",
                        permanent=True,
                    )
                ) from exc
            try:
                await client.connect()
            except (aiosmtplib.SMTPException, OSError) as exc:
                client.close()
                fatal = self._fatal_reason(exc)
                if fatal is not None:
                    self._fatal = DeliveryError(fatal, permanent=True)
                    raise _Fatal(self._fatal) from exc
                err = DeliveryError(
                    f"cannot connect to {self.where}: {_oneline(str(exc))}",
                    code=getattr(exc, "code", None),
                )
                if round_ == self._round:  # the first of a burst of concurrent failures
                    self._round += 1
                    self._failures += 1
                    self._last_error = err
                    delay = backoff(self.retry_base, self._failures)
                    self._retry_at = time.monotonic() + delay
                    log.warning("%s; next connection attempt in %.1f s", err, delay)
                raise err from exc
            if self._failures:
                log.info("connected to %s again", self.where)
                self._failures, self._round = 0, self._round + 1
            return client

    def _new_client(self) -> _Client:
        return _Client(
            hostname=self.host,
            port=self.port,
            username=self.username,
            password=self._password,
            local_hostname=self.helo,
            timeout=self.timeout,
            data_timeout=self.data_timeout,
            use_tls=self.security == "tls",
            start_tls=self.security == "starttls",
            tls_context=self._tls,
        )

    def _fatal_reason(self, exc: BaseException) -> str | None:
        """Why no retry can fix this connection failure (a setting), or None."""
        where = self.where
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            return (
                f"{where} refused the login as {self.username!r}: {exc.code} "
                f"{_oneline(exc.message)}; check NEWSLETTER_SMTP_USERNAME and the password "
                "(NEWSLETTER_SMTP_PASSWORD or NEWSLETTER_SMTP_PASSWORD_FILE)"
            )
        cert = _find(exc, ssl.SSLCertVerificationError)
        if cert is not None:
            return (
                f"the TLS certificate of {where} is not trusted ({cert.verify_message}); set "
                "NEWSLETTER_SMTP_CA_FILE to the CA that signed it (or, for a test server only, "
                "NEWSLETTER_SMTP_VALIDATE_CERTS=false)"
            )
        tls = _find(exc, ssl.SSLError)
        if tls is not None:
            return (
                f"TLS with {where} failed ({tls.reason or tls}); check that "
                f"NEWSLETTER_SMTP_SECURITY={self.security} suits port {self.port} "
                "(465: tls, 587: starttls, 25: none)"
            )
        if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code >= 500:
            return (
                f"{where} refused the session: {exc.code} {_oneline(exc.message)}; check "
                "NEWSLETTER_SMTP_HOST, NEWSLETTER_SMTP_PORT and NEWSLETTER_SMTP_HELO_NAME"
            )
        if type(exc) in (aiosmtplib.SMTPException, aiosmtplib.SMTPNotSupported):
            return (
                f"{where}: {exc} (security {self.security}, user {self.username!r}); check "
                "NEWSLETTER_SMTP_SECURITY and NEWSLETTER_SMTP_USERNAME"
            )
        return None

    # -- 421: fewer connections for a while ---------------------------------------------------
    def _slow_down(self) -> None:
        self._ok_since_421 = 0
        smaller = max(1, self._gate.size // 2)
        if smaller < self._gate.size:
            log.warning(
                "%s answered 421; using %d connection(s) instead of %d for a while",
                self.where,
                smaller,
                self._gate.size,
            )
            self._gate.resize(smaller)

    def _after_success(self) -> None:
        if self._gate.size < self.pool_size:
            self._ok_since_421 += 1
            if self._ok_since_421 >= 50:  # additive increase, as TCP does
                self._ok_since_421 = 0
                self._gate.resize(self._gate.size + 1)


def make_transport(settings: Settings) -> Transport:
    """SMTP when NEWSLETTER_SMTP_HOST is set, otherwise the Maildir outbox."""
    if settings.smtp_host:
        return SmtpTransport(settings)
    return MaildirTransport(settings.outbox_dir)


# --- the ledger: batched writes -----------------------------------------------------------------
# These are the batch forms of Store.plan / mark_sent / mark_failed / mark_skipped: one
# transaction per group of messages instead of one per message (the per-message form costs
# more CPU than sending). Same tables, same semantics.
@dataclass(slots=True)
class _Outcome:
    email: str
    status: str  # sent | failed | failed_permanent | skipped
    attempts: int = 0
    reply: str | None = None
    reason: str | None = None
    message_id: str | None = None
    paper_ids: tuple[str, ...] = ()
    next_attempt_at: dt.datetime | None = None


def _plan_rows(
    store: Store,
    edition: dt.date,
    items: Sequence[tuple[str, str, tuple[str, ...]]],
    now: dt.datetime,
) -> None:
    """Insert `planned` rows (email, message_id, paper_ids) that do not exist yet."""
    with store.engine.begin() as conn:
        have = set(
            conn.execute(
                sa.select(ledger.c.email).where(
                    ledger.c.edition == edition, ledger.c.email.in_([e for e, _, _ in items])
                )
            ).scalars()
        )
        rows = [
            {
                "edition": edition,
                "email": email,
                "status": "planned",
                "message_id": mid,
                "paper_ids": json.dumps(list(pids)),
                "attempts": 0,
                "updated_at": now,
            }
            for email, mid, pids in items
            if email not in have
        ]
        if rows:
            conn.execute(ledger.insert(), rows)


_UPDATE = (
    ledger.update()
    .where(ledger.c.edition == sa.bindparam("b_edition"), ledger.c.email == sa.bindparam("b_email"))
    .values(
        status=sa.bindparam("b_status"),
        message_id=sa.func.coalesce(sa.bindparam("b_message_id"), ledger.c.message_id),
        paper_ids=sa.bindparam("b_paper_ids"),
        attempts=ledger.c.attempts + sa.bindparam("b_attempts"),
        last_reply=sa.func.coalesce(sa.bindparam("b_reply"), ledger.c.last_reply),
        reason=sa.bindparam("b_reason"),
        next_attempt_at=sa.bindparam("b_next"),
        updated_at=sa.bindparam("b_now"),
    )
)


def _write_outcomes(
    store: Store, edition: dt.date, batch: Sequence[_Outcome], now: dt.datetime
) -> None:
    """Record outcomes in one transaction; `sent` adds the papers to the history with it."""
    sent = [o for o in batch if o.status == "sent"]
    rest = [o for o in batch if o.status != "sent"]
    with store.engine.begin() as conn:
        mark = _placeholder(conn.dialect)
        if sent and mark is not None:
            rest += _update_sent(conn, mark, edition, sent, now)  # + any without a row
        else:
            rest += sent
        if rest:
            _upsert(conn, edition, rest, now)
        # an `unknown` digest may well have arrived: its papers count as had, so no later
        # edition repeats them (its own retry re-renders the same papers)
        had = sent + [o for o in batch if o.status == "unknown"]
        if had:
            _add_history(conn, mark, edition, had, now)


# `sent` is written once per message and dominated the sender's CPU through SQLAlchemy's
# per-row parameter processing (~20 us a row, ten history rows a digest); these go to the
# driver's executemany instead. The dates are the same for a whole batch, so they pass the
# column types' bind processors once. The SQL is the same on SQLite and PostgreSQL.
def _placeholder(dialect: sa.Dialect) -> str | None:
    if dialect.name == "sqlite" and sqlite3.sqlite_version_info < (3, 24):
        return None  # no ON CONFLICT DO NOTHING: the portable path below
    return {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(dialect.paramstyle)


def _update_sent(
    conn: sa.Connection, m: str, edition: dt.date, sent: Sequence[_Outcome], now: dt.datetime
) -> list[_Outcome]:
    """Mark planned rows sent; returns the outcomes that had no row (for the insert path)."""
    d = conn.dialect
    table = d.identifier_preparer.format_table(ledger)
    ed, at = _bound(ledger.c.edition, d, edition), _bound(ledger.c.updated_at, d, now)
    result = conn.exec_driver_sql(
        f"UPDATE {table} SET status = 'sent', message_id = {m}, paper_ids = {m}, "
        f"attempts = attempts + {m}, last_reply = {m}, reason = NULL, next_attempt_at = NULL, "
        f"updated_at = {m} WHERE edition = {m} AND email = {m}",
        [
            (o.message_id, json.dumps(list(o.paper_ids)), o.attempts, o.reply, at, ed, o.email)
            for o in sent
        ],
    )
    if result.rowcount == len(sent):
        return []
    have = set(
        conn.execute(
            sa.select(ledger.c.email).where(
                ledger.c.edition == edition, ledger.c.email.in_([o.email for o in sent])
            )
        ).scalars()
    )
    return [o for o in sent if o.email not in have]


def _add_history(
    conn: sa.Connection,
    m: str | None,
    edition: dt.date,
    sent: Sequence[_Outcome],
    now: dt.datetime,
) -> None:
    pairs = [(o.email, p) for o in sent for p in dict.fromkeys(o.paper_ids)]
    if not pairs:
        return
    if m is not None:
        d = conn.dialect
        table = d.identifier_preparer.format_table(history)
        ed, at = _bound(history.c.edition, d, edition), _bound(history.c.delivered_at, d, now)
        conn.exec_driver_sql(  # a resend's papers are in the history already
            f"INSERT INTO {table} (email, paper_id, edition, delivered_at) "
            f"VALUES ({m}, {m}, {m}, {m}) ON CONFLICT DO NOTHING",
            [(e, p, ed, at) for e, p in pairs],
        )
        return
    known = {
        (e, p)
        for e, p in conn.execute(
            sa.select(history.c.email, history.c.paper_id).where(
                history.c.email.in_([o.email for o in sent]),
                history.c.paper_id.in_(sorted({p for _, p in pairs})),
            )
        )
    }
    rows = [
        {"email": e, "paper_id": p, "edition": edition, "delivered_at": now}
        for e, p in pairs
        if (e, p) not in known
    ]
    if rows:
        conn.execute(history.insert(), rows)


def _upsert(
    conn: sa.Connection, edition: dt.date, outcomes: Sequence[_Outcome], now: dt.datetime
) -> None:
    """Failures and skips (and the rare `sent` without a planned row): update or insert."""
    have = dict(
        conn.execute(
            sa.select(ledger.c.email, ledger.c.status).where(
                ledger.c.edition == edition, ledger.c.email.in_([o.email for o in outcomes])
            )
        ).all()
    )
    # a `sent` row is never downgraded (a skip or failure from a stale view of it)
    todo = [o for o in outcomes if have.get(o.email) != "sent" or o.status == "sent"]
    values = [
        {
            "b_edition": edition,
            "b_email": o.email,
            "b_status": o.status,
            "b_message_id": o.message_id,
            "b_paper_ids": json.dumps(list(o.paper_ids)),
            "b_attempts": o.attempts,
            "b_reply": o.reply,
            "b_reason": o.reason,
            "b_next": o.next_attempt_at,
            "b_now": now,
        }
        for o in todo
        if o.email in have
    ]
    if values:
        conn.execute(_UPDATE, values)
    fresh = [
        {
            "edition": edition,
            "email": o.email,
            "status": o.status,
            "message_id": o.message_id,
            "paper_ids": json.dumps(list(o.paper_ids)),
            "attempts": o.attempts,
            "last_reply": o.reply,
            "reason": o.reason,
            "next_attempt_at": o.next_attempt_at,
            "updated_at": now,
        }
        for o in todo
        if o.email not in have
    ]
    if fresh:
        conn.execute(ledger.insert(), fresh)


def _bound(column: sa.Column[Any], dialect: sa.Dialect, value: Any) -> Any:
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    return process(value) if process else value


def _threadable(store: Store) -> bool:
    """An in-memory SQLite database is private to its thread; anything else can be shared."""
    return not (store.dialect == "sqlite" and store.engine.url.database in (None, "", ":memory:"))


class _LedgerWriter:
    """Group commit: everything that finished while one transaction ran goes into the next.

    Writes run on one dedicated thread, so the event loop keeps sending while the database
    commits. `sent` callers wait for their commit (that bounds the repeat window); failures
    and skips do not need to: losing them in a crash only means the next run retries them.
    """

    def __init__(self, store: Store, edition: dt.date, now: Callable[[], dt.datetime]) -> None:
        self.store, self.edition, self.now = store, edition, now
        self._executor = (
            ThreadPoolExecutor(1, thread_name_prefix="ledger") if _threadable(store) else None
        )
        self._pending: list[tuple[_Outcome, asyncio.Future[None] | None]] = []
        self._wake = asyncio.Event()
        self._closed = False
        self._error: BaseException | None = None  # the writer failed: every caller learns it
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            if self._executor is None:
                return fn(*args)
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sa.exc.SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            raise StoreError(
                f"cannot write the delivery ledger ({type(cause).__name__}: {cause}); messages "
                "not yet recorded as sent will be sent again by the next run"
            ) from exc

    async def plan(self, items: Sequence[tuple[str, str, tuple[str, ...]]]) -> None:
        if items:
            await self.call(_plan_rows, self.store, self.edition, items, self.now())

    def record(self, outcome: _Outcome) -> None:
        if self._error is not None:
            raise self._error
        self._pending.append((outcome, None))
        self._wake.set()

    async def record_and_wait(self, outcome: _Outcome) -> None:
        if self._error is not None:
            raise self._error
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((outcome, fut))
        self._wake.set()
        await fut

    async def _run(self) -> None:
        batch: list[tuple[_Outcome, asyncio.Future[None] | None]] = []
        try:
            while True:
                await self._wake.wait()
                if len(self._pending) < COMMIT_BATCH and not self._closed:
                    # a moment for more outcomes: each transaction costs ~0.3 ms of CPU
                    await asyncio.sleep(COMMIT_GATHER_S)
                self._wake.clear()
                batch, self._pending = self._pending, []
                if batch:
                    outcomes = [o for o, _ in batch]
                    await self.call(_write_outcomes, self.store, self.edition, outcomes, self.now())
                    for _, fut in batch:
                        if fut is not None and not fut.done():
                            fut.set_result(None)
                if self._closed and not self._pending:
                    return
        except BaseException as exc:
            self._error = exc
            for _, fut in [*batch, *self._pending]:  # nobody may wait for ever
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
            raise

    async def close(self) -> None:
        """Commit everything recorded so far, then stop."""
        self._closed = True
        self._wake.set()
        try:
            await asyncio.shield(self._task)
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)


# --- select and render (the CPU-heavy part) -----------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Prepared:
    email: str  # lower-cased
    message: RenderedEmail | None = None  # without html/text: only raw travels on
    wire: bytes | None = None  # wire_form(raw), computed here rather than on the event loop
    skip: str | None = None
    error: str | None = None
    permanent: bool = True  # an error about this subscriber (not a bug of ours)


_INDEXES: dict[int, Any] = {}


def paper_index(store: Store) -> Any:
    """The matcher's index over every stored paper, built once per process and set of papers:
    building takes ~0.4 s, and the daemon sends an edition per group of subscribers."""
    from newsletter.selection import PaperIndex

    all_papers = store.all_papers()
    key = hash(tuple(all_papers))
    if key not in _INDEXES:
        _INDEXES.clear()
        _INDEXES[key] = PaperIndex.build(all_papers)
    return _INDEXES[key]


class _Preparer:
    """Selection and rendering for a chunk of subscribers, in this process or a worker."""

    def __init__(self, settings: Settings, store: Store, renderer: Any) -> None:
        self.settings, self.store, self.renderer = settings, store, renderer
        self.index = paper_index(store)

    def prepare(
        self, subscribers: Sequence[Subscriber], edition: dt.date, now: dt.datetime
    ) -> list[_Prepared]:
        from newsletter.pipeline import edition_listing, selections_for
        from newsletter.selection import select_for

        selections = selections_for(
            self.store, self.settings, subscribers, edition, index=self.index
        )
        empty = [s.subscriber for s in selections if not any(p.sent for p in s.papers)]
        matched = set()
        if empty:  # empty only because of history? Select again without it to tell the user.
            listing = edition_listing(self.store, edition)
            threshold = self.settings.relevance_threshold
            again = select_for(self.index, listing, empty, threshold=threshold)
            matched = {address_key(s.subscriber.email) for s in again if s.papers}
        out = []
        for sel in selections:
            email = address_key(sel.subscriber.email)
            if not any(p.sent for p in sel.papers):
                out.append(
                    _Prepared(email, skip=SKIP_ALL_SEEN if email in matched else SKIP_NO_MATCH)
                )
                continue
            try:
                msg = self.renderer.render(sel, now=now)
            except (ValueError, NewsletterError) as exc:  # e.g. an address we cannot send to
                out.append(_Prepared(email, error=f"cannot render the digest: {exc}"))
                continue
            except Exception as exc:  # a bug: shunt this digest (logged), keep going
                log.exception("rendering the digest for %s failed", email)
                error = f"cannot render the digest: {type(exc).__name__}: {exc}"
                out.append(_Prepared(email, error=error, permanent=False))
                continue
            slim = dataclasses.replace(msg, html="", text="")
            out.append(_Prepared(email, slim, wire_form(msg.raw)))
        return out


_WORKER: _Preparer | None = None  # in a worker: the preparer it runs


def _worker_signals() -> None:
    """Signals are for the parent: it stops the run and then shuts the pool down. If the
    parent dies instead (SIGKILL), nothing tells the workers, so each watches for it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # so does systemd's stop
    parent = os.getppid()

    def exit_with_parent() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=exit_with_parent, name="exit-with-parent", daemon=True).start()


def _worker_init_forked(lock_dir: Path) -> None:
    _worker_signals()
    # A forked child shares the parent's event-loop wakeup socket: a signal here would reach
    # the parent's loop as if the parent had got it.
    with contextlib.suppress(ValueError):  # only possible in the main thread
        signal.set_wakeup_fd(-1)
    _close_inherited_locks(lock_dir)
    assert _WORKER is not None, "fork without a preparer"
    _WORKER.store.engine.dispose(close=False)  # fresh connections; never the parent's


def _close_inherited_locks(lock_dir: Path) -> None:
    """Drop our copy of the parent's sender lock (Store.sender_lock: an flock on
    `<db>.send-*.lock` beside the database). An flock lives as long as any copy of its descriptor, so a worker
    outliving a SIGKILLed parent would otherwise keep the next run out for a moment."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:  # no /proc: nothing to find them with
        return
    root = os.path.realpath(lock_dir)
    for fd in fds:
        with contextlib.suppress(OSError, ValueError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            name = os.path.basename(target)
            if os.path.dirname(target) == root and ".send-" in name and name.endswith(".lock"):
                os.close(int(fd))


def _worker_init_spawned(settings: Settings) -> None:
    from newsletter.render import Renderer

    _worker_signals()
    global _WORKER
    store = Store.open(
        settings.database_url,
        lock_timeout=settings.db_lock_timeout,
        statement_timeout=settings.db_statement_timeout,
    )
    _WORKER = _Preparer(settings, store, Renderer(settings))


def _worker_prepare(
    subscribers: list[Subscriber], edition: dt.date, now: dt.datetime
) -> list[_Prepared]:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.prepare(subscribers, edition, now)


def _noop() -> None:
    return None


class _InlinePool:
    """Prepares in the event loop's thread: small runs, and in-memory databases."""

    depth = 0

    def __init__(self, preparer: _Preparer) -> None:
        self.preparer = preparer

    def submit(
        self, subs: Sequence[Subscriber], edition: dt.date, now: dt.datetime
    ) -> asyncio.Future[list[_Prepared]]:
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(self.preparer.prepare(subs, edition, now))
        return fut

    def close(self) -> None:
        return None


class _ProcessPool:
    """Prepares in worker processes.

    Forked where possible: a child inherits the imported modules, the paper index and the
    compiled templates, where a spawned one spends ~1.5 s of CPU rebuilding them. Forking is
    safe here because it happens first thing in the run, before the ledger thread or any
    other thread of ours exists (the executor forks all workers at the first submit).
    """

    def __init__(self, settings: Settings, preparer: _Preparer, workers: int) -> None:
        global _WORKER
        self.depth = 2 * workers
        if "fork" in multiprocessing.get_all_start_methods():
            _WORKER = preparer
            ctx, init, args = "fork", _worker_init_forked, (preparer.store.lock_dir,)
        else:
            ctx, init, args = "spawn", _worker_init_spawned, (settings,)
        self._executor = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context(ctx),
            initializer=init,
            initargs=args,
        )
        self._executor.submit(_noop)  # start the workers now, while we have no threads

    def submit(
        self, subs: Sequence[Subscriber], edition: dt.date, now: dt.datetime
    ) -> asyncio.Future[list[_Prepared]]:
        return asyncio.get_running_loop().run_in_executor(
            self._executor, _worker_prepare, list(subs), edition, now
        )

    def close(self) -> None:
        global _WORKER
        self._executor.shutdown(wait=True, cancel_futures=True)
        _WORKER = None


# --- progress -----------------------------------------------------------------------------------
class _Progress:
    """A rich progress bar when stderr is a terminal, a log line every few seconds otherwise."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label = total, label
        self._started = self._last = time.monotonic()
        self._bar: Any = None
        if sys.stderr.isatty() and total:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[counts]}"),
                console=Console(stderr=True),
                transient=True,
            )
            self._task = self._bar.add_task(label, total=total, counts="")
            self._bar.start()

    def update(self, tally: _Tally) -> None:
        counts = (
            f"sent {tally.sent} · skipped {tally.skipped} · "
            f"failed {tally.failed_temporary + tally.failed_permanent}"
        )
        if self._bar is not None:
            self._bar.update(self._task, completed=tally.done, counts=counts)
            return
        now = time.monotonic()
        if now - self._last >= PROGRESS_LOG_EVERY:
            self._last = now
            rate = tally.sent / (now - self._started)
            log.info(
                "%s: %d/%d done (%s), %.0f messages/s",
                self.label,
                tally.done,
                self.total,
                counts,
                rate,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


# --- the send loop ------------------------------------------------------------------------------
@dataclass(slots=True, eq=False)
class _Job:
    email: str
    message: RenderedEmail
    wire: bytes | None
    prior_attempts: int = 0  # from earlier runs
    attempts: int = 0  # in this run
    last_error: DeliveryError | None = None


def _scope(
    subscribers: Sequence[Subscriber], only: Sequence[str] | None, resend: Sequence[str]
) -> list[Subscriber]:
    by_email: dict[str, Subscriber] = {}
    for s in subscribers:  # one mailbox, one digest (the subscriber file refuses duplicates)
        kept = by_email.setdefault(address_key(s.email), s)
        if kept is not s:
            log.warning("%s: same mailbox as %s; sending it one digest", s.email, kept.email)
    named = [address_key(e) for e in [*(only or ()), *resend]]
    unknown = [e for e in named if e not in by_email]
    if unknown:
        raise ConfigError(
            f"unknown subscriber(s) {', '.join(sorted(set(unknown)))}: not in the subscriber "
            "file; check the address (newsletter subscribers check lists them)"
        )
    if only is None and not resend:
        return list(by_email.values())
    return [by_email[e] for e in dict.fromkeys(named)]


class _Run:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        scope: list[Subscriber],
        edition: dt.date,
        *,
        dry_run: bool,
        now: Callable[[], dt.datetime],
        respect_next_attempt: bool,
        stop: asyncio.Event,
        force: frozenset[str] = frozenset(),
    ) -> None:
        self.settings, self.store, self.scope, self.edition = settings, store, scope, edition
        self.force = force  # resends in a dry run: treated as due whatever their row says
        self.dry_run, self.now, self.respect = dry_run, now, respect_next_attempt
        self.stop = stop
        self.sender = settings.sender_address
        self.max_attempts = settings.smtp_max_attempts
        self.retry_base = settings.smtp_retry_base
        self.tally = _Tally()
        self.transport: Transport | None = None
        self.ledger: _LedgerWriter | None = None
        self.queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self.room: asyncio.Semaphore | None = None
        self.outstanding = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.delayed: dict[_Job, asyncio.TimerHandle] = {}
        self.stored_ids: dict[str, tuple[str | None, int]] = {}
        self.fatal: DeliveryError | None = None
        self.crash: BaseException | None = None
        self.brake = Brake(settings.smtp_brake_after)
        self.held: list[tuple[_Job, DeliveryError]] = []  # refusals the brake has not judged
        self.produced = False
        self.progress: _Progress | None = None  # started after the workers (it has a thread)

    # -- orchestration ----------------------------------------------------------------------
    async def execute(self, renderer: Any) -> None:
        pool = self._make_pool(renderer)  # first: it may fork, which wants no threads around
        self.progress = _Progress(len(self.scope), f"edition {self.edition}")
        senders: list[asyncio.Task[None]] = []
        watcher: asyncio.Task[None] | None = None
        try:
            if not self.dry_run:
                self.transport = make_transport(self.settings)
                await self.transport.start()
                self.ledger = _LedgerWriter(self.store, self.edition, self.now)
                n = self.transport.concurrency
                self.room = asyncio.Semaphore(max(4 * n, 2 * CHUNK))
                senders = [asyncio.create_task(self._sender()) for _ in range(n)]
                watcher = asyncio.create_task(self._watch_stop())
                log.info(
                    "sending the %s edition to %d subscriber(s) via %s",
                    self.edition,
                    len(self.scope),
                    self.transport.name,
                )
            await self._produce(pool)
            self.produced = True
            self._release_if_idle()
            await _first(self.idle.wait(), self.stop.wait())
            self._close_queue(len(senders))
            await asyncio.gather(*senders)
        finally:
            if watcher is not None:
                watcher.cancel()
            for task in senders:  # only still running when we were cancelled: abandon
                task.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
            try:
                if self.ledger is not None:
                    await self.ledger.close()
            finally:
                if self.transport is not None:
                    await self.transport.close()
                await asyncio.to_thread(pool.close)
                if self.progress is not None:
                    self.progress.close()
        if self.crash is not None:
            raise self.crash

    def _progress(self) -> None:
        if self.progress is not None:
            self.progress.update(self.tally)

    def _make_pool(self, renderer: Any) -> _InlinePool | _ProcessPool:
        preparer = _Preparer(self.settings, self.store, renderer)
        workers = min(os.cpu_count() or 1, 4)
        if len(self.scope) >= POOL_MIN_SUBSCRIBERS and workers > 1 and _threadable(self.store):
            log.info("rendering in %d worker processes", workers)
            return _ProcessPool(self.settings, preparer, workers)
        return _InlinePool(preparer)

    async def _watch_stop(self) -> None:
        await self.stop.wait()
        log.warning("stopping: no new messages; finishing the ones in flight")
        if self.room is not None:
            self.room.release()  # wake the producer if it waits for room

    def _close_queue(self, senders: int) -> None:
        for job, handle in list(self.delayed.items()):  # retries not yet due: record them
            handle.cancel()
            self._abandon(job)
        self.delayed.clear()
        for _ in range(senders):
            self.queue.put_nowait(None)

    # -- producing: ledger state, select, render, plan ----------------------------------------
    async def _produce(self, pool: _InlinePool | _ProcessPool) -> None:
        waiting: collections.deque[asyncio.Future[list[_Prepared]]] = collections.deque()
        try:
            for i in range(0, len(self.scope), CHUNK):
                if self.stop.is_set():
                    break
                todo = self._todo(self.scope[i : i + CHUNK])
                if todo:
                    waiting.append(pool.submit(todo, self.edition, self.now()))
                while waiting and (len(waiting) > pool.depth or waiting[0].done()):
                    await self._enqueue(await waiting.popleft())
            while waiting and not self.stop.is_set():
                await self._enqueue(await waiting.popleft())
        finally:
            for fut in waiting:
                fut.cancel()

    def _todo(self, chunk: Sequence[Subscriber]) -> list[Subscriber]:
        rows = {r.email: r for r in self.store.ledger_rows(self.edition, [s.email for s in chunk])}
        todo = []
        for sub in chunk:
            row = rows.get(address_key(sub.email))
            if (
                row is None
                or row.status == "planned"
                or (row.status == "failed" and self._due(row))
                or (row.status == "unknown" and self._unknown_due(row))
                or row.email in self.force
            ):
                todo.append(sub)
                if row is not None:
                    self.stored_ids[row.email] = (row.message_id, row.attempts)
            else:
                self.tally.unchanged += 1
        # Unsubscribed (readers.py): no digest, whatever the subscriber file says.
        gone = self.store.unsubscribed([s.email for s in todo])
        for email in sorted(gone):
            self._finish(_Outcome(email, "skipped", reason="unsubscribed"))
        todo = [s for s in todo if address_key(s.email) not in gone]
        self._progress()
        return todo

    def _due(self, row: LedgerRow) -> bool:
        if not self.respect or row.next_attempt_at is None:
            return True  # a send started by hand retries temporary failures at once
        return row.next_attempt_at <= self.now()

    def _unknown_due(self, row: LedgerRow) -> bool:
        """The server may have it: only its own long delay (or --resend) sends it again."""
        return row.next_attempt_at is not None and row.next_attempt_at <= self.now()

    async def _enqueue(self, prepared: list[_Prepared]) -> None:
        jobs: list[_Job] = []
        for p in prepared:
            stored_id, prior = self.stored_ids.pop(p.email, (None, 0))
            if p.skip is not None:
                self._finish(_Outcome(p.email, "skipped", reason=p.skip))
            elif p.error is not None or p.message is None:
                status = "failed_permanent" if p.permanent else "failed"
                self._finish(_Outcome(p.email, status, reply=p.error, reason=p.error))
            else:
                if stored_id and stored_id != p.message.message_id:
                    log.warning(
                        "%s: the digest now has Message-ID %s, the planned one had %s "
                        "(sender domain changed?); sending with the new one",
                        p.email,
                        p.message.message_id,
                        stored_id,
                    )
                jobs.append(_Job(p.email, p.message, p.wire, prior_attempts=prior))
        if self.dry_run:
            self.tally.sent += len(jobs)
            self._progress()
            return
        assert self.ledger is not None and self.room is not None
        await self.ledger.plan([(j.email, j.message.message_id, j.message.paper_ids) for j in jobs])
        for n, job in enumerate(jobs):
            await self.room.acquire()
            if self.stop.is_set():
                self.room.release()
                self.tally.pending += len(jobs) - n
                return
            self.outstanding += 1
            self.idle.clear()
            self.queue.put_nowait(job)

    # -- sending ------------------------------------------------------------------------------
    async def _sender(self) -> None:
        try:
            while True:
                job = await self.queue.get()
                if job is None:
                    return
                if self.stop.is_set():
                    self._abandon(job)
                    continue
                await self._attempt(job)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # e.g. the ledger cannot be written: stop the run
            if self.crash is None:
                self.crash = exc
            self.stop.set()

    async def _attempt(self, job: _Job) -> None:
        assert self.transport is not None and self.ledger is not None
        # Unsubscribed while this edition is being sent: this digest stays unsent.
        if await self.ledger.call(self.store.unsubscribed, [job.email]):
            self._finish(_Outcome(job.email, "skipped", reason="unsubscribed"))
            return self._done()
        job.attempts += 1
        try:
            reply = await self.transport.send(job.message, self.sender, job.wire)
        except _Fatal as exc:
            if self.fatal is None:
                self.fatal = exc.error
                log.error("%s", exc.error)
            job.attempts -= 1  # not the message's fault: it stays planned
            self._abandon(job)
            self.stop.set()
        except _Unreachable as exc:
            self._fail(job, exc.error)
        except OutcomeUnknown as err:
            self._unknown(job, err)
        except DeliveryError as err:
            if self._braking(job, err):
                return
            if err.permanent or job.attempts >= self.max_attempts:
                self._fail(job, err)
            else:
                self._retry_later(job, err)
        except Exception as exc:  # a bug: shunt this message (logged), keep going
            log.exception("unexpected error sending to %s", job.email)
            # temporary, so the next run after the fix delivers it; no retries in this run
            self._fail(job, DeliveryError(f"internal error: {type(exc).__name__}: {exc}"))
        else:
            msg = job.message
            outcome = _Outcome(
                job.email,
                "sent",
                attempts=job.attempts,
                reply=reply,
                message_id=msg.message_id,
                paper_ids=msg.paper_ids,
            )
            if self.brake.observe(None) == "off":
                self._release_held()
            await self.ledger.record_and_wait(outcome)  # commit before the next message
            self.tally.sent += 1
            self._done()

    def _retry_later(self, job: _Job, err: DeliveryError) -> None:
        job.last_error = err
        if self.stop.is_set():  # no retries once stopping: record it for the next run
            self._fail(job, err)
            return
        delay = backoff(self.retry_base, job.attempts)
        log.info(
            "%s: %s; attempt %d of %d in %.1f s",
            job.email,
            reply_text(err),
            job.attempts + 1,
            self.max_attempts,
            delay,
        )
        self.delayed[job] = asyncio.get_running_loop().call_later(delay, self._requeue, job)

    def _requeue(self, job: _Job) -> None:
        self.delayed.pop(job, None)
        self.queue.put_nowait(job)

    def _fail(self, job: _Job, err: DeliveryError) -> None:
        text = reply_text(err)
        now = self.now()
        total = job.prior_attempts + job.attempts
        next_at = None if err.permanent else next_attempt_after(now, total)
        status = "failed_permanent" if err.permanent else "failed"
        log.warning("%s: %s (%s after %d attempt(s))", job.email, text, status, job.attempts)
        self._finish(
            _Outcome(
                job.email,
                status,
                attempts=job.attempts,
                reply=text,
                reason=text,
                message_id=job.message.message_id,
                paper_ids=job.message.paper_ids,
                next_attempt_at=next_at,
            )
        )
        self._done()

    def _unknown(self, job: _Job, err: DeliveryError) -> None:
        text = reply_text(err)
        log.warning(
            "%s: %s; recorded as unknown, not resent before %s (or by --resend)",
            job.email,
            text,
            f"{self.settings.unknown_retry_after:g} s",
        )
        self._finish(
            _Outcome(
                job.email,
                "unknown",
                attempts=job.attempts,
                reply=text,
                reason=text,
                message_id=job.message.message_id,
                paper_ids=job.message.paper_ids,
                next_attempt_at=self.now()
                + dt.timedelta(seconds=self.settings.unknown_retry_after),
            )
        )
        self._done()

    # -- the brake: a relay that refuses everyone --------------------------------------------
    def _braking(self, job: _Job, err: DeliveryError) -> bool:
        """Show a reply to the brake; True when it took the job (held, or kept retryable)."""
        if self.brake.state == "off" or err.code is None:
            return False  # no reply from the server (connection trouble): not its business
        if self.brake.state == "engaged":
            self._keep_retryable(job, err)
            return True
        refusal = masked_reply(err, job.email) if 500 <= err.code < 600 else None
        state = self.brake.observe(refusal)
        if state == "off":
            self._release_held()
            return False
        self.held.append((job, err))
        if state == "engaged":
            self.fatal = DeliveryError(
                f"the server refused the first {self.brake.seen} recipients with the same reply "
                f"({self.brake.first}): that is the relay or our login, not the addresses; "
                "check NEWSLETTER_SMTP_HOST, NEWSLETTER_SMTP_USERNAME and the password (may "
                "this login relay?) and NEWSLETTER_SENDER_ADDRESS; nothing was marked "
                "permanent: run send again once fixed (NEWSLETTER_SMTP_BRAKE_AFTER=0 turns "
                "this check off)"
            )
            log.error("%s", self.fatal)
            self.stop.set()
            held, self.held = self.held, []
            for j, e in held:
                self._keep_retryable(j, e)
        else:
            self._release_if_idle()
        return True

    def _keep_retryable(self, job: _Job, err: DeliveryError) -> None:
        temporary = DeliveryError(reply_text(err), code=err.code)
        job.last_error = temporary
        self._fail(job, temporary)

    def _release_held(self) -> None:
        """The brake is off: refusals it held are ordinary permanent failures after all."""
        held, self.held = self.held, []
        for job, err in held:
            self._fail(job, err)

    def _release_if_idle(self) -> None:
        """Fewer replies than the brake needs, and nothing else to come: it cannot judge."""
        if self.held and self.produced and self.outstanding == len(self.held):
            self.brake.state = "off"
            self._release_held()

    def _abandon(self, job: _Job) -> None:
        """Stopped before this message went out: a retry in progress is recorded as a
        temporary failure; an untried message stays planned for the next run."""
        if job.attempts and job.last_error is not None:
            self._fail(job, job.last_error)
            return
        self.tally.pending += 1
        self._done()

    def _finish(self, outcome: _Outcome) -> None:
        """Count an outcome and record it (without waiting: only `sent` must be committed)."""
        if outcome.status == "skipped":
            self.tally.skipped += 1
        elif outcome.status == "unknown":
            self.tally.unknown += 1
        else:
            permanent = outcome.status == "failed_permanent"
            if permanent:
                self.tally.failed_permanent += 1
            else:
                self.tally.failed_temporary += 1
            reason = (outcome.reply or "").replace(outcome.email, "<recipient>")
            self.tally.failures[f"{'permanent' if permanent else 'temporary'}: {reason}"] += 1
        if self.ledger is not None:
            self.ledger.record(outcome)
        self._progress()

    def _done(self) -> None:
        self.outstanding -= 1
        if self.room is not None:
            self.room.release()
        if self.outstanding <= 0:
            self.idle.set()
        else:
            self._release_if_idle()
        self._progress()


async def _first(*aws: Any) -> None:
    """Wait until the first of these awaitables finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --- the library entry points -------------------------------------------------------------------
async def send_edition(
    settings: Settings,
    store: Store,
    subscribers: Sequence[Subscriber],
    edition: dt.date,
    *,
    only: Sequence[str] | None = None,
    resend: Sequence[str] = (),
    dry_run: bool = False,
    now: Callable[[], dt.datetime],
    respect_next_attempt: bool = False,
    stop: asyncio.Event | None = None,
) -> DeliveryReport:
    """Send `edition` to every subscriber (or those in `only`) who has not had it yet.

    `resend` names subscribers to send the edition to again (same Message-ID); with it, the
    run is limited to them (and `only`). `dry_run` selects, renders and plans without sending
    or recording. `respect_next_attempt` (the daemon) leaves temporary failures alone until
    their next attempt time; by hand they are retried at once. Setting `stop` ends the run
    cleanly: no new messages, in-flight ones finish, the ledger is committed.

    Raises ConfigError for an unknown address in `only`/`resend`, RenderError for a broken
    template (before anything is sent), and DeliveryError when the server refuses us for a
    reason no retry fixes (login, certificate, sender address).
    """
    from newsletter.pipeline import edition_listing
    from newsletter.render import Renderer

    started = time.monotonic()
    scope = _scope(subscribers, only, resend)
    edition_listing(store, edition)  # NoListing now, not from the middle of the run
    renderer = Renderer(settings)  # a broken template stops the run before anything is sent
    resends = frozenset(address_key(e) for e in resend)
    if not dry_run:
        for email in sorted(resends):
            if store.ledger_row(edition, email) is not None:
                store.reset_for_resend(edition, email, now=now())
    run = _Run(
        settings,
        store,
        scope,
        edition,
        dry_run=dry_run,
        now=now,
        respect_next_attempt=respect_next_attempt,
        stop=stop or asyncio.Event(),
        force=resends if dry_run else frozenset(),
    )
    try:
        await run.execute(renderer)
    finally:
        t = run.tally
        report = DeliveryReport(
            edition=edition,
            sent=t.sent,
            skipped=t.skipped,
            failed_temporary=t.failed_temporary,
            failed_permanent=t.failed_permanent,
            unknown=t.unknown,
            failures=dict(t.failures),
            elapsed_s=time.monotonic() - started,
            unchanged=t.unchanged,
            pending=t.pending,
            interrupted=run.stop.is_set() and run.fatal is None,
            dry_run=dry_run,
            transport=run.transport.name if run.transport is not None else "",
        )
        log.info("%s", report.summary())
    if run.fatal is not None:
        raise run.fatal
    return report


def run_send(
    settings: Settings,
    store: Store,
    subscribers: Sequence[Subscriber],
    edition: dt.date,
    *,
    only: Sequence[str] | None = None,
    resend: Sequence[str] = (),
    dry_run: bool = False,
    now: Callable[[], dt.datetime],
) -> DeliveryReport:
    """`send_edition` for the command line: holds the edition's sender lock and turns
    SIGINT/SIGTERM into a clean stop (a second signal abandons the in-flight messages)."""

    async def main() -> DeliveryReport:
        stop = asyncio.Event()
        task = asyncio.current_task()
        assert task is not None
        with graceful_stop(stop, task.cancel):
            return await send_edition(
                settings,
                store,
                subscribers,
                edition,
                only=only,
                resend=resend,
                dry_run=dry_run,
                now=now,
                stop=stop,
            )

    lock = contextlib.nullcontext() if dry_run else store.sender_lock(edition.isoformat())
    with lock:
        try:
            return asyncio.run(main())
        except asyncio.CancelledError:
            raise DeliveryError(
                "interrupted: messages in flight were abandoned; the ledger holds everything "
                "sent so far; run the same send again to finish (in-flight ones may repeat)"
            ) from None


def edition_status(store: Store, edition: dt.date) -> dict[str, Any]:
    """The ledger of one edition: counts per status, skip reasons, every failure, and every
    `unknown` row (sent, never confirmed; retried at its next attempt time or by --resend)."""
    statuses = ("planned", "sent", "failed", "unknown", "failed_permanent", "skipped")
    counts = dict.fromkeys(statuses, 0)
    skipped: dict[str, int] = {}
    failures: list[dict[str, Any]] = []
    unknown: list[dict[str, Any]] = []
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(ledger.c.status, ledger.c.reason, sa.func.count())
            .where(ledger.c.edition == edition)
            .group_by(ledger.c.status, ledger.c.reason)
        )
        for status, reason, n in rows:
            counts[status] = counts.get(status, 0) + n
            if status == "skipped":
                skipped[reason or ""] = skipped.get(reason or "", 0) + n
    wanted = counts["failed"] + counts["failed_permanent"] + counts["unknown"]
    for row in store.ledger_rows(edition, None) if wanted else []:
        if row.status not in ("failed", "failed_permanent", "unknown"):
            continue
        entry = {
            "email": row.email,
            "status": row.status,
            "attempts": row.attempts,
            "last_reply": row.last_reply,
            "next_attempt_at": row.next_attempt_at.isoformat() if row.next_attempt_at else None,
        }
        (unknown if row.status == "unknown" else failures).append(entry)
    return {
        "edition": edition.isoformat(),
        "total": sum(counts.values()),
        "counts": counts,
        "skipped": skipped,
        "failures": failures,
        "unknown": unknown,
    }
