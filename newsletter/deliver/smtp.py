"""SMTP through aiosmtplib (the only module that imports it besides `failures`): a pool of
reused connections with reconnects, per-phase timeouts, a per-connection message cap, an optional
rate limit, a shared connection backoff, fewer connections after a 421, one login attempt until a
connection has worked."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol

import aiosmtplib
from aiosmtplib.protocol import MAX_RESPONSE_LENGTH, SMTPProtocol, normalize_message_line_endings

from newsletter.deliver.failures import (
    Fatal,
    NotStarted,
    Unreachable,
    backoff,
    classify,
    find_cause,
    oneline,
)
from newsletter.deliver.wire import PLAIN_ADDRESS, message_bytes, raw_size, wire_form
from newsletter.errors import ConfigError, DeliveryError, OutcomeUnknown
from newsletter.models import RenderedEmail
from newsletter.settings import Settings

log = logging.getLogger(__name__)


def smtp_endpoint(settings: Settings) -> tuple[str, int]:
    """(security, port): security defaults by port (465 tls, 25 none, else starttls)."""
    port: int | None = settings.smtp_port
    security: str | None = settings.smtp_security
    if security is None:
        security = {465: "tls", 25: "none"}.get(port or 587, "starttls")
    if port is None:
        port = {"tls": 465, "none": 25}.get(security, 587)
    return security, port


def _sender_fatal(code: int) -> bool:
    """A 5xx to MAIL FROM is about us, not the subscriber; 552 is this message's size."""
    return 500 <= code < 600 and code != 552


