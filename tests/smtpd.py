"""A real SMTP server for the delivery tests: aiosmtpd, in process, on 127.0.0.1 port 0.

`RecordingHandler` keeps every message the server accepted and every command it saw; faults
are injected on the server side, never by mocking the client:

    handler.fail("RCPT", "451 4.3.0 try again", rcpt="bob@example.org")   # once, for bob
    handler.fail("RCPT", "550 5.1.1 no such user", rcpt="eve@example.org", times=None)  # always
    handler.fail("MAIL", "421 4.3.2 going down", close=True)              # reply, then hang up
    handler.delay("RCPT", 1.0)                                            # slow server, once
    handler.drop_data(1)                                                  # hang up mid-DATA
    RecordingHandler.pipelining = True   # every server advertises PIPELINING (RFC 2920)

`SMTPServer` runs in the test's own event loop (as aiosmtplib's test suite does);
`ThreadedSMTPServer` runs one in a thread for a client in another process.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP as SMTPD
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes  # as the server got it, dot-stuffing undone
    mail_options: tuple[str, ...] = ()

    @property
    def message(self) -> EmailMessage:
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])


@dataclass
class _Fault:
    reply: str
    rcpt: str  # "*" for any
    times: int | None  # None: for ever
    close: bool
    after: int  # let this many matching commands pass first


class RecordingHandler:
    pipelining = False  # advertise PIPELINING: the client then sends MAIL, RCPT, DATA at once

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.commands: list[tuple[str, str]] = []  # (command, argument) in arrival order
        self.mail_args: list[str] = []  # MAIL FROM arguments as sent, with SIZE= and BODY=
        self.connections = 0
        self._faults: dict[str, list[_Fault]] = {}
        self._delays: dict[str, list[float]] = {}
        self._drops = 0
        self._lock = threading.Lock()  # the threaded server records from another thread
        self.on_message: Callable[[int], None] | None = None  # called with the count so far

    # -- scripting faults ------------------------------------------------------------------
    def fail(
        self,
        command: str,
        reply: str,
        *,
        rcpt: str = "*",
        times: int | None = 1,
        close: bool = False,
        after: int = 0,
    ) -> None:
        fault = _Fault(reply, rcpt.lower(), times, close, after)
        self._faults.setdefault(command, []).append(fault)

    def clear(self) -> None:
        """Behave from now on."""
        self._faults.clear()
        self._delays.clear()
        self._drops = 0

    def delay(self, command: str, seconds: float, times: int = 1) -> None:
        self._delays.setdefault(command, []).extend([seconds] * times)

    def drop_data(self, times: int = 1) -> None:
        self._drops += times

    def take_drop(self) -> bool:
        if self._drops:
            self._drops -= 1
            return True
        return False

    def _fault(self, server: SMTPD, command: str, rcpt: str) -> str | None:
        for fault in self._faults.get(command, []):
            if fault.times == 0 or fault.rcpt not in ("*", rcpt.lower()):
                continue
            if fault.after > 0:
                fault.after -= 1
                continue
            if fault.times is not None:
                fault.times -= 1
            if fault.close and server.transport is not None:
                # the reply is flushed before the connection closes
                asyncio.get_running_loop().call_soon(server.transport.close)
            return fault.reply
        return None

    async def _delay(self, command: str) -> None:
        queue = self._delays.get(command)
        if queue:
            await asyncio.sleep(queue.pop(0))

    # -- aiosmtpd hooks --------------------------------------------------------------------
    def record(self, command: str, arg: str) -> None:
        with self._lock:
            self.commands.append((command, arg))

    async def handle_MAIL(
        self,
        server: SMTPD,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        await self._delay("MAIL")
        reply = self._fault(server, "MAIL", "*")
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTPD,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        await self._delay("RCPT")
        reply = self._fault(server, "RCPT", address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPD, session: Session, envelope: Envelope) -> str:
        rcpt = envelope.rcpt_tos[0] if envelope.rcpt_tos else "*"
        reply = self._fault(server, "DATA", rcpt)
        if reply:
            return reply
        content = envelope.original_content or b""
        with self._lock:
            self.received.append(
                Received(
                    str(envelope.mail_from),
                    tuple(envelope.rcpt_tos),
                    content,
                    tuple(envelope.mail_options),
                )
            )
            count = len(self.received)
        if self.on_message is not None:
            self.on_message(count)
        await self._delay("DATA")  # after accepting: the client may time out on a kept message
        return "250 2.0.0 OK queued"

    # -- queries ---------------------------------------------------------------------------
    def message_ids(self) -> list[str]:
        with self._lock:
            return [r.message_id for r in self.received]

    def by_rcpt(self) -> dict[str, list[Received]]:
        out: dict[str, list[Received]] = {}
        with self._lock:
            for r in self.received:
                out.setdefault(r.rcpt_tos[0].lower(), []).append(r)
        return out


class FaultySMTPD(SMTPD):
    """aiosmtpd's server, recording commands and able to hang up in the middle of DATA."""

    event_handler: RecordingHandler

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.event_handler.connections += 1
        super().connection_made(transport)

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        self.event_handler.record(command, str(args[0]) if args else "")
        return await super()._call_handler_hook(command, *args)

    async def smtp_MAIL(self, arg: str) -> None:
        self.event_handler.mail_args.append(arg)
        await super().smtp_MAIL(arg)

    async def push(self, status: Any) -> None:
        if status == "250 HELP" and self.event_handler.pipelining:  # the last line of EHLO
            await super().push("250-PIPELINING")
        await super().push(status)

    async def smtp_STARTTLS(self, arg: str) -> None:
        self.event_handler.record("STARTTLS", arg)
        await super().smtp_STARTTLS(arg)

    async def smtp_AUTH(self, arg: str) -> None:
        self.event_handler.record("AUTH", arg.split()[0] if arg else "")
        await super().smtp_AUTH(arg)

    async def smtp_DATA(self, arg: str) -> None:
        if self.envelope and self.envelope.rcpt_tos and self.event_handler.take_drop():
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            await self._reader.readline()  # take the first line of the message, then vanish
            assert self.transport is not None
            self.transport.close()
            return
        await super().smtp_DATA(arg)