class _Protocol(SMTPProtocol):
    """aiosmtplib's protocol plus pipelined replies (RFC 2920). The stock one parses one reply
    per read and drops whatever arrives while no reply is awaited: the second and third
    replies to three commands written at once would be lost. While `pipeline` waits, every
    byte is kept and parsed into as many replies as it holds; otherwise it is the stock
    protocol. A connection's protocol becomes this one (its class changes: same state, more
    methods) before its first pipelined group."""

    _replies: collections.deque[aiosmtplib.SMTPResponse]
    _waiter: asyncio.Future[None] | None
    _expect = 0  # replies still awaited by `pipeline`; 0: the stock protocol's behaviour
    _problem: BaseException | None = None  # why the awaited replies stopped (kept: see _wake)

    def data_received(self, data: bytes) -> None:
        if not self._expect:
            super().data_received(data)
            return
        self._buffer.extend(data)
        try:
            while len(self._replies) < self._expect:
                reply = self._read_response_from_buffer()
                if reply is None:
                    if len(self._buffer) > MAX_RESPONSE_LENGTH:
                        raise aiosmtplib.SMTPResponseException(-1, "Response too long")
                    break
                self._replies.append(reply)
                self._wake(None)
        except Exception as exc:  # a malformed reply: the connection is unusable
            self._wake(exc)
            return

    def connection_lost(self, exc: Exception | None) -> None:
        if self._expect:
            lost = aiosmtplib.SMTPServerDisconnected("Connection lost")
            lost.__cause__ = exc
            self._wake(lost)
        super().connection_lost(exc)

    def _wake(self, exc: BaseException | None) -> None:
        # kept as well as set: a malformed reply right behind a good one finds the waiter
        # already woken, and would otherwise pass for a timeout
        if exc is not None and self._problem is None:
            self._problem = exc
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    async def pipeline(
        self,
        commands: bytes,
        n: int,
        timeout: float | None,  # noqa: ASYNC109 (as read_response)
    ) -> tuple[list[aiosmtplib.SMTPResponse], BaseException | None]:
        """Write `commands` (n lines) at once; (their replies, in order, and why there are
        fewer than n: the connection was lost, the time ran out or a reply was malformed)."""
        if self._command_lock is None:
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        async with self._command_lock:
            self._replies, self._expect, self._problem = collections.deque(), n, None
            self._waiter = self._loop.create_future()
            del self._buffer[:]  # a reply owed to an earlier command is never taken for these
            try:
                self.write(commands)
                # the timeout is per reply, as for commands sent one by one: a server slow on
                # each of MAIL and RCPT (callouts, blocklist look-ups) is not cut off
                while len(self._replies) < n:
                    if self._problem is not None:
                        raise self._problem
                    await asyncio.wait_for(self._waiter, timeout)
                    self._waiter = self._loop.create_future()
                problem: BaseException | None = None
            except TimeoutError:
                problem = aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response")
            except (aiosmtplib.SMTPException, ConnectionError) as exc:
                problem = exc
            finally:
                self._expect, self._waiter = 0, None
                del self._buffer[:]  # nothing else was asked for
            return list(self._replies)[:n], problem


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
        plain = PLAIN_ADDRESS.fullmatch(sender) and PLAIN_ADDRESS.fullmatch(recipient)
        if plain and wire is None:
            wire = wire_form(raw)
        if not plain or wire is None:
            raw = message_bytes(raw, wire)
            _errors, reply = await self.sendmail(sender, [recipient], raw)
            return f"250 {oneline(reply)}"
        if self.is_ehlo_or_helo_needed:  # learn SIZE and 8BITMIME before the first MAIL
            try:
                await self.ehlo()
            except aiosmtplib.SMTPHeloError:
                await self.helo()
        options = []
        if self.supports_extension("size"):
            options.append(b"SIZE=%d" % (len(raw) if raw else raw_size(wire)))
        if not wire.isascii() and self.supports_extension("8bitmime"):
            options.append(b"BODY=8BITMIME")
        # MAIL and RCPT by hand: mail()/rcpt() parse each address with email.utils (~70 us
        # each); ours were checked once (PLAIN_ADDRESS), so they hold no control character.
        mail = b" ".join((b"MAIL FROM:<%s>" % sender.encode(), *options))
        rcpt = b"RCPT TO:<%s>" % recipient.encode()
        try:
            if self.supports_extension("pipelining"):
                await self._envelope_pipelined(mail, rcpt, sender, recipient)
                got = await self._send_wire(wire)
            else:
                got = await self.execute_command(mail)
                if got.code != 250:
                    raise aiosmtplib.SMTPSenderRefused(got.code, got.message, sender)
                got = await self.execute_command(rcpt)
                if got.code not in (250, 251):
                    raise aiosmtplib.SMTPRecipientRefused(got.code, got.message, recipient)
                got = await self._data_wire(wire)
            return f"{got.code} {oneline(got.message)}"
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

    async def _envelope_pipelined(
        self, mail: bytes, rcpt: bytes, sender: str, recipient: str
    ) -> None:
        """MAIL, RCPT and DATA in one write, then their three replies (RFC 2920): one round
        trip and one wake-up instead of three. Each reply is judged in order, as if the
        commands had gone one by one; replies cut short by a hang-up or a timeout count only
        after the replies that did come (a 421 then a hang-up is the 421)."""
        protocol = self.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        if not isinstance(protocol, _Protocol):
            protocol.__class__ = _Protocol  # between commands: nothing is pending
            assert isinstance(protocol, _Protocol)
        replies, problem = await protocol.pipeline(
            b"%s\r\n%s\r\nDATA\r\n" % (mail, rcpt), 3, self.timeout
        )
        refused: aiosmtplib.SMTPResponseException | None = None
        if replies and replies[0].code != 250:
            refused = aiosmtplib.SMTPSenderRefused(replies[0].code, replies[0].message, sender)
        elif len(replies) > 1 and replies[1].code not in (250, 251):
            got = replies[1]
            refused = aiosmtplib.SMTPRecipientRefused(got.code, got.message, recipient)
        elif len(replies) > 2 and replies[2].code != 354:
            refused = aiosmtplib.SMTPDataError(replies[2].code, replies[2].message)
        if refused is not None:
            if problem is not None:
                self.close()  # replies still owed: out of step with the server
            elif len(replies) > 2 and replies[2].code == 354:
                # DATA accepted after a refusal (RFC 2920 says it must not be): an empty
                # message ends it, without a recipient nothing is delivered
                with contextlib.suppress(aiosmtplib.SMTPException, ConnectionError):
                    protocol._response_pending = True
                    protocol.write(b".\r\n")
                    await protocol.read_response(timeout=self.timeout)
            raise refused
        if problem is not None:
            if isinstance(problem, aiosmtplib.SMTPException):
                self.close()  # lost, or out of step with the server: not reusable
                raise problem
            self.close()
            raise aiosmtplib.SMTPServerDisconnected("Connection lost") from problem

    async def _data_wire(self, wire: bytes) -> aiosmtplib.SMTPResponse:
        """DATA, the message, the final reply (see `_send_wire`)."""
        start = await self.execute_command(b"DATA")
        if start.code != 354:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        return await self._send_wire(wire)

    async def _send_wire(self, wire: bytes) -> aiosmtplib.SMTPResponse:
        """The message after a 354, and the final reply. Until the message has been handed
        over, a failure means "not sent" (temporary); after it, a timeout or a hang-up means
        the server may have queued it: OutcomeUnknown, never an immediate resend."""
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