def password_authenticator(user: str, password: str) -> Callable[..., AuthResult]:
    def authenticate(
        server: SMTPD, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode() == user
            and data.password.decode() == password
        )
        return AuthResult(success=ok, handled=False)  # unhandled: aiosmtpd replies 535

    return authenticate


class SMTPServer:
    """aiosmtpd in the running event loop. `await start()`, `await stop()`."""

    def __init__(self, handler: RecordingHandler | None = None, **smtpd: Any) -> None:
        self.handler = handler or RecordingHandler()
        self.smtpd = smtpd
        self.port = 0
        self._server: asyncio.Server | None = None
        self._protocols: list[FaultySMTPD] = []

    def _protocol(self) -> FaultySMTPD:
        proto = FaultySMTPD(
            self.handler,
            hostname="smtp.test",
            loop=asyncio.get_running_loop(),
            **self.smtpd,
        )
        self._protocols.append(proto)
        return proto

    async def start(self, port: int = 0) -> SMTPServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for proto in self._protocols:
            if proto.transport is not None:
                proto.transport.close()
        tasks = [p._handler_coroutine for p in self._protocols if p._handler_coroutine]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)


class ThreadedSMTPServer:
    """The same server in its own thread and loop, for clients in other processes."""

    def __init__(self, handler: RecordingHandler | None = None) -> None:
        self.handler = handler or RecordingHandler()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server = SMTPServer(self.handler)

    def start(self) -> ThreadedSMTPServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._server.start(), self.loop).result(10)
        return self

    @property
    def port(self) -> int:
        return self._server.port

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def free_port() -> int:
    """A port nobody listens on right now (for "the server is down")."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_tls_context(ca: Any) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 issued by the trustme CA `ca`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    context.verify_mode = ssl.CERT_NONE
    return context