class Pacer(Protocol):
    """What paces message starts: this process's `_RateLimit`, or a limit shared by several
    processes (claims.SharedRate)."""

    async def wait(self) -> None: ...


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

    def __init__(self, settings: Settings, *, pacer: Pacer | None = None) -> None:
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
        rate = settings.smtp_rate_limit
        self._rate: Pacer | None = pacer or (_RateLimit(rate) if rate else None)
        self._idle: list[_Client] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._round = 0  # connection failures in one round count once
        self._failures = 0  # consecutive failed rounds
        self._retry_at = 0.0
        self._last_error: DeliveryError | None = None
        self._ok_since_421 = 0
        # Until one connection has worked, connect one at a time: a refused login then costs
        # one attempt per run, not one per pooled connection (providers lock accounts).
        self.first_of = asyncio.Lock()
        self._connected_once = False
        self._fatal: DeliveryError | None = None

    def __repr__(self) -> str:
        return f"<SmtpTransport {self.where} user={self.username!r}>"

    async def start(self) -> None:
        if not self.helo:  # aiosmtplib would look it up again for every connection
            self.helo = await asyncio.to_thread(socket.getfqdn)

    async def send(
        self,
        message: RenderedEmail,
        sender: str,
        wire: bytes | None = None,
        may_start: Callable[[], bool] | None = None,
    ) -> str:
        if self._rate is not None:
            await self._rate.wait()
        await self._gate.acquire()
        client: _Client | None = None
        reusable = False
        try:
            client = await self._checkout()
            if may_start is not None and not may_start():  # the waits above may take long
                reusable = True
                raise NotStarted
            try:
                reply = await client.send_raw(sender, message.to, message.raw, wire)
            except (aiosmtplib.SMTPException, OSError, ValueError) as exc:
                if isinstance(exc, aiosmtplib.SMTPSenderRefused) and _sender_fatal(exc.code):
                    raise Fatal(
                        DeliveryError(
                            f"{self.where} refused the sender address {sender!r}: {exc.code} "
                            f"{oneline(exc.message)}; check NEWSLETTER_SENDER_ADDRESS and "
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
        async with self.first_of:
            if self._fatal is not None:
                raise Fatal(self._fatal)
            client = await self._open()
            self._connected_once = True
            return client

    async def _open(self) -> _Client:
        while True:
            wait = self._retry_at - time.monotonic()
            if wait > 0 and self._failures >= self.max_attempts and self._last_error:
                raise Unreachable(self._last_error)
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            round_ = self._round
            try:
                client = self._new_client()
            except ValueError as exc:  # e.g. a HELO name aiosmtplib will not send
                raise Fatal(
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
                    raise Fatal(self._fatal) from exc
                err = DeliveryError(
                    f"cannot connect to {self.where}: {oneline(str(exc))}",
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
                f"{oneline(exc.message)}; check NEWSLETTER_SMTP_USERNAME and the password "
                "(NEWSLETTER_SMTP_PASSWORD or NEWSLETTER_SMTP_PASSWORD_FILE)"
            )
        cert = find_cause(exc, ssl.SSLCertVerificationError)
        if cert is not None:
            return (
                f"the TLS certificate of {where} is not trusted ({cert.verify_message}); set "
                "NEWSLETTER_SMTP_CA_FILE to the CA that signed it (or, for a test server only, "
                "NEWSLETTER_SMTP_VALIDATE_CERTS=false)"
            )
        tls = find_cause(exc, ssl.SSLError)
        if tls is not None:
            return (
                f"TLS with {where} failed ({tls.reason or tls}); check that "
                f"NEWSLETTER_SMTP_SECURITY={self.security} suits port {self.port} "
                "(465: tls, 587: starttls, 25: none)"
            )
        if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code >= 500:
            return (
                f"{where} refused the session: {exc.code} {oneline(exc.message)}; check "
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
